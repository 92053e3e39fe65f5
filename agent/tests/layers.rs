//! The module layering of docs/ARCHITECTURE.md, checked: every `crate::<module>` path in a module's
//! code (comments excluded) must name a module of a lower layer. A new upward import fails here
//! with the file and the path, so the picture in the docs cannot drift from the code.
use std::{collections::BTreeSet, fs, path::Path};

/// (module, layer); a module may use modules of strictly lower layers only. Keep in step with the
/// table in docs/ARCHITECTURE.md.
const LAYERS: &[(&str, u8)] = &[
    ("shutdown", 0),
    ("limits", 0),
    ("identity", 0),
    ("redirect", 0),
    ("cni", 0),
    ("config", 1),
    ("telemetry", 2),
    ("policy", 3),
    ("tunnel", 3),
    ("conn", 4),
    ("proxy", 5),
    ("admin", 5),
    ("cli", 5),
    ("waypoint", 6),
    ("inspect", 6),
    ("analyze", 6),
    ("agent", 7),
    ("fuzzing", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The code of `text` without `//` comments (doc comments included), string literals' text and
/// char literals (`'"'` must not open a string).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace("'\\''", "' '").replace("'\"'", "' '").replace("'\\\"'", "' '");
            let mut out = String::new();
            let mut in_str = false;
            let mut prev = ' ';
            for (i, c) in l.char_indices() {
                if !in_str && c == '/' && l[i..].starts_with("//") {
                    break;
                }
                if c == '"' && prev != '\\' {
                    in_str = !in_str;
                }
                if !in_str {
                    out.push(c);
                }
                prev = c;
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `super::` paths that climb out of the file's top-level module to the crate root, rewritten as
/// `crate::` paths: a file `depth` modules below the crate root reaches the root with `depth`
/// `super::`s (`proxy/mod.rs` and `admin.rs` with one, `proxy/inbound.rs` with two).
fn resolve_super(code: &str, depth: usize) -> String {
    let root = "super::".repeat(depth);
    code.replace(&root, "crate::")
}

/// Ways to name the crate root that the path scan would not see.
fn aliases(code: &str) -> Vec<&'static str> {
    ["crate as ", "self as ", "crate::*", "crate::{self"].into_iter().filter(|a| code.contains(a)).collect()
}

/// Every top-level module named by a `crate::` path in `code`, including the members of
/// `use crate::{a, b::c, ...}` groups.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level members of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            if !item.trim().is_empty() {
                out.insert(head(&item));
            }
        } else {
            out.insert(head(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn head(path: &str) -> String {
    path.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let module = head(&rel.to_string_lossy());
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let Some(own) = layer(&module) else {
            violations.push(format!("{}: module `{module}` has no layer in LAYERS", rel.display()));
            continue;
        };
        checked += 1;
        let text = fs::read_to_string(f).expect("read");
        // Modules below the crate root: `proxy/mod.rs` and `admin.rs` are one, `proxy/inbound.rs` two.
        let parts = rel.components().count();
        let depth = if rel.ends_with("mod.rs") { parts - 1 } else { parts };
        // An inline `mod tests { .. }` (at the end of a file, by convention) is one level deeper.
        let text = code(&text);
        let code = match text.find("mod tests {") {
            Some(i) => {
                format!("{}\n{}", resolve_super(&text[..i], depth), resolve_super(&text[i..], depth + 1))
            }
            None => resolve_super(&text, depth),
        };
        for a in aliases(&code) {
            violations.push(format!("{}: `{a}` hides which modules are used; name them", rel.display()));
        }
        for used in used_modules(&code) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(l) => violations.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {l})",
                    rel.display()
                )),
                None => violations.push(format!("{}: `crate::{used}` is no known module", rel.display())),
            }
        }
    }
    assert!(checked > 50, "only {checked} files checked: is the source tree where this test expects it?");
    assert!(violations.is_empty(), "upward or unknown imports:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_resolves_super_to_the_root_and_flags_aliases() {
    // In `proxy/inbound.rs` (two below the root), `super::super::agent` is `crate::agent`.
    let c = resolve_super(&code("use super::super::agent::Pods;\nuse super::Proxy;"), 2);
    assert_eq!(used_modules(&c).into_iter().collect::<Vec<_>>(), vec!["agent"]);
    // In `admin.rs` (one below), `super::agent` is `crate::agent`.
    let c = resolve_super(&code("use super::agent::Pods;"), 1);
    assert_eq!(used_modules(&c).into_iter().collect::<Vec<_>>(), vec!["agent"]);
    assert_eq!(aliases("use crate as c;"), vec!["crate as "]);
    assert_eq!(aliases("use crate::*;"), vec!["crate::*"]);
    // A char literal holding a double quote opens no string.
    assert_eq!(
        used_modules(&code("let q = '\"'; use crate::agent;")).into_iter().collect::<Vec<_>>(),
        vec!["agent"]
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths_and_ignores_comments() {
    let text = "use crate::{config::{self, Snapshot}, policy};\n// crate::agent in a comment\nlet x = crate::tunnel::copy::splice;\nlet s = \"crate::waypoint\";";
    let used = used_modules(&code(text));
    assert_eq!(used.into_iter().collect::<Vec<_>>(), vec!["config", "policy", "tunnel"]);
}
