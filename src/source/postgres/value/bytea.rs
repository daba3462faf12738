//! bytea: `bytea_output=hex` text (`\\x` + hex pairs) → base64.

use base64::Engine as _;
use serde_json::Value;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `\x` + hex pairs → base64, decoding through a stack buffer.
pub(super) fn bytea_value(text: &[u8]) -> Result<Value, &'static str> {
    // A multiple of 3, so every chunk but the last encodes without padding.
    const CHUNK: usize = 768;
    let hex = text
        .strip_prefix(b"\\x")
        .ok_or("expected hex format (\\x followed by hex digits)")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    let mut out = String::with_capacity((hex.len() / 2).div_ceil(3) * 4);
    let mut buf = [0u8; CHUNK];
    for chunk in hex.chunks(CHUNK * 2) {
        let mut n = 0;
        for (slot, pair) in buf.iter_mut().zip(chunk.chunks_exact(2)) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(hi), Some(lo)) => *slot = (hi << 4) | lo,
                _ => return Err("invalid hex digit"),
            }
            n += 1;
        }
        base64::engine::general_purpose::STANDARD.encode_string(&buf[..n], &mut out);
    }
    Ok(Value::String(out))
}

#[cfg(test)]
#[path = "bytea_tests.rs"]
mod tests;
