//! Webhook body templates: an endpoint's `template` gives its receiver a body
//! of its own shape (for example a chat webhook that wants
//! `{"text": "..."}`) instead of the event envelope.
//!
//! A template is rendered against the event envelope, for example:
//!
//! ```text
//! {"specversion":"1.0","id":"184467","seq":184467,"source":"/sluice/pg/main",
//!  "type":"row.updated","subject":"public.orders/42",
//!  "time":"2026-11-22T10:15:30.123456Z","tenant":"acme",
//!  "topic":"tables/public.orders/update","txid":7731,"lsn":"0/16B3748",
//!  "data":{"op":"update","schema":"public","table":"orders","key":{"id":42},
//!          "new":{"id":42,"status":"paid"},"old":{"id":42,"status":"pending"},
//!          "changed":["status"]}}
//! ```
//!
//! # Syntax
//!
//! A template is literal text with placeholders:
//!
//! - `{{path}}` writes the value at `path` as text (see *Values*);
//! - `{{json path}}` writes the value at `path` as compact JSON (a string
//!   keeps its quotes). `json` is the only function; any other word before
//!   the path (`{{upper type}}`) is refused.
//!
//! ASCII whitespace (space, tab, newline, carriage return, form feed) around
//! the words inside the braces is ignored: `{{type}}`, `{{ type }}` and
//! `{{  json   data }}` are all valid. A placeholder ends at the first `}}`
//! after its `{{`; any later `}` is literal text, so `{"a":{"b":{{seq}}}}`
//! works. In a run of three or more `{`, only the last two open the
//! placeholder: `{{{type}}}` renders `{row.updated}`.
//!
//! **Escape:** `\{{` is a literal `{{` (the backslash is dropped, nothing is
//! substituted), in both modes and inside JSON strings too (JSON has no `\{`
//! escape). It is the only escape of the template itself; a backslash
//! anywhere else is literal text, except inside a JSON string in JSON mode,
//! where it starts a JSON escape (see *JSON mode*). So in text mode a
//! backslash cannot directly precede a placeholder.
//!
//! A **path** is one or more segments separated by `.`, starting at the
//! envelope root: `type`, `tenant`, `seq`, `data.new.status`, `data.key.id`.
//! A segment is 1 to 128 characters of `A-Z a-z 0-9 _ -`. On an array, a
//! segment of digits is an index from 0 (`data.changed.0` is the first
//! changed column); on an object every segment, digits included, is a key.
//! A path has at most 16 segments, and a template at most 64 placeholders
//! and [`MAX_TEMPLATE_BYTES`] bytes.
//!
//! # Values
//!
//! A path the event does not have (a missing key, an index past the end, a
//! step into a string, number, boolean or `null`) fails the render; nothing
//! is guessed. Otherwise:
//!
//! | value           | `{{path}}`, text mode | `{{path}}`, JSON mode | `{{json path}}`     |
//! |-----------------|-----------------------|-----------------------|---------------------|
//! | string          | its contents          | see *JSON mode*       | `"…"`, JSON-escaped |
//! | number, boolean | as JSON prints it     | as JSON prints it     | as JSON prints it   |
//! | `null`          | nothing               | `null`                | `null`              |
//! | array, object   | compact JSON          | compact JSON          | compact JSON        |
//!
//! Compact JSON has no whitespace, keeps the envelope's key order, and escapes
//! in strings `"`, `\`, the control characters U+0000 to U+001F (as `\b`,
//! `\t`, `\n`, `\f`, `\r` or `\u00XX`) and U+2028 / U+2029 (as `\u2028` /
//! `\u2029`, which JavaScript treats as line ends). Values nested more than
//! 128 arrays or objects deep are refused.
//!
//! # Modes
//!
//! [`Mode::Json`] is for bodies sent as JSON (content type `application/json`
//! or a `+json` type); [`Mode::Text`] for everything else.
//!
//! **Text mode** writes values raw, as in the table, with no escaping of any
//! kind: use it only for bodies nobody parses as JSON.
//!
//! **JSON mode** guarantees the body is JSON whatever the event contains: no
//! value can end a string early or add structure. The literal text is scanned
//! for JSON strings (a `"` opens or closes one; inside, `\` and the next
//! character are a JSON escape, so `\"` and `\\` do not end it, and `\\{{`
//! is a backslash followed by a placeholder). Each placeholder is then:
//!
//! - **inside a JSON string** (`{"text":"{{type}} on {{subject}}"}`): the text
//!   of the value, JSON-escaped as string content, without quotes. For
//!   `{{path}}` the text is a string's contents or the compact JSON of any
//!   other value (`null` gives `null`); for `{{json path}}` it is always the
//!   compact JSON, so `"{{json data.new}}"` is the string
//!   `"{\"id\":42,\"status\":\"paid\"}"`. A placeholder may not sit inside a
//!   `\uXXXX` escape.
//! - **outside a string** (`{"n": {{seq}}, "d": {{json data}}}`): the value as
//!   one JSON value, for `{{path}}` and `{{json path}}` alike; a string gets
//!   its quotes, so `{"s": {{type}}}` gives `{"s": "row.updated"}`.
//!
//! A JSON template is checked when it is parsed: with each placeholder outside
//! a string replaced by `null` and each one inside a string by nothing, it
//! must be valid JSON, so a broken template is refused when the endpoint is
//! saved rather than at delivery. Each rendered body is checked again before
//! it is returned.
//!
//! # Errors
//!
//! [`ParseError`] names the byte offset in the template and, when there is
//! one, the placeholder concerned: for `hi {{upper type}}`,
//! ``template byte 5: {{upper type}}: unknown function `upper`; the only
//! function is `json` (as in {{json data}})``. For a JSON template that is
//! not JSON, the offset is where the JSON parser stopped.
//!
//! [`RenderError`] names the placeholder and the reason
//! (`{{data.new.status}}: the event has no data.new.status`), or the limit
//! the body would exceed: the body is never longer than the `max_bytes`
//! given to [`Template::render`], and writing stops as soon as the next
//! piece would not fit, so an oversized value is never built in memory.

use std::fmt;

use serde::de::IgnoredAny;
use serde_json::Value;

/// Longest template source [`Template::parse`] accepts, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// Most placeholders in one template.
const MAX_PLACEHOLDERS: usize = 64;

/// Most segments in one path.
const MAX_SEGMENTS: usize = 16;

/// Longest path segment, in bytes.
const MAX_SEGMENT_BYTES: usize = 128;

/// Deepest nesting of arrays and objects a value may have to be written.
const MAX_DEPTH: usize = 128;

