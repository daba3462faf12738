//! Catalog lookups the decoder cannot do on its own: the JSON mapping of
//! types that are not built in (enums, domains, arrays of those, extension
//! types), and a relation's primary key (pgoutput flags every column as
//! "key" under REPLICA IDENTITY FULL, which is no use as an event key).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::normalize::{ResolvedRelation, TableRule};
use super::pgoutput::Relation;
use super::value::{builtin_type, PgType};

/// Domains over domains over arrays… deeper than this is treated as text.
const MAX_TYPE_DEPTH: usize = 16;

pub struct Catalog {
    client: Client,
    types: HashMap<u32, PgType>,
}

impl Catalog {
    pub fn new(client: Client) -> Catalog {
        Catalog {
            client,
            types: HashMap::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection back, for other work once the catalog is read.
    pub fn into_client(self) -> Client {
        self.client
    }

    /// The JSON mapping for a type OID.
    pub async fn resolve_type(&mut self, oid: u32) -> Result<PgType, tokio_postgres::Error> {
        self.resolve_type_at(oid, 0).await
    }

    async fn resolve_type_at(
        &mut self,
        oid: u32,
        depth: usize,
    ) -> Result<PgType, tokio_postgres::Error> {
        if let Some(t) = builtin_type(oid) {
            return Ok(t);
        }
        if let Some(t) = self.types.get(&oid) {
            return Ok(t.clone());
        }
        if depth >= MAX_TYPE_DEPTH {
            return Ok(PgType::Other);
        }
        let row = self
            .client
            .query_opt(
                "SELECT typtype::text, typbasetype, typelem, typdelim::text, typcategory::text, typname::text
                 FROM pg_catalog.pg_type WHERE oid = $1",
                &[&oid],
            )
            .await?;
        let resolved = match row {
            None => PgType::Other,
            Some(r) => {
                let typtype: String = r.get(0);
                let base: u32 = r.get(1);
                let elem: u32 = r.get(2);
                let delim: String = r.get(3);
                let category: String = r.get(4);
                let name: String = r.get(5);
                match (typtype.as_str(), category.as_str()) {
                    ("e", _) => PgType::Text,
                    ("d", _) => Box::pin(self.resolve_type_at(base, depth + 1)).await?,
                    (_, "A") if elem != 0 => PgType::Array {
                        elem: Box::new(Box::pin(self.resolve_type_at(elem, depth + 1)).await?),
                        delim: delim.bytes().next().unwrap_or(b','),
                    },
                    _ if name == "citext" => PgType::Text,
                    // Strings, network addresses and the like from extensions.
                    (_, "S") | (_, "I") => PgType::Text,
                    _ => PgType::Other,
                }
            }
        };
        self.types.insert(oid, resolved.clone());
        Ok(resolved)
    }

    /// Column indexes of the relation's primary key, in key order; empty if
    /// it has none.
    pub async fn primary_key(&self, rel: &Relation) -> Result<Vec<usize>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text
                 FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
                 WHERE i.indrelid = $1 AND i.indisprimary
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&rel.id],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: &str = r.get(0);
                rel.columns.iter().position(|c| c.name == name)
            })
            .collect())
    }

    /// Resolves types and key columns of a Relation message.
    pub async fn resolve(
        &mut self,
        relation: Relation,
        rule: Option<TableRule>,
    ) -> Result<ResolvedRelation, tokio_postgres::Error> {
        let mut types = Vec::with_capacity(relation.columns.len());
        for c in &relation.columns {
            types.push(self.resolve_type(c.type_oid).await?);
        }
        let mut key_columns = if rule.is_some() {
            self.primary_key(&relation).await?
        } else {
            Vec::new()
        };
        if key_columns.is_empty() {
            key_columns = relation
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect();
        }
        Ok(ResolvedRelation {
            relation,
            types,
            key_columns,
            rule,
        })
    }
}
