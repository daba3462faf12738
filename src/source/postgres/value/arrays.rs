//! Array literals of any dimension (array_out's output, read with
//! array_in's rules): quoting, escapes, `NULL`, explicit bounds
//! (`[lb:ub]…=`, dropped) and the per-type delimiter. Each element is
//! converted by [`to_json`] for the element type.

use serde_json::Value;

use super::{snippet, to_json, PgType, ValueError};

/// Postgres' MAXDIM.
const MAXDIM: usize = 6;

/// array_isspace: the whitespace array_in trims.
fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(super) struct ArrayParser<'a> {
    src: &'a [u8],
    pos: usize,
    elem: &'a PgType,
    delim: u8,
    /// Unescaped text of the current element when it cannot be borrowed.
    scratch: Vec<u8>,
    /// The depth at which elements sit, once one has been seen.
    leaf_depth: Option<usize>,
    /// The deepest `{` seen so far.
    deepest: usize,
    /// The length of every (sub-)array at each depth, once known.
    lens: [Option<usize>; MAXDIM],
}

impl<'a> ArrayParser<'a> {
    pub(super) fn new(elem: &'a PgType, delim: u8, src: &'a [u8]) -> Self {
        ArrayParser {
            src,
            pos: 0,
            elem,
            delim,
            scratch: Vec::new(),
            leaf_depth: None,
            deepest: 0,
            lens: [None; MAXDIM],
        }
    }

    fn err(&self, at: usize, reason: &'static str) -> ValueError {
        ValueError::Array {
            text: snippet(self.src),
            at,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_array_space) {
            self.pos += 1;
        }
    }

    pub(super) fn parse(mut self) -> Result<Value, ValueError> {
        self.skip_space();
        let dims = if self.peek() == Some(b'[') {
            Some(self.parse_dims()?)
        } else {
            None
        };
        if self.peek() != Some(b'{') {
            return Err(self.err(self.pos, "expected '{'"));
        }
        let value = self.parse_level(1)?;
        self.skip_space();
        if self.pos != self.src.len() {
            return Err(self.err(self.pos, "junk after closing '}'"));
        }
        if let Some((n, lens)) = dims {
            let ndim = self.leaf_depth.unwrap_or(self.deepest);
            let matches = ndim == n
                && lens[..n]
                    .iter()
                    .zip(&self.lens)
                    .all(|(&want, &got)| u64::try_from(got.unwrap_or(0)).ok() == Some(want));
            if !matches {
                return Err(self.err(0, "dimensions do not match the array's contents"));
            }
        }
        Ok(value)
    }

    /// `[lb:ub]…=` (or `[ub]`) → (number of dimensions, their lengths).
    fn parse_dims(&mut self) -> Result<(usize, [u64; MAXDIM]), ValueError> {
        let mut lens = [0u64; MAXDIM];
        let mut n = 0;
        while self.peek() == Some(b'[') {
            if n == MAXDIM {
                return Err(self.err(self.pos, "more than 6 dimensions"));
            }
            self.pos += 1;
            let first = self.parse_bound()?;
            let (lower, upper) = if self.peek() == Some(b':') {
                self.pos += 1;
                (first, self.parse_bound()?)
            } else {
                (1, first)
            };
            if self.peek() != Some(b']') {
                return Err(self.err(self.pos, "expected ']' in dimensions"));
            }
            self.pos += 1;
            let len = i128::from(upper) - i128::from(lower) + 1;
            lens[n] = u64::try_from(len)
                .ok()
                .filter(|&l| l > 0)
                .ok_or_else(|| self.err(self.pos, "upper bound below lower bound"))?;
            n += 1;
        }
        self.skip_space();
        if self.peek() != Some(b'=') {
            return Err(self.err(self.pos, "expected '=' after dimensions"));
        }
        self.pos += 1;
        self.skip_space();
        Ok((n, lens))
    }