/// Longest excerpt of the template quoted in a [`ParseError`], in bytes.
const MAX_EXCERPT_BYTES: usize = 60;

/// JSON string escapes of U+0000 to U+001F.
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// How a template's output is interpreted; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The body is JSON: values are escaped for where they sit, and the
    /// template and each rendered body must be valid JSON.
    Json,
    /// The body is text: values are written raw.
    Text,
}

/// A parsed template; see the module documentation for the syntax.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    mode: Mode,
    parts: Vec<Part>,
    literal_bytes: usize,
}

/// A template refused by [`Template::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    offset: usize,
    placeholder: Option<String>,
    reason: String,
}

/// A render that failed: a path the event lacks, a body over the size
/// limit, or (in JSON mode) a body that is not JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderError {
    placeholder: Option<String>,
    reason: String,
}

#[derive(Clone, Debug)]
enum Part {
    /// Text copied as is; `offset` is where it starts in the source.
    Literal {
        text: String,
        offset: usize,
    },
    Field(Field),
}

/// One placeholder.
#[derive(Clone, Debug)]
struct Field {
    path: Vec<String>,
    /// `{{json path}}` rather than `{{path}}`.
    json: bool,
    /// Inside a JSON string literal of the template (JSON mode only).
    in_string: bool,
}

impl Template {
    /// Parses `source`. `mode`: [`Mode::Json`] when the template produces a
    /// JSON body (content type `application/json` or `+json`),
    /// [`Mode::Text`] otherwise.
    pub fn parse(source: &str, mode: Mode) -> Result<Template, ParseError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ParseError::new(
                MAX_TEMPLATE_BYTES,
                None,
                format!(
                    "the template is {} bytes; at most {MAX_TEMPLATE_BYTES} are allowed",
                    source.len()
                ),
            ));
        }
        let mut scanner = Scanner::new(source, mode);
        scanner.scan()?;
        if mode == Mode::Json {
            scanner.skeleton.validate(source)?;
        }
        Ok(Template {
            source: source.to_owned(),
            mode,
            parts: scanner.parts,
            literal_bytes: scanner.literal_bytes,
        })
    }

    /// Renders against the envelope; output at most `max_bytes` bytes, else
    /// a [`RenderError`] saying so.
    pub fn render(&self, envelope: &Value, max_bytes: usize) -> Result<String, RenderError> {
        let mut out = Output::new(max_bytes, self.literal_bytes);
        for part in &self.parts {
            match part {
                Part::Literal { text, offset } => out
                    .push(text)
                    .map_err(|Overflow| RenderError::overflow_at(*offset, max_bytes))?,
                Part::Field(field) => self.render_field(field, envelope, &mut out)?,
            }
        }
        if self.mode == Mode::Json {
            check_json_body(&out.buf)?;
        }
        Ok(out.buf)
    }

    /// The template as it was given to [`Template::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The mode it was parsed in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn render_field(
        &self,
        field: &Field,
        envelope: &Value,
        out: &mut Output,
    ) -> Result<(), RenderError> {
        let value = resolve(envelope, &field.path).map_err(|miss| miss.error(field))?;
        let written = match (self.mode, field.json, value) {
            (Mode::Text, false, Value::String(s)) => out.push(s).map_err(WriteError::from),
            (Mode::Text, false, Value::Null) => Ok(()),
            (Mode::Json, false, Value::String(s)) if field.in_string => {
                out.write(s, Escape::JsonString).map_err(WriteError::from)
            }
            _ => write_json(value, field.escape(), out, 0),
        };
        written.map_err(|err| err.error(field, out.max))
    }
}

impl Field {
    fn escape(&self) -> Escape {
        if self.in_string {
            Escape::JsonString
        } else {
            Escape::None
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let function = if self.json { "json " } else { "" };
        write!(f, "{{{{{function}{}}}}}", self.path.join("."))
    }
}

// ---------------------------------------------------------------------------
// Parsing

/// One pass over the source: literal runs, escapes, placeholders, and
/// whether each placeholder sits inside a JSON string.
struct Scanner<'a> {
    src: &'a str,
    mode: Mode,
    in_string: bool,
    /// End (exclusive) of the last `\uXXXX` escape seen in a string.
    unicode_escape_end: usize,
    parts: Vec<Part>,
    literal: String,
    literal_offset: usize,
    literal_bytes: usize,
    fields: usize,
    skeleton: Skeleton,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a str, mode: Mode) -> Scanner<'a> {
        Scanner {
            src,
            mode,
            in_string: false,
            unicode_escape_end: 0,
            parts: Vec::new(),
            literal: String::new(),
            literal_offset: 0,
            literal_bytes: 0,
            fields: 0,
            skeleton: Skeleton::default(),
        }
    }

    fn scan(&mut self) -> Result<(), ParseError> {
        let bytes = self.src.as_bytes();
        let mut i = 0;
        // Start of the literal run not yet copied; always at an ASCII byte
        // (or the end), so slicing there is on a character boundary.
        let mut run = 0;
        while i < bytes.len() {
            let rest = &bytes[i + 1..];
            match bytes[i] {
                b'\\' if rest.starts_with(b"{{") => {
                    self.literal_run(run, i);
                    self.literal_text("{{", i + 1);
                    i += 3;
                    run = i;
                }
                b'\\' if self.in_string => {
                    if rest.first() == Some(&b'u') {
                        self.unicode_escape_end = i + 6;
                    }
                    i += 2;
                }
                b'"' if self.mode == Mode::Json => {
                    self.in_string = !self.in_string;
                    i += 1;
                }
                b'{' if rest.starts_with(b"{{") => i += 1,
                b'{' if rest.starts_with(b"{") => {
                    self.literal_run(run, i);
                    i = self.placeholder(i)?;
                    run = i;
                }
                _ => i += 1,
            }
        }
        self.literal_run(run, bytes.len());
        self.flush_literal();
        Ok(())
    }

    /// Copies `src[start..end]` as literal text.
    fn literal_run(&mut self, start: usize, end: usize) {
        let src = self.src;
        if start < end {
            self.literal_text(&src[start..end], start);
        }
    }

    fn literal_text(&mut self, text: &str, offset: usize) {
        if self.literal.is_empty() {
            self.literal_offset = offset;
        }
        self.literal.push_str(text);
        self.literal_bytes += text.len();
        self.skeleton.push_literal(text, offset);
    }

    fn flush_literal(&mut self) {
        if !self.literal.is_empty() {
            let text = std::mem::take(&mut self.literal);
            self.parts.push(Part::Literal {
                text,
                offset: self.literal_offset,
            });
        }
    }

    /// Parses the placeholder whose `{{` is at `start`; returns the offset
    /// just past its `}}`.
    fn placeholder(&mut self, start: usize) -> Result<usize, ParseError> {
        let src = self.src;
        let body_start = start + 2;
        let Some(body_len) = src[body_start..].find("}}") else {
            return Err(ParseError::new(
                start,
                Some(excerpt(&src[start..])),
                "unterminated placeholder: no `}}` after this `{{`".to_owned(),
            ));
        };
        let end = body_start + body_len + 2;
        let raw = &src[start..end];
        self.fields += 1;
        if self.fields > MAX_PLACEHOLDERS {
            return Err(ParseError::new(
                start,
                Some(excerpt(raw)),
                format!("too many placeholders; at most {MAX_PLACEHOLDERS} are allowed"),
            ));
        }
        if self.in_string && start < self.unicode_escape_end {
            return Err(ParseError::new(
                start,
                Some(excerpt(raw)),
                "a placeholder cannot sit inside a \\u escape".to_owned(),
            ));
        }
        let body = &src[body_start..body_start + body_len];
        let (json, path) = parse_body(body, body_start, start, raw)?;
        self.flush_literal();
        if self.mode == Mode::Json && !self.in_string {
            self.skeleton.push_null(start, end);
        }
        self.parts.push(Part::Field(Field {
            path,
            json,
            in_string: self.in_string,
        }));
        Ok(end)
    }
}

