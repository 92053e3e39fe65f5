//! YAML documents with positions: each document becomes a `serde_json::Value` plus an index from
//! field path (`spec.selector.matchLabels`) to its line and column, so every later check can point
//! at the exact place in the file.
//!
//! Mesh config comes from files an operator (or a script, or a fuzzer) wrote, so malformed input
//! must end in a diagnostic, never in a panic, a stack overflow or unbounded memory. [`parse`]
//! therefore enforces these limits, each a named constant below:
//!
//! * size ([`MAX_FILE_BYTES`]) and documents per file ([`MAX_DOCUMENTS`]), checked before parsing;
//! * control characters (NUL and friends) are rejected before parsing: the YAML parser would
//!   silently stop reading at a NUL byte;
//! * anchors and aliases (`&name`, `*name`) are rejected before parsing: the parser expands them by
//!   cloning, which a few lines can turn into gigabytes ("billion laughs");
//! * indentation ([`MAX_INDENT_COLUMN`]) is checked before parsing, because saphyr's parser
//!   recurses once per nesting level and the column bounds block nesting; flow nesting (`[`, `{`)
//!   saphyr caps itself at 255 levels. The parser runs on its own thread with a
//!   [`PARSER_STACK_BYTES`] stack, comfortably above what those bounds allow;
//! * nesting depth ([`MAX_DEPTH`]) is checked exactly on the parsed tree before it is converted,
//!   so every `Value` handed on is shallow enough for recursive code (serde, `Drop`).
use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

/// Largest YAML text accepted, in bytes. Kubernetes caps one object at about 1.5 MiB (etcd's
/// request limit); 16 MiB holds thousands of objects per file and keeps the parsed form (roughly
/// 30-60 times the text) within a bounded amount of memory.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// Most documents (`---` separators) accepted in one file. Every document, even an empty one,
/// costs a parsed node; 10,000 objects per file is far beyond any hand-written config.
pub const MAX_DOCUMENTS: usize = 10_000;

/// Deepest nesting of mappings and sequences accepted in a document (the document's top-level
/// mapping is level 1). Istio's deepest kinds need about 12 levels.
pub const MAX_DEPTH: usize = 64;

/// Largest column (0-based, in bytes) at which a line may start a block node, counting compact
/// indicators (`- - key:`). Block nesting in YAML needs strictly increasing indentation, so this
/// bounds how deeply the parser can recurse (at most two levels per column) before [`MAX_DEPTH`]
/// can be checked on the tree.
pub const MAX_INDENT_COLUMN: usize = 256;

/// Stack of the thread that runs the YAML parser. The limits above bound its recursion to about
/// 1,000 levels (2 x [`MAX_INDENT_COLUMN`] block levels plus 2 x 255 flow levels), a few MiB even
/// in debug builds. Only the pages actually touched are committed.
pub const PARSER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// Most nodes (scalars and collections) accepted in one file, counted by the pre-scan. A parsed node
/// costs a few hundred bytes between the parser's tree, the `Value` and its position, so a file of
/// nothing but one-character list items (8 million in 16 MiB) would take gigabytes; a million is
/// several times what a 16 MiB file of real objects holds.
pub const MAX_NODES: usize = 1_000_000;

/// Field paths longer than this get no entry in [`Document::positions`] (diagnostics then point at
/// the closest recorded parent), so a long key cannot be copied into millions of child paths.
pub const MAX_FIELD_PATH_BYTES: usize = 1024;

/// 1-based position in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One YAML document of a file.
#[derive(Clone, Debug)]
pub struct Document {
    pub value: Value,
    /// Where the document starts.
    pub start: Pos,
    /// Field path -> position of its value.
    pub positions: BTreeMap<String, Pos>,
}

impl Document {
    /// A document that did not come from a file (the Kubernetes source): no positions, so every
    /// diagnostic points at the object itself.
    pub fn from_value(value: Value) -> Self {
        Document { value, start: Pos { line: 1, column: 1 }, positions: BTreeMap::new() }
    }

    /// Position of `path`, or of its closest present parent, or of the document.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }
}