    fn parse_bound(&mut self) -> Result<i64, ValueError> {
        let start = self.pos;
        let neg = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b'+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let digits_at = self.pos;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or_else(|| self.err(start, "array bound out of range"))?;
            self.pos += 1;
        }
        if self.pos == digits_at {
            return Err(self.err(self.pos, "expected an array bound"));
        }
        Ok(if neg { -v } else { v })
    }

    /// One `{…}` at `depth` (1 for the outermost), with `pos` on the `{`.
    fn parse_level(&mut self, depth: usize) -> Result<Value, ValueError> {
        if depth > MAXDIM {
            return Err(self.err(self.pos, "more than 6 dimensions"));
        }
        if self.leaf_depth.is_some_and(|leaf| depth > leaf) {
            return Err(self.err(self.pos, "sub-array where an element was expected"));
        }
        self.deepest = self.deepest.max(depth);
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_space();
                match self.peek() {
                    None => return Err(self.err(self.pos, "unterminated array")),
                    Some(b'{') => items.push(self.parse_level(depth + 1)?),
                    Some(_) => {
                        if self.leaf_depth.is_some_and(|leaf| leaf != depth) || self.deepest > depth
                        {
                            return Err(
                                self.err(self.pos, "element where a sub-array was expected")
                            );
                        }
                        self.leaf_depth = Some(depth);
                        items.push(self.parse_element()?);
                    }
                }
                self.skip_space();
                match self.peek() {
                    Some(b) if b == self.delim => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    None => return Err(self.err(self.pos, "unterminated array")),
                    Some(_) => {
                        return Err(self.err(self.pos, "expected a delimiter or '}'"));
                    }
                }
            }
        }
        match &mut self.lens[depth - 1] {
            slot @ None => *slot = Some(items.len()),
            Some(n) if *n == items.len() => {}
            Some(_) => return Err(self.err(self.pos, "sub-arrays must have matching dimensions")),
        }
        Ok(Value::Array(items))
    }

    /// One element, `pos` on its first (non-space) byte; leaves `pos` on the
    /// delimiter or `}` that ends it.
    fn parse_element(&mut self) -> Result<Value, ValueError> {
        let src = self.src;
        let start = self.pos;
        let delim = self.delim;
        let ends = |b: u8| b == delim || b == b'}';

        // Fast paths: the element is a slice of the input.
        if src[start] == b'"' {
            let close = src[start + 1..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|p| start + 1 + p);
            if let Some(close) = close.filter(|&c| src[c] == b'"') {
                let mut after = close + 1;
                while src.get(after).copied().is_some_and(is_array_space) {
                    after += 1;
                }
                if src.get(after).copied().is_some_and(ends) {
                    self.pos = after;
                    return self.convert(start, &src[start + 1..close]);
                }
            }
        } else {
            let stop = src[start..]
                .iter()
                .position(|&b| ends(b) || matches!(b, b'{' | b'"' | b'\\'))
                .map(|p| start + p);
            if let Some(stop) = stop.filter(|&s| ends(src[s])) {
                let mut end = stop;
                while end > start && is_array_space(src[end - 1]) {
                    end -= 1;
                }
                let raw = &src[start..end];
                if raw.is_empty() {
                    return Err(self.err(start, "empty unquoted element"));
                }
                self.pos = stop;
                if raw.eq_ignore_ascii_case(b"NULL") {
                    return Ok(Value::Null);
                }
                return self.convert(start, raw);
            }
        }

        // General case: quoted parts, backslash escapes, mixed.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut keep = 0; // length without trailing unquoted whitespace
        let mut literal = false; // saw quotes or escapes: never NULL
        let mut in_quotes = false;
        let mut i = start;
        loop {
            let Some(&c) = src.get(i) else {
                return Err(self.err(start, "unterminated element"));
            };
            if !in_quotes && ends(c) {
                break;
            }
            match c {
                b'\\' => {
                    i += 1;
                    let Some(&next) = src.get(i) else {
                        return Err(self.err(start, "unterminated element"));
                    };
                    buf.push(next);
                    keep = buf.len();
                    literal = true;
                }
                b'"' => {
                    in_quotes = !in_quotes;
                    keep = buf.len();
                    literal = true;
                }
                _ if in_quotes => {
                    buf.push(c);
                    keep = buf.len();
                }
                b'{' => return Err(self.err(i, "unexpected '{' in element")),
                _ if is_array_space(c) => buf.push(c),
                _ => {
                    buf.push(c);
                    keep = buf.len();
                }
            }
            i += 1;
        }
        buf.truncate(keep);
        self.pos = i;
        let result = if literal {
            self.convert(start, &buf)
        } else if buf.is_empty() {
            Err(self.err(start, "empty unquoted element"))
        } else if buf.eq_ignore_ascii_case(b"NULL") {
            Ok(Value::Null)
        } else {
            self.convert(start, &buf)
        };
        self.scratch = buf;
        result
    }

    fn convert(&self, at: usize, raw: &[u8]) -> Result<Value, ValueError> {
        to_json(self.elem, raw).map_err(|e| ValueError::Element {
            text: snippet(self.src),
            at,
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
#[path = "arrays_tests.rs"]
mod tests;