/// Parses what is between the braces; `base` is its offset, `start` the
/// offset of the `{{`. Returns (`json` function?, path).
fn parse_body(
    body: &str,
    base: usize,
    start: usize,
    raw: &str,
) -> Result<(bool, Vec<String>), ParseError> {
    let words = words(body, base);
    let fail = |offset: usize, reason: String| ParseError::new(offset, Some(excerpt(raw)), reason);
    match words.as_slice() {
        [] => Err(fail(
            start,
            "empty placeholder; write {{path}} or {{json path}}".to_owned(),
        )),
        [(at, "json")] => Err(fail(
            *at,
            "`json` needs a path, as in {{json data}}".to_owned(),
        )),
        [(at, word)] => Ok((false, parse_path(word, *at, raw)?)),
        [(_, "json"), (at, word)] => Ok((true, parse_path(word, *at, raw)?)),
        [(at, name), _] => Err(fail(
            *at,
            format!(
                "unknown function `{name}`; the only function is `json` (as in {{{{json data}}}})"
            ),
        )),
        _ => Err(fail(
            start,
            format!(
                "{} words; write {{{{path}}}} or {{{{json path}}}}",
                words.len()
            ),
        )),
    }
}

/// The words of `body` split at ASCII whitespace, each with its offset
/// (`base` is the offset of `body`).
fn words(body: &str, base: usize) -> Vec<(usize, &str)> {
    let mut words = Vec::new();
    let mut word_start = None;
    for (i, b) in body.bytes().enumerate() {
        match (b.is_ascii_whitespace(), word_start) {
            (true, Some(s)) => {
                words.push((base + s, &body[s..i]));
                word_start = None;
            }
            (false, None) => word_start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = word_start {
        words.push((base + s, &body[s..]));
    }
    words
}

/// Splits and checks a path; `at` is its offset in the source.
fn parse_path(path: &str, at: usize, raw: &str) -> Result<Vec<String>, ParseError> {
    let mut segments = Vec::new();
    let mut offset = at;
    for segment in path.split('.') {
        if segments.len() == MAX_SEGMENTS {
            return Err(ParseError::new(
                offset,
                Some(excerpt(raw)),
                format!("the path has more than {MAX_SEGMENTS} segments"),
            ));
        }
        check_segment(segment, offset, raw)?;
        segments.push(segment.to_owned());
        offset += segment.len() + 1;
    }
    Ok(segments)
}

fn check_segment(segment: &str, offset: usize, raw: &str) -> Result<(), ParseError> {
    let fail = |offset: usize, reason: String| ParseError::new(offset, Some(excerpt(raw)), reason);
    if segment.is_empty() {
        return Err(fail(
            offset,
            "empty path segment; a path is names separated by single dots, as in data.new.status"
                .to_owned(),
        ));
    }
    if let Some((i, c)) = segment.char_indices().find(|(_, c)| !segment_char(*c)) {
        return Err(fail(
            offset + i,
            format!("character {c:?} is not allowed in a path; segments use A-Z a-z 0-9 _ -"),
        ));
    }
    if segment.len() > MAX_SEGMENT_BYTES {
        return Err(fail(
            offset,
            format!(
                "path segment of {} characters; at most {MAX_SEGMENT_BYTES} are allowed",
                segment.len()
            ),
        ));
    }
    Ok(())
}

fn segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `text`, cut to [`MAX_EXCERPT_BYTES`] on a character boundary.
fn excerpt(text: &str) -> String {
    if text.len() <= MAX_EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_EXCERPT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The JSON-mode template with placeholders outside strings as `null` and
/// those inside strings dropped, and where each of its bytes came from.
#[derive(Default)]
struct Skeleton {
    text: String,
    /// Source offset of each byte of `text`.
    origin: Vec<usize>,
    /// For each `null`: its offset in `text`, and the placeholder's source
    /// range.
    nulls: Vec<(usize, usize, usize)>,
}

impl Skeleton {
    fn push_literal(&mut self, text: &str, offset: usize) {
        self.text.push_str(text);
        self.origin.extend(offset..offset + text.len());
    }

    fn push_null(&mut self, start: usize, end: usize) {
        self.nulls.push((self.text.len(), start, end));
        self.text.push_str("null");
        self.origin.extend(std::iter::repeat_n(start, 4));
    }

    /// Checks the skeleton is JSON; the error names the source offset and,
    /// when the fault is at a placeholder, the placeholder.
    fn validate(&self, src: &str) -> Result<(), ParseError> {
        let Err(err) = serde_json::from_str::<IgnoredAny>(&self.text) else {
            return Ok(());
        };
        let at = if err.is_eof() {
            self.text.len()
        } else {
            byte_index(&self.text, err.line(), err.column())
        };
        let offset = self.origin.get(at).copied().unwrap_or(src.len());
        let placeholder = self
            .nulls
            .iter()
            .find(|(null_at, _, _)| (*null_at..*null_at + 4).contains(&at))
            .map(|(_, start, end)| excerpt(&src[*start..*end]));
        Err(ParseError::new(
            offset,
            placeholder,
            format!("the template is not valid JSON: {}", without_position(&err)),
        ))
    }
}

/// The byte of `text` at serde_json's 1-based `line` and `column`.
fn byte_index(text: &str, line: usize, column: usize) -> usize {
    let line_start = match line {
        0 | 1 => 0,
        _ => text
            .match_indices('\n')
            .nth(line - 2)
            .map_or(text.len(), |(i, _)| i + 1),
    };
    let at = match column {
        0 => line_start.saturating_sub(1),
        _ => line_start + column - 1,
    };
    at.min(text.len())
}

/// serde_json's message without its " at line L column C" (which counts in
/// the skeleton, not the template).
fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

impl ParseError {
    fn new(offset: usize, placeholder: Option<String>, reason: String) -> ParseError {
        ParseError {
            offset,
            placeholder,
            reason,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template byte {}: ", self.offset)?;
        if let Some(placeholder) = &self.placeholder {
            write!(f, "{placeholder}: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ParseError {}

// ---------------------------------------------------------------------------
// Rendering

/// The output would pass `max_bytes`.
#[derive(Debug)]
struct Overflow;

enum WriteError {
    Overflow,
    TooDeep,
}

impl From<Overflow> for WriteError {
    fn from(_: Overflow) -> WriteError {
        WriteError::Overflow
    }
}

impl WriteError {
    fn error(self, field: &Field, max_bytes: usize) -> RenderError {
        let reason = match self {
            WriteError::Overflow => overflow_reason(max_bytes),
            WriteError::TooDeep => {
                format!("the value nests arrays and objects more than {MAX_DEPTH} deep")
            }
        };
        RenderError::new(Some(field.to_string()), reason)
    }
}

#[derive(Clone, Copy)]
enum Escape {
    /// Written as is.
    None,
    /// Written as the content of a JSON string.
    JsonString,
}

/// The body being rendered; never longer than `max`.
struct Output {
    buf: String,
    max: usize,
}

impl Output {
    fn new(max: usize, literal_bytes: usize) -> Output {
        let capacity = max.min(literal_bytes.saturating_add(256));
        Output {
            buf: String::with_capacity(capacity),
            max,
        }
    }

    fn push(&mut self, s: &str) -> Result<(), Overflow> {
        if s.len() > self.max - self.buf.len() {
            return Err(Overflow);
        }
        self.buf.push_str(s);
        Ok(())
    }

    fn write(&mut self, s: &str, escape: Escape) -> Result<(), Overflow> {
        match escape {
            Escape::None => self.push(s),
            Escape::JsonString => escape_str(s, |chunk| self.push(chunk)),
        }
    }
}

/// Hands `s` to `emit` JSON-escaped as string content, in chunks.
fn escape_str<E>(s: &str, mut emit: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(escaped) = escape_char(c) {
            if start < i {
                emit(&s[start..i])?;
            }
            emit(escaped)?;
            start = i + c.len_utf8();
        }
    }
    if start < s.len() {
        emit(&s[start..])?;
    }
    Ok(())
}

fn escape_char(c: char) -> Option<&'static str> {
    match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '\u{2028}' => Some("\\u2028"),
        '\u{2029}' => Some("\\u2029"),
        _ => CONTROL_ESCAPES.get(c as usize).copied(),
    }
}

/// Writes `value` as compact JSON; `depth` is how many arrays and objects
/// enclose it.
fn write_json(
    value: &Value,
    escape: Escape,
    out: &mut Output,
    depth: usize,
) -> Result<(), WriteError> {
    match value {
        Value::Null => out.write("null", escape)?,
        Value::Bool(b) => out.write(if *b { "true" } else { "false" }, escape)?,
        Value::Number(n) => out.write(&n.to_string(), escape)?,
        Value::String(s) => write_json_string(s, escape, out)?,
        Value::Array(items) => {
            check_depth(depth)?;
            out.write("[", escape)?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write(",", escape)?;
                }
                write_json(item, escape, out, depth + 1)?;
            }
            out.write("]", escape)?;
        }
        Value::Object(map) => {
            check_depth(depth)?;
            out.write("{", escape)?;
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.write(",", escape)?;
                }
                write_json_string(key, escape, out)?;
                out.write(":", escape)?;
                write_json(item, escape, out, depth + 1)?;
            }
            out.write("}", escape)?;
        }
    }
    Ok(())
}

fn check_depth(depth: usize) -> Result<(), WriteError> {
    if depth >= MAX_DEPTH {
        return Err(WriteError::TooDeep);
    }
    Ok(())
}

fn write_json_string(s: &str, escape: Escape, out: &mut Output) -> Result<(), Overflow> {
    out.write("\"", escape)?;
    escape_str(s, |chunk| out.write(chunk, escape))?;
    out.write("\"", escape)
}

/// Where a path leaves the event: segment `at` is not in `parent`.
struct Miss<'v> {
    at: usize,
    parent: &'v Value,
}

