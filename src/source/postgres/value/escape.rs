//! JSON string literals, escaped exactly as serde_json escapes them (the
//! hot path for every text column).

/// Writes `s` as a JSON string literal, escaped as serde_json does (`\"`,
/// `\\`, `\b \f \n \r \t`, other controls as `\u00xx`; nothing else).
/// Runs of bytes that need no escape, the usual case, are copied whole;
/// they are found eight bytes at a time.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
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
                out.extend_from_slice(&b[start..i]);
                match c {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    _ => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        out.extend_from_slice(b"\\u00");
                        out.push(HEX[usize::from(c >> 4)]);
                        out.push(HEX[usize::from(c & 0xf)]);
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
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
#[path = "escape_tests.rs"]
mod tests;
