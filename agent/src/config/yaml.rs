//! YAML documents with positions: each document becomes a `serde_json::Value` plus an index from
//! field path (`spec.selector.matchLabels`) to its line and column, so every later check can point
//! at the exact place in the file.
use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

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

/// A YAML syntax error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses every document of `text`. Empty documents are skipped.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError {
        pos: Pos { line: e.marker().line(), column: e.marker().col() + 1 },
        message: e.info().to_string(),
    })?;
    let mut out = Vec::new();
    for d in docs {
        let mut positions = BTreeMap::new();
        let start = pos_of(&d);
        let value = convert(&d, String::new(), &mut positions);
        if value.is_null() {
            continue;
        }
        out.push(Document { value, start, positions });
    }
    Ok(out)
}

fn pos_of(n: &MarkedYaml<'_>) -> Pos {
    Pos { line: n.span.start.line(), column: n.span.start.col() + 1 }
}

fn convert(n: &MarkedYaml<'_>, path: String, positions: &mut BTreeMap<String, Pos>) -> Value {
    if !path.is_empty() {
        positions.insert(path.clone(), pos_of(n));
    }
    match &n.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(s, _, _) => Value::String(s.to_string()),
        YamlData::Sequence(items) => Value::Array(
            items.iter().enumerate().map(|(i, it)| convert(it, format!("{path}[{i}]"), positions)).collect(),
        ),
        YamlData::Mapping(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in m.iter() {
                let key = match &k.data {
                    YamlData::Value(s) => scalar_key(s),
                    YamlData::Representation(s, _, _) => s.to_string(),
                    _ => String::from("<complex key>"),
                };
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                let val = convert(v, child, positions);
                obj.insert(key, val);
            }
            Value::Object(obj)
        }
        YamlData::Tagged(_, inner) => convert(inner, path, positions),
        YamlData::Alias(_) | YamlData::BadValue => Value::Null,
    }
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
}