fn resolve<'v>(root: &'v Value, path: &[String]) -> Result<&'v Value, Miss<'v>> {
    let mut value = root;
    for (at, segment) in path.iter().enumerate() {
        value = step(value, segment).ok_or(Miss { at, parent: value })?;
    }
    Ok(value)
}

fn step<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => array_index(segment).and_then(|i| items.get(i)),
        _ => None,
    }
}

/// The index a segment of digits names (`None` for other segments, and
/// for numbers too large to index anything).
fn array_index(segment: &str) -> Option<usize> {
    if is_digits(segment) {
        segment.parse().ok()
    } else {
        None
    }
}

fn is_digits(segment: &str) -> bool {
    segment.bytes().all(|b| b.is_ascii_digit())
}

impl Miss<'_> {
    fn error(&self, field: &Field) -> RenderError {
        let path = field.path.join(".");
        let parent = match self.at {
            0 => "the event".to_owned(),
            at => field.path[..at].join("."),
        };
        let segment = field.path.get(self.at).map_or("", String::as_str);
        let detail = match self.parent {
            Value::Object(_) => String::new(),
            Value::Array(items) if is_digits(segment) => {
                let noun = if items.len() == 1 { "item" } else { "items" };
                format!(" ({parent} has {} {noun})", items.len())
            }
            Value::Array(_) => format!(" ({parent} is an array; index it with a number)"),
            other => format!(" ({parent} is {})", crate::event::json::kind_of(other)),
        };
        RenderError::new(
            Some(field.to_string()),
            format!("the event has no {path}{detail}"),
        )
    }
}

fn overflow_reason(max_bytes: usize) -> String {
    format!("the rendered body would exceed the limit of {max_bytes} bytes")
}

/// The final check of a JSON-mode body.
fn check_json_body(body: &str) -> Result<(), RenderError> {
    match serde_json::from_str::<IgnoredAny>(body) {
        Ok(_) => Ok(()),
        Err(err) => Err(RenderError::new(
            None,
            format!("the rendered body is not valid JSON: {err}"),
        )),
    }
}