/// Why a YAML text was not accepted: a syntax error or a limit, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub pos: Pos,
    /// Complete sentence, e.g. `YAML syntax error: ...` or `file is 20971520 bytes; ...`.
    pub message: String,
    pub hint: String,
}

impl SyntaxError {
    fn new(pos: Pos, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SyntaxError { pos, message: message.into(), hint: hint.into() }
    }
}

/// Parses every document of `text`. Empty documents are skipped.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(text.len()));
    }
    prescan(text)?;
    // The parser recurses per nesting level: give it a stack of known size whatever thread (a
    // 2 MiB tokio worker, a test thread) asked. The tree is converted and dropped there too.
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("sluice-yaml".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(s, || load(text))
            .map_err(|e| {
                SyntaxError::new(
                    Pos { line: 1, column: 1 },
                    format!("cannot start the YAML parser thread: {e}"),
                    "the system is out of threads or memory; retry",
                )
            })?;
        worker.join().unwrap_or_else(|_| {
            Err(SyntaxError::new(
                Pos { line: 1, column: 1 },
                "internal error: the YAML parser failed on this file",
                "please report this file as a sluice bug",
            ))
        })
    })
}

/// The error for a text above [`MAX_FILE_BYTES`].
pub fn too_large(size: usize) -> SyntaxError {
    SyntaxError::new(
        Pos { line: 1, column: 1 },
        format!("file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes"),
        "split the config into several files",
    )
}

fn load(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let pos = Pos { line: e.marker().line(), column: e.marker().col() + 1 };
        let info = e.info();
        if info.contains("duplicated key") {
            return duplicate_key(text, pos);
        }
        let hint = if info.contains("recursion limit") {
            format!("nest at most {MAX_DEPTH} levels")
        } else {
            "fix the YAML syntax at this position".into()
        };
        SyntaxError::new(pos, format!("YAML syntax error: {info}"), hint)
    })?;
    if docs.len() > MAX_DOCUMENTS + 1 {
        let pos = docs.get(MAX_DOCUMENTS).map_or(Pos { line: 1, column: 1 }, pos_of);
        return Err(too_many_documents(pos));
    }
    let mut cx = Convert { positions: BTreeMap::new(), budget: 2 * text.len() + 64 };
    let mut out = Vec::new();
    for d in docs {
        let start = pos_of(&d);
        let value = cx.convert(&d, Some(String::new()), 0)?;
        let positions = std::mem::take(&mut cx.positions);
        if value.is_null() {
            continue;
        }
        out.push(Document { value, start, positions });
    }
    Ok(out)
}

fn too_many_documents(pos: Pos) -> SyntaxError {
    SyntaxError::new(
        pos,
        format!("more than {MAX_DOCUMENTS} documents in one file"),
        "split the config into several files",
    )
}

fn pos_of(n: &MarkedYaml<'_>) -> Pos {
    Pos { line: n.span.start.line(), column: n.span.start.col() + 1 }
}

/// The conversion of one parsed tree: positions recorded so far and the remaining budget of nodes
/// plus scalar bytes. Without aliases the output can never outgrow the text, so the budget is a
/// second line of defence should an alias ever get past [`prescan`].
struct Convert {
    positions: BTreeMap<String, Pos>,
    budget: usize,
}

impl Convert {
    fn spend(&mut self, n: &MarkedYaml<'_>, amount: usize) -> Result<(), SyntaxError> {
        match self.budget.checked_sub(amount) {
            Some(rest) => {
                self.budget = rest;
                Ok(())
            }
            None => Err(SyntaxError::new(
                pos_of(n),
                "document expands to more data than the file holds",
                "YAML anchors and aliases are not supported; write the values out in full",
            )),
        }
    }

