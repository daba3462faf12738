//! JSON text helpers: the one string escaper (and `kind_of`, the one wording
//! of a value's JSON type in error messages). Every envelope member, column
//! name, text value and protocol frame Sluice writes by hand goes through
//! it, so all of them are escaped exactly as serde_json escapes a string
//! (`\"`, `\\`, `\b \f \n \r \t`, other control characters as `\u00xx`,
//! nothing else), and an event written by hand and one serialized by
//! serde_json are the same bytes.
//!
//! Runs of bytes that need no escape, the usual case, are copied whole;
//! they are found eight bytes at a time (this is the hot path of every
//! text column).

/// Appends `s` as a JSON string literal to a byte buffer.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape(s, |piece| out.extend_from_slice(piece.as_bytes()));
    out.push(b'"');
}

/// Appends `s` as a JSON string literal to a `String`.
pub fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    escape(s, |piece| out.push_str(piece));
    out.push('"');
}

/// What kind of JSON value `v` is, as an error message names it ("a
/// string", "an object", …): one wording for every parser that reports a
/// wrong type (filters, WebSocket messages).
pub fn kind_of(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Hands `emit` the escaped form of `s` in pieces: runs of `s` itself and
/// escape sequences. Every cut is at an ASCII byte, so every piece is a
/// `str`.
fn escape(s: &str, mut emit: impl FnMut(&str)) {
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if !needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(b.len());
        while i < end {
            let c = b[i];
            if c < 0x20 || c == b'"' || c == b'\\' {
                emit(&s[start..i]);
                let mut unicode = [b'\\', b'u', b'0', b'0', 0, 0];
                match c {
                    b'"' => emit("\\\""),
                    b'\\' => emit("\\\\"),
                    b'\n' => emit("\\n"),
                    b'\r' => emit("\\r"),
                    b'\t' => emit("\\t"),
                    0x08 => emit("\\b"),
                    0x0c => emit("\\f"),
                    _ => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        unicode[4] = HEX[usize::from(c >> 4)];
                        unicode[5] = HEX[usize::from(c & 0xf)];
                        // Six ASCII bytes: always a str.
                        if let Ok(e) = std::str::from_utf8(&unicode) {
                            emit(e);
                        }
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    emit(&s[start..]);
}

/// Whether any byte of `w` is a control character, `"` or `\`.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below `n` (n ≤ 0x80), and a zero byte, flagged in its high bit.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    below(w, 0x20) != 0 || below(w ^ (ONES * 0x22), 1) != 0 || below(w ^ (ONES * 0x5c), 1) != 0
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
