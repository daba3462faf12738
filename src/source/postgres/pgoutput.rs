//! Decoder for the messages of PostgreSQL's `pgoutput` plugin, protocol
//! version 1.
//!
//! This module owns exactly one step: one message's bytes in, one typed
//! [`Message`] (or a precise [`DecodeError`]) out. It does no I/O, keeps no
//! state between messages (matching an Insert to its Relation is the caller's
//! job, because only the caller knows which Relation messages it has seen in
//! this replication session), and never panics: the bytes come from the
//! network, so every length and count in them is treated as hostile. Reads go
//! through a bounds-checked cursor, arithmetic is checked, and no allocation
//! is sized from a wire count larger than the remaining bytes could hold.
//!
//! Column values are zero-copy slices of the input [`Bytes`]: a change stream
//! is mostly column data, and copying it here would double the memory traffic
//! of the whole pipeline for nothing.
//!
//! Protocol versions 2 to 4 add streamed transactions: [`decode_with`]
//! reads the stream messages (`S`, `E`, `c`, `A`) and, inside a stream
//! block, the xid that versions 2 and later put before the body of a
//! change, relation, type or logical message. Two-phase messages (`b`,
//! `P`, `K`, `r`, `p`), which only a `two_phase` session receives and
//! Sluice does not ask for, are rejected as unknown.
//!
//! The fixtures the tests run on are real bytes from PostgreSQL 15, captured
//! by `scripts/capture-pgoutput-fixtures.sh`.

// The no-panic promise is enforced by the compiler for the decoder itself;
// the tests are free to index and unwrap.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use bytes::Bytes;

/// A WAL position. Plain `u64` because that is what the wire carries and what
/// the replication protocol's standby status updates want back.
pub type Lsn = u64;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

/// A block of a transaction still in progress begins (protocol 2+ with
/// `streaming`); its messages carry `xid` until [`Message::StreamStop`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStart {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// A streamed transaction committed: everything streamed for it (less
/// its aborted subtransactions) is its content, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// A streamed (sub)transaction aborted: when `subxid == xid` the whole
/// transaction, else that subtransaction (and what it streamed after its
/// first change).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
}

/// Start of a transaction. Everything up to the next [`Commit`] belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    /// LSN of the commit record: the same value as the matching
    /// [`Commit::commit_lsn`], known up front because pgoutput only sends a
    /// transaction once it has committed.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC (the PostgreSQL epoch).
    /// Under a replication origin this is the origin's commit time, not ours.
    pub commit_time: i64,
    pub xid: u32,
}

/// End of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// Unused by protocol version 1 (always 0); kept rather than rejected so a
    /// server that starts setting bits does not stop the stream.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the
    /// transaction is durable downstream.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// The transaction was replayed from another server through a replication
/// origin; sent right after [`Begin`].
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The commit LSN on the origin server, not on this one.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Describes a table. Sent before the first change to it in a session and
/// again whenever its definition changes, so later rows must be read against
/// the latest Relation with the same id.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// In table order, generated columns left out; tuples use the same order.
    pub columns: Vec<Column>,
}

/// Which old values Update and Delete carry (`relreplident` in `pg_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: the whole old row.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Part of the replica identity. Under `REPLICA IDENTITY FULL` the server
    /// marks every column as key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

/// Names a non-built-in type used by a following [`Relation`], so that a
/// consumer can interpret OIDs it has no catalog for.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeMsg {
    /// The column's type OID. For a domain this is the domain's OID, while
    /// `namespace` and `name` are those of the domain's base type.
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub relation_id: u32,
    /// `None` when the replica identity did not change (default or index
    /// identity) or is `NOTHING`.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// The old values an Update or Delete identifies its row by.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// `'K'`: only the replica-identity columns hold values; the others are
    /// [`Datum::Null`] whatever they really were.
    Key(Tuple),
    /// `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub relation_id: u32,
    pub old: OldTuple,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    /// Every truncated relation, those reached through CASCADE included.
    pub relation_ids: Vec<u32>,
}

/// A `pg_logical_emit_message` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalMessage {
    /// Transactional messages arrive between Begin and Commit, and only if
    /// the transaction committed; the others arrive alone, as soon as decoded.
    pub transactional: bool,
    /// The LSN just past the message's own WAL record.
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// A row's column values, in the order of the relation's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuple(pub Vec<Datum>);

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// `'n'`
    Null,
    /// `'u'`: a TOASTed value the change did not touch, so the server did not
    /// send it. The consumer must keep the previous value, not write a NULL.
    UnchangedToast,
    /// `'t'`: the type's text output form.
    Text(Bytes),
    /// `'b'`: the type's binary send form (only with the `binary` option).
    Binary(Bytes),
}