    /// `path` is `None` when it grew past [`MAX_FIELD_PATH_BYTES`]; `depth` counts the collections
    /// around `n`.
    fn convert(
        &mut self,
        n: &MarkedYaml<'_>,
        path: Option<String>,
        depth: usize,
    ) -> Result<Value, SyntaxError> {
        self.spend(n, 1)?;
        if let Some(p) = &path
            && !p.is_empty()
        {
            self.positions.insert(p.clone(), pos_of(n));
        }
        let child = |path: &Option<String>, segment: std::fmt::Arguments<'_>| {
            let p = path.as_deref()?;
            let c = if p.is_empty() { segment.to_string() } else { format!("{p}{segment}") };
            (c.len() <= MAX_FIELD_PATH_BYTES).then_some(c)
        };
        let deeper = |depth: usize| {
            if depth >= MAX_DEPTH {
                Err(SyntaxError::new(
                    pos_of(n),
                    format!("nesting deeper than {MAX_DEPTH} levels of mappings and sequences"),
                    "flatten the document; no mesh config kind nests this deeply",
                ))
            } else {
                Ok(depth + 1)
            }
        };
        Ok(match &n.data {
            YamlData::Value(s) => {
                let v = scalar(s);
                if let Value::String(s) = &v {
                    self.spend(n, s.len())?;
                }
                v
            }
            YamlData::Representation(s, _, _) => {
                self.spend(n, s.len())?;
                Value::String(s.to_string())
            }
            YamlData::Sequence(items) => {
                let depth = deeper(depth)?;
                let mut out = Vec::with_capacity(items.len());
                for (i, it) in items.iter().enumerate() {
                    out.push(self.convert(it, child(&path, format_args!("[{i}]")), depth)?);
                }
                Value::Array(out)
            }
            YamlData::Mapping(m) => {
                let depth = deeper(depth)?;
                let mut obj = serde_json::Map::new();
                for (k, v) in m.iter() {
                    let (key, cost) = match &k.data {
                        YamlData::Value(s) => (scalar_key(s), 0),
                        YamlData::Representation(s, _, _) => (s.to_string(), 0),
                        _ => (String::from("<complex key>"), 1),
                    };
                    self.spend(k, if cost > 0 { cost } else { key.len() + 1 })?;
                    let p = if path.as_deref().is_some_and(str::is_empty) {
                        (key.len() <= MAX_FIELD_PATH_BYTES).then(|| key.clone())
                    } else {
                        child(&path, format_args!(".{key}"))
                    };
                    let val = self.convert(v, p, depth)?;
                    obj.insert(key, val);
                }
                Value::Object(obj)
            }
            YamlData::Tagged(_, inner) => self.convert(inner, path, depth)?,
            YamlData::Alias(_) => return Err(alias_error(pos_of(n))),
            YamlData::BadValue => Value::Null,
        })
    }
}

fn alias_error(pos: Pos) -> SyntaxError {
    SyntaxError::new(
        pos,
        "YAML anchors and aliases (`&name`, `*name`) are not supported",
        "write the value out in full (Kubernetes and Istio never need anchors)",
    )
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::from(*i),
        Scalar::FloatingPoint(f) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

fn scalar_key(s: &Scalar<'_>) -> String {
    match scalar(s) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The lines of `text` with their 1-based numbers; YAML breaks lines at LF, CR and CRLF.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut number = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        number += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { usize::from(end < rest.len()) };
        rest = &rest[end + skip..];
        Some((number, line))
    })
}