impl RenderError {
    fn new(placeholder: Option<String>, reason: String) -> RenderError {
        RenderError {
            placeholder,
            reason,
        }
    }

    fn overflow_at(offset: usize, max_bytes: usize) -> RenderError {
        RenderError::new(
            None,
            format!("{} (at template byte {offset})", overflow_reason(max_bytes)),
        )
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(placeholder) = &self.placeholder {
            write!(f, "{placeholder}: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for RenderError {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMIT: usize = 64 * 1024;

    /// A value that tries every way out of a JSON string.
    const HOSTILE: &str = "q\" b\\ nl\n cr\r tab\t nul\u{0} bel\u{7} us\u{1f} \
        </script><script>alert(1)</script> ls\u{2028} ps\u{2029} \"}, \"x\": 1, {\" \\\" é ✓";

    fn envelope() -> Value {
        json!({
            "specversion": "1.0", "id": "184467", "seq": 184467,
            "source": "/sluice/pg/main", "type": "row.updated",
            "subject": "public.orders/42", "time": "2026-11-22T10:15:30.123456Z",
            "tenant": "acme", "topic": "tables/public.orders/update",
            "txid": 7731, "lsn": "0/16B3748",
            "data": {
                "op": "update", "schema": "public", "table": "orders",
                "key": {"id": 42},
                "new": {"id": 42, "status": "paid"},
                "old": {"id": 42, "status": "pending"},
                "changed": ["status"]
            }
        })
    }

    /// An envelope whose `data.v` holds `value`.
    fn with_value(value: Value) -> Value {
        let mut env = envelope();
        env["data"]["v"] = value;
        env
    }

    fn json_template(source: &str) -> Template {
        match Template::parse(source, Mode::Json) {
            Ok(t) => t,
            Err(e) => panic!("{source}: {e}"),
        }
    }

    fn text_template(source: &str) -> Template {
        match Template::parse(source, Mode::Text) {
            Ok(t) => t,
            Err(e) => panic!("{source}: {e}"),
        }
    }

    fn render(template: &Template, env: &Value) -> String {
        match template.render(env, LIMIT) {
            Ok(body) => body,
            Err(e) => panic!("{}: {e}", template.source()),
        }
    }

    /// Renders a JSON template and parses the body.
    fn render_json(source: &str, env: &Value) -> Value {
        let body = render(&json_template(source), env);
        match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => panic!("{source} rendered {body:?}, not JSON: {e}"),
        }
    }

    fn render_text(source: &str, env: &Value) -> String {
        render(&text_template(source), env)
    }

    fn parse_error(source: &str, mode: Mode) -> String {
        match Template::parse(source, mode) {
            Ok(_) => panic!("{source:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    fn render_error(source: &str, mode: Mode, env: &Value) -> String {
        let template = match Template::parse(source, mode) {
            Ok(t) => t,
            Err(e) => panic!("{source}: {e}"),
        };
        match template.render(env, LIMIT) {
            Ok(body) => panic!("{source} rendered {body:?}"),
            Err(e) => e.to_string(),
        }
    }

    // --- JSON mode -------------------------------------------------------

    #[test]
    fn chat_example() {
        let source = r#"{"text":"{{type}} on {{subject}}: {{data.new.status}}"}"#;
        let body = render(&json_template(source), &envelope());
        assert_eq!(body, r#"{"text":"row.updated on public.orders/42: paid"}"#);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"text": "row.updated on public.orders/42: paid"})
        );
    }

    #[test]
    fn hostile_string_stays_inside_a_string() {
        let env = with_value(json!(HOSTILE));
        let out = render_json(r#"{"text":"{{data.v}}"}"#, &env);
        assert_eq!(out, json!({ "text": HOSTILE }));
        let out = render_json(r#"{"text":"<{{data.v}}|{{ data.v }}>"}"#, &env);
        assert_eq!(out["text"], json!(format!("<{HOSTILE}|{HOSTILE}>")));
    }

    #[test]
    fn hostile_string_escapes_line_separators_and_controls() {
        let env = with_value(json!(HOSTILE));
        for source in [
            r#"{"t":"{{data.v}}"}"#,
            r#"{"t":{{data.v}}}"#,
            r#"{"t":"{{json data.v}}"}"#,
        ] {
            let body = render(&json_template(source), &env);
            assert!(
                !body.contains('\u{2028}') && !body.contains('\u{2029}'),
                "{body}"
            );
            assert!(!body.chars().any(|c| c.is_control()), "{body:?}");
            assert!(
                body.contains("\\u2028") && body.contains("\\u2029"),
                "{body}"
            );
        }
    }

    #[test]
    fn hostile_string_outside_a_string_is_one_string_value() {
        let env = with_value(json!(HOSTILE));
        let out = render_json(r#"{"plain": {{data.v}}, "json": {{json data.v}}}"#, &env);
        assert_eq!(out, json!({ "plain": HOSTILE, "json": HOSTILE }));
    }

    #[test]
    fn hostile_string_as_json_inside_a_string_keeps_its_quotes() {
        let env = with_value(json!(HOSTILE));
        let out = render_json(r#"{"t":"{{json data.v}}"}"#, &env);
        let inner = out["t"].as_str().unwrap();
        assert!(inner.starts_with('"') && inner.ends_with('"'));
        assert_eq!(
            serde_json::from_str::<Value>(inner).unwrap(),
            json!(HOSTILE)
        );
    }

    #[test]
    fn hostile_keys_and_nested_strings_in_objects() {
        let env = with_value(json!({ HOSTILE: [HOSTILE, {"k": HOSTILE}] }));
        let expected = env["data"]["v"].clone();
        let out = render_json(r#"{"d": {{json data.v}}, "p": {{data.v}}}"#, &env);
        assert_eq!(out, json!({ "d": expected, "p": expected }));
        let out = render_json(r#"{"s":"{{json data.v}}", "p":"{{data.v}}"}"#, &env);
        for field in ["s", "p"] {
            let text = out[field].as_str().unwrap();
            assert_eq!(serde_json::from_str::<Value>(text).unwrap(), expected);
        }
    }

    #[test]
    fn json_data_outside_a_string_embeds_the_object() {
        let env = envelope();
        let out = render_json(r#"{"n": {{seq}}, "d": {{json data}}}"#, &env);
        assert_eq!(out, json!({ "n": 184467, "d": env["data"] }));
    }

    #[test]
    fn json_data_new_inside_a_string_is_its_json_text() {
        let env = envelope();
        let out = render_json(r#"{"new":"{{json data.new}}"}"#, &env);
        assert_eq!(out["new"], json!(r#"{"id":42,"status":"paid"}"#));
        let inner: Value = serde_json::from_str(out["new"].as_str().unwrap()).unwrap();
        assert_eq!(inner, env["data"]["new"]);
    }

    #[test]
    fn compact_json_matches_serde_json() {
        let env = with_value(json!({
            "f": 1.5, "big": 1e300, "neg": -7, "u": u64::MAX, "tiny": 5e-324,
            "s": "é ✓ \u{1F600} \" \\ \n", "nested": [[], {}, [null, true, false]],
        }));
        let body = render(&text_template("{{json data}}"), &env);
        assert_eq!(body, serde_json::to_string(&env["data"]).unwrap());
    }

    #[test]
    fn scalars_and_containers_in_every_position() {
        // (value, JSON outside a string, text inside a JSON string, text mode {{path}})
        let cases = [
            (json!(42), "42", "42", "42"),
            (json!(-1.25), "-1.25", "-1.25", "-1.25"),
            (json!(true), "true", "true", "true"),
            (json!(false), "false", "false", "false"),
            (json!(null), "null", "null", ""),
            (json!("hi"), r#""hi""#, "hi", "hi"),
            (
                json!([1, "a", null]),
                r#"[1,"a",null]"#,
                r#"[1,"a",null]"#,
                r#"[1,"a",null]"#,
            ),
            (
                json!({"a": [true]}),
                r#"{"a":[true]}"#,
                r#"{"a":[true]}"#,
                r#"{"a":[true]}"#,
            ),
            (json!([]), "[]", "[]", "[]"),
            (json!({}), "{}", "{}", "{}"),
        ];
        for (value, outside, inside, text) in cases {
            let env = with_value(value.clone());
            let out = render_json(r#"{"o": {{data.v}}, "j": {{json data.v}}}"#, &env);
            assert_eq!(out, json!({ "o": value, "j": value }), "{value}");
            let body = render(&json_template("[{{data.v}},{{json data.v}}]"), &env);
            assert_eq!(body, format!("[{outside},{outside}]"));

            let out = render_json(r#"{"s":"{{data.v}}"}"#, &env);
            assert_eq!(out["s"], json!(inside), "{value}");
            let out = render_json(r#"{"s":"{{json data.v}}"}"#, &env);
            assert_eq!(out["s"], json!(outside), "{value}");

            assert_eq!(render_text("<{{data.v}}>", &env), format!("<{text}>"));
            assert_eq!(
                render_text("<{{json data.v}}>", &env),
                format!("<{outside}>")
            );
        }
    }

    #[test]
    fn whole_body_placeholder() {
        let env = envelope();
        let body = render(&json_template("{{json data}}"), &env);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), env["data"]);
        let body = render(&json_template(" {{ json data }}\n"), &env);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), env["data"]);
        assert_eq!(
            render(&json_template("{{data.new.status}}"), &env),
            r#""paid""#
        );
        assert_eq!(render(&json_template("{{seq}}"), &env), "184467");
        assert_eq!(render(&json_template(r#""{{seq}}""#), &env), r#""184467""#);
    }

    #[test]
    fn literal_json_escapes_do_not_end_strings() {
        let env = envelope();
        let out = render_json(r#"{"t":"say \"{{type}}\" \\ {{tenant}}"}"#, &env);
        assert_eq!(out["t"], json!(r#"say "row.updated" \ acme"#));
        // `\\{{` inside a string: an escaped backslash, then a placeholder.
        let out = render_json(r#"{"t":"C:\\{{tenant}}"}"#, &env);
        assert_eq!(out["t"], json!(r"C:\acme"));
        let out = render_json(r#"{"t":"\u00e9{{tenant}}"}"#, &env);
        assert_eq!(out["t"], json!("éacme"));
    }

    #[test]
    fn placeholders_as_keys_and_in_nested_structure() {
        let env = envelope();
        let out = render_json(
            r#"{"{{tenant}}": {"{{data.table}}": [{{data.key.id}}, {{json data.changed}}]}}"#,
            &env,
        );
        assert_eq!(out, json!({"acme": {"orders": [42, ["status"]]}}));
    }

    #[test]
    fn utf8_around_placeholders() {
        let env = envelope();
        let out = render_json(r#"{"t":"héllo ✓{{tenant}}✓ 😀"}"#, &env);
        assert_eq!(out["t"], json!("héllo ✓acme✓ 😀"));
        assert_eq!(render_text("é{{tenant}}ü", &env), "éacmeü");
    }

    #[test]
    fn rendered_body_is_checked() {
        assert!(check_json_body(r#"{"a":[1,2]}"#).is_ok());
        let err = check_json_body(r#"{"a":"#).unwrap_err().to_string();
        assert!(
            err.starts_with("the rendered body is not valid JSON: EOF while parsing a value"),
            "{err}"
        );
    }

    // --- text mode -------------------------------------------------------

    #[test]
    fn text_mode_writes_values_raw() {
        let env = with_value(json!(HOSTILE));
        assert_eq!(render_text("{{data.v}}", &env), HOSTILE);
        assert_eq!(
            render_text(
                "{{type}} on {{subject}}: {{data.new.status}} (#{{seq}})",
                &env
            ),
            "row.updated on public.orders/42: paid (#184467)"
        );
        assert_eq!(render_text(r#""{{tenant}}""#, &env), r#""acme""#);
        assert_eq!(render_text("{{json tenant}}", &env), r#""acme""#);
        assert_eq!(
            render_text("{{data.new}}", &env),
            r#"{"id":42,"status":"paid"}"#
        );
        assert_eq!(render_text(r"a\b \n {{tenant}}", &env), r"a\b \n acme");
    }

    #[test]
    fn text_mode_accepts_anything_that_is_not_json() {
        let env = envelope();
        assert_eq!(render_text("", &env), "");
        assert_eq!(render_text(r#"{"a": {{tenant}} "#, &env), r#"{"a": acme "#);
        assert_eq!(render_text("}} { } {x}", &env), "}} { } {x}");
    }

    // --- paths -----------------------------------------------------------

    #[test]
    fn array_indexing() {
        let env = with_value(json!([10, [20, 21], {"k": "v"}]));
        assert_eq!(render_text("{{data.changed.0}}", &env), "status");
        assert_eq!(render_text("{{data.v.0}}", &env), "10");
        assert_eq!(render_text("{{data.v.1.1}}", &env), "21");
        assert_eq!(render_text("{{data.v.2.k}}", &env), "v");
        assert_eq!(render_text("{{data.v.001}}", &env), "[20,21]");
        let out = render_json(
            r#"{"first": {{data.changed.0}}, "s": "{{data.changed.0}}"}"#,
            &env,
        );
        assert_eq!(out, json!({"first": "status", "s": "status"}));
    }

    #[test]
    fn digit_segments_are_keys_on_objects() {
        let env = with_value(json!({"0": "zero", "12": "twelve"}));
        assert_eq!(
            render_text("{{data.v.0}} {{data.v.12}}", &env),
            "zero twelve"
        );
    }

    #[test]
    fn missing_path_errors() {
        let mut env = envelope();
        env["data"].as_object_mut().unwrap().remove("new");
        assert_eq!(
            render_error(r#"{"t":"{{data.new.status}}"}"#, Mode::Json, &env),
            "{{data.new.status}}: the event has no data.new.status"
        );
        env["data"]["new"] = Value::Null;
        assert_eq!(
            render_error("{{ data.new.status }}", Mode::Text, &env),
            "{{data.new.status}}: the event has no data.new.status (data.new is null)"
        );
        assert_eq!(
            render_error("{{json nope}}", Mode::Text, &env),
            "{{json nope}}: the event has no nope"
        );
        assert_eq!(
            render_error("{{data.changed.1}}", Mode::Text, &env),
            "{{data.changed.1}}: the event has no data.changed.1 (data.changed has 1 item)"
        );
        assert_eq!(
            render_error("{{data.changed.x}}", Mode::Text, &env),
            "{{data.changed.x}}: the event has no data.changed.x \
             (data.changed is an array; index it with a number)"
        );
        assert_eq!(
            render_error("{{type.x}}", Mode::Text, &env),
            "{{type.x}}: the event has no type.x (type is a string)"
        );
        assert_eq!(
            render_error("{{data.changed.99999999999999999999999}}", Mode::Text, &env),
            "{{data.changed.99999999999999999999999}}: the event has no \
             data.changed.99999999999999999999999 (data.changed has 1 item)"
        );
        assert_eq!(
            render_error("{{x}}", Mode::Text, &json!([1])),
            "{{x}}: the event has no x (the event is an array; index it with a number)"
        );
    }

    #[test]
    fn too_deep_values_are_refused() {
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let env = with_value(deep.clone());
        let body = render_text("{{json data.v}}", &env);
        assert_eq!(body.len(), 2 * MAX_DEPTH + 1);
        let env = with_value(json!([deep]));
        assert_eq!(
            render_error("{{json data.v}}", Mode::Text, &env),
            "{{json data.v}}: the value nests arrays and objects more than 128 deep"
        );
    }

    // --- output bound ----------------------------------------------------

    #[test]
    fn output_bound_exact_boundary() {
        let env = envelope();
        let template = json_template(r#"{"text":"{{type}} on {{subject}}: {{data.new.status}}"}"#);
        let body = render(&template, &env);
        assert_eq!(
            template.render(&env, body.len()).as_deref(),
            Ok(body.as_str())
        );
        let err = template.render(&env, body.len() - 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the rendered body would exceed the limit of {} bytes (at template byte 53)",
                body.len() - 1
            )
        );
        assert!(template.render(&env, 0).is_err());
    }

    #[test]
    fn output_bound_inside_a_value() {
        let env = with_value(json!(vec!["x".repeat(1000); 1000]));
        let template = json_template(r#"{"d": {{json data.v}}}"#);
        assert_eq!(
            template.render(&env, 4096).unwrap_err().to_string(),
            "{{json data.v}}: the rendered body would exceed the limit of 4096 bytes"
        );
        let template = text_template("{{data.v.0}}");
        assert_eq!(template.render(&env, 1000).unwrap().len(), 1000);
        assert!(template.render(&env, 999).is_err());
    }

    #[test]
    fn output_bound_counts_escapes() {
        let env = with_value(json!("\"\"\""));
        let template = json_template(r#""{{data.v}}""#);
        let body = render(&template, &env);
        assert_eq!(body, r#""\"\"\"""#);
        assert!(template.render(&env, body.len()).is_ok());
        assert!(template.render(&env, body.len() - 1).is_err());
    }

    #[test]
    fn empty_text_template_fits_in_zero_bytes() {
        assert_eq!(text_template("").render(&envelope(), 0).as_deref(), Ok(""));
    }

    // --- syntax ----------------------------------------------------------

    #[test]
    fn backslash_escape_is_a_literal_double_brace() {
        let env = envelope();
        assert_eq!(
            render_text(r"\{{type}} is {{type}}", &env),
            "{{type}} is row.updated"
        );
        assert_eq!(render_text(r"\{{{type}}", &env), "{{{type}}");
        assert_eq!(render_text(r"a\{b\}} \{{", &env), r"a\{b\}} {{");
        let out = render_json(r#"{"t":"\{{type}} = {{type}}"}"#, &env);
        assert_eq!(out["t"], json!("{{type}} = row.updated"));
    }

    #[test]
    fn escaped_braces_are_not_placeholders() {
        let many = r"\{{x}}".repeat(MAX_PLACEHOLDERS + 1);
        assert_eq!(
            render_text(&many, &envelope()),
            "{{x}}".repeat(MAX_PLACEHOLDERS + 1)
        );
    }

    #[test]
    fn whitespace_inside_braces() {
        let env = envelope();
        assert_eq!(
            render_text(
                "{{type}}|{{ type }}|{{\ttype\n}}|{{  json \r\n tenant  }}",
                &env
            ),
            r#"row.updated|row.updated|row.updated|"acme""#
        );
    }

    #[test]
    fn braces_around_placeholders() {
        let env = envelope();
        assert_eq!(render_text("{{{type}}}", &env), "{row.updated}");
        assert_eq!(render_text("{{{{type}}}}", &env), "{{row.updated}}");
        let out = render_json(r#"{"a":{"b":{{seq}}}}"#, &env);
        assert_eq!(out, json!({"a": {"b": 184467}}));
    }

    #[test]
    fn accessors_and_traits() {
        fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
        fn assert_error<E: std::error::Error + Clone + Send + Sync + 'static>() {}
        assert_traits::<Template>();
        assert_traits::<Mode>();
        assert_error::<ParseError>();
        assert_error::<RenderError>();
        let template = json_template(r#"{"t":"{{type}}"}"#);
        assert_eq!(template.source(), r#"{"t":"{{type}}"}"#);
        assert_eq!(template.mode(), Mode::Json);
        assert_eq!(text_template("x").mode(), Mode::Text);
        let copy = template.clone();
        assert_eq!(render(&copy, &envelope()), r#"{"t":"row.updated"}"#);
    }

    // --- parse errors ----------------------------------------------------

    #[test]
    fn unterminated_placeholder() {
        assert_eq!(
            parse_error("hi {{type", Mode::Text),
            "template byte 3: {{type: unterminated placeholder: no `}}` after this `{{`"
        );
        assert_eq!(
            parse_error(r#"{"t":"{{type}"}"#, Mode::Json),
            r#"template byte 6: {{type}"}: unterminated placeholder: no `}}` after this `{{`"#
        );
        let long = format!("{{{{{}", "a".repeat(100));
        let err = parse_error(&long, Mode::Text);
        assert!(
            err.starts_with(&format!("template byte 0: {{{{{}…: ", "a".repeat(58))),
            "{err}"
        );
    }

    #[test]
    fn empty_placeholder() {
        for source in ["{{}}", "x {{ }}", "{{\n\t}}"] {
            let err = parse_error(source, Mode::Text);
            assert!(
                err.ends_with("empty placeholder; write {{path}} or {{json path}}"),
                "{err}"
            );
        }
        assert_eq!(
            parse_error("ab{{ }}", Mode::Text),
            "template byte 2: {{ }}: empty placeholder; write {{path}} or {{json path}}"
        );
        assert_eq!(
            parse_error("{{ json }}", Mode::Text),
            "template byte 3: {{ json }}: `json` needs a path, as in {{json data}}"
        );
    }

    #[test]
    fn bad_segments() {
        assert_eq!(
            parse_error("{{data.n%w}}", Mode::Text),
            "template byte 8: {{data.n%w}}: character '%' is not allowed in a path; \
             segments use A-Z a-z 0-9 _ -"
        );
        assert_eq!(
            parse_error("{{ json data.é }}", Mode::Text),
            "template byte 13: {{ json data.é }}: character 'é' is not allowed in a path; \
             segments use A-Z a-z 0-9 _ -"
        );
        for (source, offset) in [("{{data..x}}", 7), ("{{.data}}", 2), ("{{data.}}", 7)] {
            assert_eq!(
                parse_error(source, Mode::Text),
                format!(
                    "template byte {offset}: {source}: empty path segment; a path is names \
                     separated by single dots, as in data.new.status"
                )
            );
        }
        let ok = format!("{{{{{}}}}}", "a".repeat(MAX_SEGMENT_BYTES));
        assert!(Template::parse(&ok, Mode::Text).is_ok());
        let long = format!("{{{{x.{}}}}}", "a".repeat(MAX_SEGMENT_BYTES + 1));
        let err = parse_error(&long, Mode::Text);
        assert!(err.starts_with("template byte 4: "), "{err}");
        assert!(
            err.ends_with("path segment of 129 characters; at most 128 are allowed"),
            "{err}"
        );
        // Placeholder names allow `_` and `-`.
        let env = with_value(json!({"a_b-c": 1}));
        assert_eq!(render_text("{{data.v.a_b-c}}", &env), "1");
    }

    #[test]
    fn too_many_segments() {
        let ok = format!("{{{{{}}}}}", vec!["a"; MAX_SEGMENTS].join("."));
        assert!(Template::parse(&ok, Mode::Text).is_ok());
        let bad = format!("{{{{{}}}}}", vec!["a"; MAX_SEGMENTS + 1].join("."));
        assert_eq!(
            parse_error(&bad, Mode::Text),
            format!("template byte 34: {bad}: the path has more than 16 segments")
        );
    }

    #[test]
    fn unknown_function_lists_json() {
        assert_eq!(
            parse_error("hi {{upper type}}", Mode::Text),
            "template byte 5: {{upper type}}: unknown function `upper`; the only function \
             is `json` (as in {{json data}})"
        );
        assert_eq!(
            parse_error("{{json data extra}}", Mode::Text),
            "template byte 0: {{json data extra}}: 3 words; write {{path}} or {{json path}}"
        );
    }

    #[test]
    fn too_many_placeholders() {
        let ok = "{{seq}}".repeat(MAX_PLACEHOLDERS);
        assert!(Template::parse(&ok, Mode::Text).is_ok());
        let bad = "{{seq}}".repeat(MAX_PLACEHOLDERS + 1);
        assert_eq!(
            parse_error(&bad, Mode::Text),
            "template byte 448: {{seq}}: too many placeholders; at most 64 are allowed"
        );
    }

    #[test]
    fn too_long_source() {
        let ok = "x".repeat(MAX_TEMPLATE_BYTES);
        assert!(Template::parse(&ok, Mode::Text).is_ok());
        let bad = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert_eq!(
            parse_error(&bad, Mode::Text),
            "template byte 16384: the template is 16385 bytes; at most 16384 are allowed"
        );
    }

    #[test]
    fn invalid_json_templates() {
        let cases = [
            (
                r#"{"a": }"#,
                "template byte 6: the template is not valid JSON: expected value",
            ),
            (
                r#"{"a": "x"#,
                "template byte 8: the template is not valid JSON: EOF while parsing a string",
            ),
            (
                r#"{"t":"{{type}}}"#,
                "template byte 15: the template is not valid JSON: EOF while parsing a string",
            ),
            (
                "",
                "template byte 0: the template is not valid JSON: EOF while parsing a value",
            ),
            (
                "{} x",
                "template byte 3: the template is not valid JSON: trailing characters",
            ),
            (
                r#"{"a": {{seq}} {{seq}}}"#,
                "template byte 14: {{seq}}: the template is not valid JSON: \
                 expected `,` or `}`",
            ),
            (
                "{ {{tenant}}: 1}",
                "template byte 2: {{tenant}}: the template is not valid JSON: \
                 key must be a string",
            ),
            (
                r#"{"n": 1{{seq}}}"#,
                "template byte 7: {{seq}}: the template is not valid JSON: \
                 expected `,` or `}`",
            ),
            (
                "[1,\n 2,\n x]",
                "template byte 9: the template is not valid JSON: expected value",
            ),
            (
                r#"{"t": \{{type}}}"#,
                "template byte 8: the template is not valid JSON: key must be a string",
            ),
            (
                r#"{"t":"\q"}"#,
                "template byte 7: the template is not valid JSON: invalid escape",
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(parse_error(source, Mode::Json), expected, "{source}");
            assert!(Template::parse(source, Mode::Text).is_ok(), "{source}");
        }
    }

    #[test]
    fn placeholder_inside_unicode_escape_is_refused() {
        assert_eq!(
            parse_error(r#"{"t":"\u12{{seq}}34"}"#, Mode::Json),
            "template byte 10: {{seq}}: a placeholder cannot sit inside a \\u escape"
        );
        assert!(Template::parse(r#"{"t":"\u1234{{seq}}"}"#, Mode::Json).is_ok());
    }
}