/// Why a message could not be decoded. Offsets are byte positions in the
/// message (the tag is at offset 0) so a bad message can be found in a dump.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error(
        "truncated message: {field} needs {needed} byte(s) at offset {offset}, {available} left"
    )]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("unknown message tag {tag:#04x}")]
    UnknownMessageTag { tag: u8 },
    #[error("unknown tuple kind {kind:#04x} at offset {offset}, expected {expected}")]
    UnknownTupleKind {
        kind: u8,
        offset: usize,
        expected: &'static str,
    },
    #[error("unknown column value kind {kind:#04x} at offset {offset}")]
    UnknownDatumKind { kind: u8, offset: usize },
    #[error("unknown replica identity {value:#04x} at offset {offset}")]
    UnknownReplicaIdentity { value: u8, offset: usize },
    #[error("{field} at offset {offset} has no nul terminator")]
    UnterminatedString { field: &'static str, offset: usize },
    #[error("{field} at offset {offset} is not valid utf-8")]
    InvalidUtf8 { field: &'static str, offset: usize },
    #[error("negative {field} {value} at offset {offset}")]
    NegativeCount {
        field: &'static str,
        value: i32,
        offset: usize,
    },
    #[error("{count} trailing byte(s) after the message at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
}

/// Decodes one pgoutput message (the payload of one XLogData, or one `data`
/// value from `pg_logical_slot_get_binary_changes`).
///
/// The whole buffer must be exactly one message: trailing bytes mean the
/// framing upstream is off, and guessing past them would misread the stream.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    decode_with(buf, false).map(|(_, m)| m)
}