/// 1-based character column of byte offset `at` in `line`.
fn column(line: &str, at: usize) -> usize {
    line.get(..at).map_or(at, |p| p.chars().count()) + 1
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Checks that run on the raw text before the parser sees it: characters, indentation, document
/// count, anchors and aliases. The indentation bound holds for every line whatever it contains,
/// so it is safe even where the light lexer below misjudges a line.
fn prescan(text: &str) -> Result<(), SyntaxError> {
    for (number, line) in lines(text) {
        if let Some((i, c)) = line.char_indices().find(|&(_, c)| is_forbidden(c)) {
            return Err(SyntaxError::new(
                Pos { line: number, column: column(line, i) },
                format!("control character U+{:04X} is not allowed in YAML", u32::from(c)),
                "the file looks binary or corrupted; mesh config is UTF-8 text",
            ));
        }
        let end = chain_end(line.as_bytes());
        if end > MAX_INDENT_COLUMN {
            return Err(SyntaxError::new(
                Pos { line: number, column: column(line, end) },
                format!("line is indented or nested {end} columns deep; the limit is {MAX_INDENT_COLUMN}"),
                format!("nest at most {MAX_DEPTH} levels"),
            ));
        }
    }
    Lexer::default().run(text)
}

fn is_forbidden(c: char) -> bool {
    // YAML's printable set: TAB, LF, CR, NEL and everything printable; BOMs are the parser's.
    matches!(c, '\0'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\x7f' | '\u{80}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}')
}

/// Byte column where the first node of a line starts once compact block indicators (`- `, `? `,
/// `: `), document markers and node properties are skipped, or of the last indicator when nothing
/// follows; 0 for blank and comment-only lines. Every block collection the parser opens on this
/// line starts at or before this column.
fn chain_end(line: &[u8]) -> usize {
    let mut i = line.iter().position(|&b| !is_blank(b)).unwrap_or(line.len());
    if i == line.len() || line[i] == b'#' {
        return 0;
    }
    loop {
        let rest = &line[i..];
        let token = match rest.first() {
            Some(b'-' | b'?' | b':') if rest.get(1).is_none_or(|&b| is_blank(b)) => 1,
            Some(b'-') if rest.starts_with(b"---") && rest.get(3).is_none_or(|&b| is_blank(b)) => 3,
            Some(b'!' | b'&') => rest.iter().position(|&b| is_blank(b)).unwrap_or(rest.len()),
            _ => return i,
        };
        let last = i;
        i += token;
        while line.get(i).is_some_and(|&b| is_blank(b)) {
            i += 1;
        }
        if i == line.len() || line[i] == b'#' {
            return last;
        }
    }
}

/// A light YAML lexer that finds anchors and aliases: it follows comments, quoted and block
/// scalars and flow brackets well enough to tell `*name` at the start of a node from a `*` inside
/// a string. Document markers reset it, so a misjudgement cannot outlive its document.
#[derive(Default)]
struct Lexer {
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<u8>,
    /// Inside a block scalar: lines indented more than this belong to it.
    block: Option<isize>,
    documents: usize,
    nodes: usize,
}

/// What the lexer stopped at (a byte offset in the line).
enum Stop {
    Alias(usize),
    Nodes(usize),
}

impl Lexer {
    fn run(&mut self, text: &str) -> Result<(), SyntaxError> {
        for (number, line) in lines(text) {
            let b = line.as_bytes();
            let marker = |m: &[u8]| b.starts_with(m) && b.get(3).is_none_or(|&c| is_blank(c));
            let mut i = 0;
            if marker(b"---") || marker(b"...") {
                *self = Lexer { documents: self.documents, nodes: self.nodes, ..Lexer::default() };
                if b[0] == b'.' {
                    continue;
                }
                self.documents += 1;
                if self.documents > MAX_DOCUMENTS {
                    return Err(too_many_documents(Pos { line: number, column: 1 }));
                }
                i = 3;
            }
            let indent = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
            if let Some(owner) = self.block {
                if indent == b.len() || indent as isize > owner {
                    continue;
                }
                self.block = None;
            }
            self.line(b, i).map_err(|stop| match stop {
                Stop::Alias(at) => alias_error(Pos { line: number, column: column(line, at) }),
                Stop::Nodes(at) => SyntaxError::new(
                    Pos { line: number, column: column(line, at) },
                    format!("more than {MAX_NODES} YAML nodes in one file"),
                    "split the config into several files",
                ),
            })?;
        }
        Ok(())
    }

    /// Counts a node starting at byte `at`.
    fn node(&mut self, at: usize) -> Result<(), Stop> {
        self.nodes += 1;
        if self.nodes > MAX_NODES { Err(Stop::Nodes(at)) } else { Ok(()) }
    }

    /// Lexes one line from byte `i`, counting the nodes that start on it.
    fn line(&mut self, b: &[u8], mut i: usize) -> Result<(), Stop> {
        // Column of the node that owns a block scalar starting on this line.
        let mut owner: isize = if i == 3 { -1 } else { 0 };
        let mut node_start = true;
        if let Some(q) = self.quote {
            match close_quote(b, 0, q) {
                Some(end) => {
                    self.quote = None;
                    i = end;
                    node_start = false;
                }
                None => return Ok(()),
            }
        } else if self.flow == 0 {
            owner = b.iter().position(|&c| c != b' ').unwrap_or(0) as isize;
        }
        while i < b.len() {
            let c = b[i];
            let next_blank = b.get(i + 1).is_none_or(|&n| is_blank(n));
            if is_blank(c) {
                i += 1;
                continue;
            }
            if c == b'#' && (i == 0 || is_blank(b[i - 1])) {
                return Ok(());
            }
            if node_start {
                match c {
                    b'"' | b'\'' => match self.node(i).map(|()| close_quote(b, i + 1, c))? {
                        Some(end) => {
                            i = end;
                            node_start = false;
                            continue;
                        }
                        None => {
                            self.quote = Some(c);
                            return Ok(());
                        }
                    },
                    b'*' | b'&' if !next_blank && !b",[]{}".contains(&b[i + 1]) => {
                        return Err(Stop::Alias(i));
                    }
                    b'!' => {
                        i += b[i..].iter().position(|&n| is_blank(n)).unwrap_or(b.len() - i);
                        continue;
                    }
                    b'|' | b'>' if self.flow == 0 => {
                        self.node(i)?;
                        self.block = Some(owner);
                        return Ok(());
                    }
                    b'-' | b'?' | b':' if next_blank => {
                        if c != b':' {
                            owner = i as isize;
                        }
                        i += 1;
                        continue;
                    }
                    _ => self.node(i)?,
                }
            }
            match c {
                b'[' | b'{' => {
                    self.flow += 1;
                    node_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if self.flow > 0 => node_start = true,
                b':' if next_blank || (self.flow > 0 && b",[]{}".contains(&b[i + 1])) => node_start = true,
                _ => {
                    if node_start {
                        owner = i as isize;
                    }
                    node_start = false;
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// Byte offset just past the quote closing a `q`-quoted scalar whose text starts at `from`.
fn close_quote(b: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 2,
            c if c == q => {
                if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Turns saphyr's "duplicated key" (reported at the second key) into an error naming both.
fn duplicate_key(text: &str, pos: Pos) -> SyntaxError {
    let lines: Vec<&str> = lines(text).take(pos.line).map(|(_, l)| l).collect();
    let key_of = |line: &str, col: usize| -> Option<String> {
        let start = line.char_indices().nth(col.checked_sub(1)?)?.0;
        let rest = &line[start..];
        let b = rest.as_bytes();
        let end = match b.first()? {
            q @ (b'"' | b'\'') => close_quote(b, 1, *q)?,
            _ => (0..b.len()).find(|&i| {
                b[i] == b':' && b.get(i + 1).is_none_or(|&n| is_blank(n) || b",}]".contains(&n))
            })?,
        };
        Some(rest[..end].trim_end().to_string())
    };
    let Some(key) = lines.last().and_then(|l| key_of(l, pos.column)) else {
        return SyntaxError::new(pos, "duplicate key in mapping", "remove one of the two entries");
    };
    let first = find_first(&lines, pos, &key, &key_of);
    let message = match first {
        Some(f) => format!(
            "duplicate key `{key}`: line {}:{} and line {}:{}",
            f.line, f.column, pos.line, pos.column
        ),
        None => format!("duplicate key `{key}` in mapping"),
    };
    SyntaxError::new(pos, message, "remove one of the two entries")
}

/// Where `key` first occurs in the mapping whose duplicate is at `pos`: earlier on the same line
/// (flow mappings), or above it at the same column (block mappings) before the mapping ends.
fn find_first(
    lines: &[&str],
    pos: Pos,
    key: &str,
    key_of: &dyn Fn(&str, usize) -> Option<String>,
) -> Option<Pos> {
    let last = lines.last()?;
    let before: String = last.chars().take(pos.column.saturating_sub(1)).collect();
    for (col, _) in before.char_indices().filter(|&(_, ch)| ch != ' ') {
        let col = before[..col].chars().count() + 1;
        let prev = col.checked_sub(2).and_then(|i| before.chars().nth(i));
        if matches!(prev, Some('{' | ',' | ' ')) && key_of(last, col).as_deref() == Some(key) {
            return Some(Pos { line: pos.line, column: col });
        }
    }
    for (idx, line) in lines.iter().enumerate().rev().skip(1) {
        let indent = line.chars().take_while(|&c| c == ' ').count();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if key_of(line, pos.column).as_deref() == Some(key) {
            return Some(Pos { line: idx + 1, column: pos.column });
        }
        let prefix: String = line.chars().take(pos.column.saturating_sub(1)).collect();
        let chain_only = prefix.split_whitespace().all(|t| t == "-" || t == "?");
        if indent + 1 < pos.column && !chain_only {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_values() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    x: \"1\"\n---\n---\nkind: Pod\n";
        let docs = parse(text).expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["metadata"]["labels"]["x"], "1");
        assert_eq!(docs[0].pos("metadata.labels.x"), Pos { line: 6, column: 8 });
        assert_eq!(docs[0].pos("metadata.labels.missing"), Pos { line: 6, column: 5 });
        assert_eq!(docs[1].value["kind"], "Pod");
        assert_eq!(docs[1].start.line, 9);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: c\n").expect_err("unterminated flow sequence");
        assert!(e.pos.line >= 1, "{e:?}");
    }

    #[test]
    fn chain_end_skips_compact_indicators() {
        assert_eq!(chain_end(b"    key: value"), 4);
        assert_eq!(chain_end(b"- - a: b"), 4);
        assert_eq!(chain_end(b"- - -"), 4);
        assert_eq!(chain_end(b"--- !tag &a - x"), 14);
        assert_eq!(chain_end(b"      # - - - - comment"), 0);
        assert_eq!(chain_end(b"         "), 0);
    }

    #[test]
    fn lexer_tells_aliases_from_stars_in_strings() {
        let ok = [
            "a: \"*all*\"\n",
            "a: '&b' # *c\n",
            "paths: [\"/api/*\", /x/*]\n",
            "a: x * y\n",
            "a: |\n  *not an alias\n  &nor this\nb: c\n",
            "a: \"multi\n  *line\"\nb: c\n",
            "a: 'it''s *fine'\n",
            "k: {x: \"*\", y: '*'}\n",
        ];
        for t in ok {
            assert!(prescan(t).is_ok(), "{t:?}");
            assert!(parse(t).is_ok(), "{t:?}");
        }
        let bad = ["a: &x 1\nb: *x\n", "- *x\n", "[*x]\n", "a: |\n  x\nb: *y\n", "--- &d\na: 1\n"];
        for t in bad {
            let e = prescan(t).expect_err(t);
            assert!(e.message.contains("anchors and aliases"), "{t:?}: {e}");
        }
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let e = parse("kind: Pod\nmetadata:\n  name: a\n  labels: {}\n  name: b\n").expect_err("dup");
        assert_eq!(e.message, "duplicate key `name`: line 3:3 and line 5:3");
        assert_eq!(e.pos, Pos { line: 5, column: 3 });
        let e = parse("a: {x: 1, y: 2, x: 3}\n").expect_err("dup");
        assert_eq!(e.message, "duplicate key `x`: line 1:5 and line 1:17");
        let e = parse("- a: 1\n  b: 2\n  a: 3\n").expect_err("dup");
        assert_eq!(e.message, "duplicate key `a`: line 1:3 and line 3:3");
    }

    #[test]
    fn long_keys_do_not_multiply_into_paths() {
        // Implicit keys are at most 1024 characters in YAML: two long ones make a long path.
        let (k1, k2) = ("k".repeat(600), "j".repeat(600));
        let text = format!("{k1}:\n  {k2}:\n    a: 1\n    b: [1, 2]\n");
        let docs = parse(&text).expect("parses");
        assert_eq!(docs[0].value[&k1][&k2]["b"][1], 2);
        assert_eq!(docs[0].positions.len(), 1, "only the short path is recorded");
        assert_eq!(docs[0].pos(&format!("{k1}.{k2}.b")), Pos { line: 2, column: 3 });
    }
}
