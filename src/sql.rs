//! SQL text: the one place identifiers and literals are quoted for
//! statements Sluice composes (DDL, `SET TRANSACTION SNAPSHOT`, watermark
//! messages); everything else is a bound parameter.
//!
//! Invariant: the result is one token whatever the input (inner quotes are
//! doubled). Literals assume `standard_conforming_strings = on` (every
//! supported server's default), so backslashes are literal.

/// `"name"` with inner double quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with inner single quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_so_the_result_is_one_token() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"'a\b'");
    }
}