/// Decodes one message of a stream that may carry streamed transactions
/// (protocol version 2 and later with `streaming`): between a
/// [`StreamStart`] and its [`Message::StreamStop`] (`in_stream`), the
/// change, relation, type and logical messages carry the xid of the
/// (sub)transaction they belong to, returned beside the message.
pub fn decode_with(buf: &Bytes, in_stream: bool) -> Result<(Option<u32>, Message), DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message tag")?;
    let xid = match tag {
        b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' if in_stream => {
            Some(r.u32("streamed transaction xid")?)
        }
        _ => None,
    };
    let msg = match tag {
        b'S' => Message::StreamStart(StreamStart {
            xid: r.u32("stream start xid")?,
            first_segment: r.u8("stream start first segment")? == 1,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.u32("stream commit xid")?,
            flags: r.u8("stream commit flags")?,
            commit_lsn: r.u64("stream commit lsn")?,
            end_lsn: r.u64("stream commit end lsn")?,
            commit_time: r.i64("stream commit time")?,
        }),
        b'A' => {
            let xid = r.u32("stream abort xid")?;
            let subxid = r.u32("stream abort subxid")?;
            // With `streaming = parallel` (protocol 4) the abort's LSN and
            // time follow; with `on` they do not.
            if r.remaining() >= 16 {
                r.u64("stream abort lsn")?;
                r.i64("stream abort time")?;
            }
            Message::StreamAbort(StreamAbort { xid, subxid })
        }
        b'B' => Message::Begin(Begin {
            final_lsn: r.u64("begin final lsn")?,
            commit_time: r.i64("begin commit time")?,
            xid: r.u32("begin xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("commit end lsn")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.u64("origin commit lsn")?,
            name: r.string("origin name")?,
        }),
        b'R' => Message::Relation(relation(&mut r)?),
        b'Y' => Message::Type(TypeMsg {
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("insert relation id")?;
            r.expect_kind(b'N', "N")?;
            Message::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation_id = r.u32("update relation id")?;
            let (kind, offset) = r.kind()?;
            let old = match kind {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                _ => {
                    return Err(DecodeError::UnknownTupleKind {
                        kind,
                        offset,
                        expected: "K, O or N",
                    })
                }
            };
            if old.is_some() {
                r.expect_kind(b'N', "N")?;
            }
            Message::Update(Update {
                relation_id,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation_id = r.u32("delete relation id")?;
            let (kind, offset) = r.kind()?;
            let old = match kind {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                _ => {
                    return Err(DecodeError::UnknownTupleKind {
                        kind,
                        offset,
                        expected: "K or O",
                    })
                }
            };
            Message::Delete(Delete { relation_id, old })
        }
        b'T' => Message::Truncate(truncate(&mut r)?),
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message lsn")?;
            let prefix = r.string("message prefix")?;
            let len = r.count32("message content length")?;
            Message::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            })
        }
        _ => return Err(DecodeError::UnknownMessageTag { tag }),
    };
    r.finish()?;
    Ok((xid, msg))
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let offset = r.pos;
    let replica_identity = match r.u8("relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        value => return Err(DecodeError::UnknownReplicaIdentity { value, offset }),
    };
    let count = r.count16("relation column count")?;
    // Smallest column: flags, empty name's nul, type oid, typmod.
    let mut columns = Vec::with_capacity(r.capacity(count, 1 + 1 + 4 + 4));
    for _ in 0..count {
        // Only bit 0 (key) is defined; other bits are ignored so that a
        // future flag does not stop replication.
        let flags = r.u8("column flags")?;
        columns.push(Column {
            is_key: flags & 1 != 0,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.count32("truncate relation count")?;
    let options = r.u8("truncate options")?;
    let mut relation_ids = Vec::with_capacity(r.capacity(count, 4));
    for _ in 0..count {
        relation_ids.push(r.u32("truncate relation id")?);
    }
    Ok(Truncate {
        // TRUNCATE_CASCADE and TRUNCATE_RESTART_SEQS in logicalproto.h.
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

/// A bounds-checked cursor. Every read names its field so that a truncation
/// error says what was missing, not just where.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Reserves `n` bytes and returns their range.
    fn advance(&mut self, n: usize, field: &'static str) -> Result<(usize, usize), DecodeError> {
        let end = match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => end,
            _ => {
                return Err(DecodeError::Truncated {
                    field,
                    offset: self.pos,
                    needed: n,
                    available: self.remaining(),
                })
            }
        };
        let start = self.pos;
        self.pos = end;
        Ok((start, end))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let (start, end) = self.advance(N, field)?;
        // advance() checked the range; the fallback is unreachable but keeps
        // this free of any panicking path.
        Ok(self
            .buf
            .get(start..end)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; N]))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// An Int16 count. The server writes it from a signed int, so a set top
    /// bit is a negative count, not 32768 and up.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = i16::from_be_bytes(self.array(field)?);
        usize::try_from(value).map_err(|_| DecodeError::NegativeCount {
            field,
            value: i32::from(value),
            offset,
        })
    }

    /// An Int32 count or length; negative is an error (the protocol's -1 for
    /// NULL is a separate `'n'` kind byte, never a length).
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeCount {
            field,
            value,
            offset,
        })
    }

    /// How many items to pre-allocate for a wire count: no more than the
    /// remaining bytes could hold, so a forged count cannot make us allocate
    /// gigabytes before the truncation error is found.
    fn capacity(&self, count: usize, min_item_size: usize) -> usize {
        count.min(
            self.remaining()
                .checked_div(min_item_size.max(1))
                .unwrap_or(0),
        )
    }

    /// `n` bytes as a zero-copy slice of the input.
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let (start, end) = self.advance(n, field)?;
        Ok(self.buf.slice(start..end))
    }

    /// A nul-terminated string. Names are copied into `String`s: they are
    /// short and outlive the message buffer in the caller's relation cache.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { field, offset })?;
        let text = rest.get(..len).unwrap_or_default();
        let s = std::str::from_utf8(text)
            .map_err(|_| DecodeError::InvalidUtf8 { field, offset })?
            .to_owned();
        // The terminator was found, so len + 1 bytes are there.
        self.advance(len.saturating_add(1), field)?;
        Ok(s)
    }

    /// A one-byte kind marker ('N', 'K', 'O') and where it was.
    fn kind(&mut self) -> Result<(u8, usize), DecodeError> {
        let offset = self.pos;
        Ok((self.u8("tuple kind")?, offset))
    }

    fn expect_kind(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let (kind, offset) = self.kind()?;
        if kind == want {
            Ok(())
        } else {
            Err(DecodeError::UnknownTupleKind {
                kind,
                offset,
                expected,
            })
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count16("tuple column count")?;
        // Smallest datum is a lone kind byte ('n' or 'u').
        let mut datums = Vec::with_capacity(self.capacity(count, 1));
        for _ in 0..count {
            let offset = self.pos;
            let datum = match self.u8("column value kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.count32("column value length")?;
                    Datum::Text(self.bytes(len, "column value")?)
                }
                b'b' => {
                    let len = self.count32("column value length")?;
                    Datum::Binary(self.bytes(len, "column value")?)
                }
                kind => return Err(DecodeError::UnknownDatumKind { kind, offset }),
            };
            datums.push(datum);
        }
        Ok(Tuple(datums))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                offset: self.pos,
                count,
            }),
        }
    }
}

/// Formats an LSN the way Postgres prints it: "16/B374D848" (upper-case hex,
/// no zero padding of either half), so that logs and operator input can be
/// compared with `pg_replication_slots` by eye.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses "16/B374D848"; None on anything else.
///
/// Accepts what `pg_lsn` input accepts: one to eight hex digits on each side,
/// either case, nothing else (no sign, no spaces), so an LSN pasted from psql
/// round-trips and a typo is refused instead of half-read.
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('/')?;
    let half = |h: &str| -> Option<u64> {
        if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    };
    Some((half(hi)? << 32) | half(lo)?)
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
#[path = "pgoutput_tests.rs"]
mod tests;
