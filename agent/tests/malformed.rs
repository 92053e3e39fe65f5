//! Malformed mesh config, one test per class: every case ends in a diagnostic naming the file,
//! the line and column and what is wrong; never a panic, a stack overflow or unbounded memory.
//! The library front end (`config::files`, `config::yaml`) is exercised directly, on the test
//! thread's small default stack, and the `sluice analyze` binary on the same inputs.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sluice::config::{
    Diagnostics, Snapshot,
    files::read_documents,
    yaml::{self, MAX_DEPTH, MAX_DOCUMENTS, MAX_FILE_BYTES, MAX_INDENT_COLUMN, MAX_NODES},
};

/// Writes `bytes` as `name` in a fresh directory and runs the file front end and the compiler on
/// it, as `sluice analyze` does; returns the directory (kept alive) and every diagnostic rendered.
fn load(name: &str, bytes: &[u8]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    std::fs::write(&file, bytes).expect("write");
    let diags = diagnose(&file);
    (dir, diags)
}

fn diagnose(file: &Path) -> Vec<String> {
    let mut diags = Diagnostics::default();
    let docs = read_documents(&[file.to_path_buf()], &mut diags);
    Snapshot::compile(&docs, &mut diags);
    // Paths are absolute in diagnostics: keep them relative to the file's directory.
    let dir = file.parent().map(|d| format!("{}/", d.display())).unwrap_or_default();
    diags.0.iter().map(|d| d.to_string().replace(&dir, "")).collect()
}

/// The one error of `diags`, which must start with `want` (file:line:column: error: message).
fn one_error<'a>(diags: &'a [String], want: &str) -> &'a str {
    let errors: Vec<&String> = diags.iter().filter(|d| d.contains(": error: ")).collect();
    assert_eq!(errors.len(), 1, "want exactly one error, got {diags:#?}");
    assert!(errors[0].starts_with(want), "want {want:?}, got {:?}", errors[0]);
    errors[0]
}

/// `sluice analyze --output json PATH`: exit code and JSON diagnostics. A panic exits with 101, a
/// stack overflow or abort with a signal; both fail here.
fn analyze(path: &Path) -> (i32, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["analyze", "--output", "json"])
        .arg(path)
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "sluice panicked: {stderr}");
    let code = out.status.code().unwrap_or_else(|| panic!("sluice killed by a signal: {stderr}"));
    let json: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (code, json)
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";

#[test]
fn bad_yaml_is_a_syntax_error_at_its_position() {
    let (_d, diags) = load("bad.yaml", b"apiVersion: v1\nkind: Namespace\nmetadata: {name: [a, b}\n");
    one_error(&diags, "bad.yaml:3:");
    assert!(diags[0].contains(": error: YAML syntax error: "), "{diags:?}");
    assert!(diags[0].contains("(hint: fix the YAML syntax at this position)"), "{diags:?}");

    let (_d, diags) = load("tab.yaml", b"kind: Namespace\nmetadata:\n\tname: a\n");
    one_error(&diags, "tab.yaml:3:");
}

#[test]
fn wrong_types_name_the_field() {
    let text = format!("{NS}  labels:\n    enabled: true\n");
    let (_d, diags) = load("types.yaml", text.as_bytes());
    one_error(
        &diags,
        "types.yaml:6:14: error: Namespace/a: field `metadata.labels.enabled`: label values must be strings, found true",
    );

    let (_d, diags) = load("name.yaml", b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a]\n");
    one_error(
        &diags,
        "name.yaml:4:9: error: field `metadata.name`: must be a non-empty string, found [\"a\"]",
    );

    // A document that is not a mapping at all.
    let (_d, diags) = load("list.yaml", b"- just\n- a list\n");
    one_error(&diags, "list.yaml:1:1: error: field `kind`: is required");
}

#[test]
fn unknown_kinds_warn_and_are_ignored() {
    let (_d, diags) = load("unknown.yaml", b"apiVersion: v1\nkind: Frobnicator\nmetadata: {name: f}\n");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].starts_with(
            "unknown.yaml:2:7: warning: Frobnicator/f: field `kind`: unknown kind `Frobnicator` ignored"
        ),
        "{diags:?}"
    );
}

#[test]
fn duplicate_object_names_point_at_the_first() {
    let text = format!("{NS}---\n{NS}");
    let (_d, diags) = load("dup.yaml", text.as_bytes());
    let e = one_error(&diags, "dup.yaml:9:9: error: Namespace/a: field `metadata.name`: duplicate object");
    assert!(e.contains("first defined at ") && e.contains("dup.yaml:1"), "{e}");
}

#[test]
fn duplicate_mapping_keys_name_both_lines() {
    let (_d, diags) = load(
        "keys.yaml",
        b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {}\n  name: b\n",
    );
    one_error(&diags, "keys.yaml:6:3: error: duplicate key `name`: line 4:3 and line 6:3");

    let (_d, diags) = load("flow.yaml", b"kind: Namespace\nmetadata: {name: a, name: b}\n");
    one_error(&diags, "flow.yaml:2:21: error: duplicate key `name`: line 2:12 and line 2:21");

    let (_d, diags) = load("top.yaml", b"kind: Namespace\nmetadata: {name: a}\nkind: Pod\n");
    one_error(&diags, "top.yaml:3:1: error: duplicate key `kind`: line 1:1 and line 3:1");
}

#[test]
fn a_file_over_the_size_limit_is_rejected_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("huge.yaml");
    // 100 MiB, sparse: reading it would take seconds and the memory of the whole file.
    let f = std::fs::File::create(&file).expect("create");
    f.set_len(100 * 1024 * 1024).expect("set_len");
    drop(f);
    let t = std::time::Instant::now();
    let diags = diagnose(&file);
    assert!(t.elapsed().as_secs() < 2, "the size check must come before reading");
    one_error(
        &diags,
        &format!("huge.yaml:1:1: error: file is 104857600 bytes; the limit is {MAX_FILE_BYTES} bytes"),
    );
    assert!(diags[0].contains("(hint: split the config into several files)"), "{diags:?}");

    let (code, json) = analyze(&file);
    assert_eq!(code, 2);
    assert_eq!(json[0]["severity"], "error");
    assert_eq!(json[0]["message"], format!("file is 104857600 bytes; the limit is {MAX_FILE_BYTES} bytes"));
}

#[test]
fn text_over_the_size_limit_is_rejected_by_the_parser_too() {
    let text = "#".repeat(MAX_FILE_BYTES + 1);
    let e = yaml::parse(&text).expect_err("too large");
    assert_eq!(
        e.message,
        format!("file is {} bytes; the limit is {MAX_FILE_BYTES} bytes", MAX_FILE_BYTES + 1)
    );
}

#[test]
fn a_large_file_within_the_limit_parses() {
    // About 2 MiB of small objects: parsed, not rejected.
    let one =
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-NNNNN\n  labels: {team: payments}\n---\n";
    let text: String = (0..MAX_DOCUMENTS).map(|i| one.replace("NNNNN", &format!("{i:05}"))).collect();
    let docs = yaml::parse(&text).expect("parses");
    assert_eq!(docs.len(), MAX_DOCUMENTS);
}

#[test]
fn too_many_nodes_are_rejected_before_parsing() {
    // One-character items are the cheapest nodes to write and the dearest to hold.
    let text = format!("[{}1]\n", "1,".repeat(MAX_NODES));
    let t = std::time::Instant::now();
    let e = yaml::parse(&text).expect_err("too many nodes");
    assert!(t.elapsed().as_secs() < 5, "rejected before parsing");
    assert_eq!(e.message, format!("more than {MAX_NODES} YAML nodes in one file"));
    assert_eq!((e.pos.line, e.pos.column), (1, 2 * MAX_NODES));
    let text = "- 1\n".repeat(MAX_NODES + 1);
    let e = yaml::parse(&text).expect_err("too many nodes");
    assert_eq!((e.pos.line, e.pos.column), (MAX_NODES + 1, 3));
}

#[test]
fn too_many_documents_are_rejected() {
    let text = "---\na: 1\n".repeat(MAX_DOCUMENTS + 1);
    let (_d, diags) = load("docs.yaml", text.as_bytes());
    one_error(
        &diags,
        &format!(
            "docs.yaml:{}:1: error: more than {MAX_DOCUMENTS} documents in one file",
            2 * MAX_DOCUMENTS + 1
        ),
    );
}

#[test]
fn deep_flow_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{a: ", "[a: "] {
        let text = open.repeat(100_000);
        let e = yaml::parse(&text).expect_err(open);
        assert_eq!(e.pos.line, 1, "{open}: {e:?}");
        assert!(e.message.starts_with("YAML syntax error: recursion limit exceeded"), "{open}: {e:?}");
    }
    // Within the parser's own flow limit (255) but over ours: the exact check, at the node.
    let text = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    let e = yaml::parse(&text).expect_err("65 levels");
    assert_eq!(e.message, format!("nesting deeper than {MAX_DEPTH} levels of mappings and sequences"));
    assert_eq!((e.pos.line, e.pos.column), (1, MAX_DEPTH + 1));
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    yaml::parse(&ok).expect("64 levels are fine");
}

#[test]
fn deep_block_nesting_is_rejected_before_parsing() {
    // 100,000 nested block sequences on one line, the construct that overflows saphyr's stack.
    let (_d, diags) = load("dash.yaml", format!("{}x\n", "- ".repeat(100_000)).as_bytes());
    let e = one_error(
        &diags,
        &format!(
            "dash.yaml:1:{}: error: line is indented or nested {} columns deep; the limit is {MAX_INDENT_COLUMN}",
            2 * 100_000 + 1,
            2 * 100_000
        ),
    );
    assert!(e.contains(&format!("(hint: nest at most {MAX_DEPTH} levels)")), "{e}");

    // Complex keys and explicit values nest too.
    for chain in ["? ", ": - ", "? - "] {
        let e = yaml::parse(&format!("{}x\n", chain.repeat(100_000))).expect_err(chain);
        assert!(e.message.starts_with("line is indented or nested"), "{chain}: {e:?}");
    }

    // Deep indentation, one mapping per line.
    let text: String = (0..300).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    let e = yaml::parse(&text).expect_err("indented");
    assert_eq!((e.pos.line, e.pos.column), (MAX_INDENT_COLUMN + 2, MAX_INDENT_COLUMN + 2));
}

#[test]
fn nesting_within_the_column_limit_but_over_the_depth_limit_is_exact() {
    // 100 levels of block sequences in 200 columns: parsed (no overflow), then rejected exactly.
    let text = format!("{}x\n", "- ".repeat(100));
    let e = yaml::parse(&text).expect_err("too deep");
    assert_eq!(e.message, format!("nesting deeper than {MAX_DEPTH} levels of mappings and sequences"));
    assert_eq!((e.pos.line, e.pos.column), (1, 2 * MAX_DEPTH + 1));
    let text = format!("{}x\n", "- ".repeat(MAX_DEPTH));
    yaml::parse(&text).expect("64 levels are fine");
}

#[test]
fn anchors_and_aliases_are_rejected() {
    let text = format!(
        "{NS}  labels: &l {{app: a}}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: *l\n"
    );
    let (_d, diags) = load("alias.yaml", text.as_bytes());
    one_error(
        &diags,
        "alias.yaml:5:11: error: YAML anchors and aliases (`&name`, `*name`) are not supported (hint: write the value out in full",
    );
    let (_d, diags) = load("alias-only.yaml", b"kind: Namespace\nmetadata: *m\n");
    one_error(&diags, "alias-only.yaml:2:11: error: YAML anchors and aliases");
}

#[test]
fn billion_laughs_is_rejected_before_any_expansion() {
    let mut text =
        String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        text +=
            &format!("{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n");
    }
    let t = std::time::Instant::now();
    let e = yaml::parse(&text).expect_err("billion laughs");
    assert!(t.elapsed().as_secs() < 2);
    assert!(e.message.contains("anchors and aliases"), "{e:?}");
    assert_eq!((e.pos.line, e.pos.column), (1, 4));
}

#[test]
fn stars_and_ampersands_in_strings_are_not_aliases() {
    let text = "kind: Namespace\nmetadata:\n  name: a\n  annotations:\n    q: \"*all* & more\"\n    s: '&x *y'\n    p: a * b & c\n    b: |\n      *not an alias\n";
    let docs = yaml::parse(text).expect("parses");
    assert_eq!(docs[0].value["metadata"]["annotations"]["b"], "*not an alias\n");
}

#[test]
fn binary_junk_and_invalid_utf8_are_rejected_with_a_position() {
    let (_d, diags) = load("bin.yaml", b"kind: Namespace\nmetadata:\n  name: a\xff\xfe\n");
    one_error(
        &diags,
        "bin.yaml:3:10: error: file is not valid UTF-8 (byte 0xFF) (hint: mesh config is UTF-8 text; re-save the file as UTF-8)",
    );
    // Random-looking bytes: some invalid UTF-8 somewhere, reported, not a panic.
    let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (_d, diags) = load("junk.yaml", &junk);
    one_error(&diags, "junk.yaml:");
}

#[test]
fn nul_and_control_characters_are_rejected() {
    // saphyr would stop reading at the NUL and silently drop the rest of the file.
    let (_d, diags) = load("nul.yaml", b"kind: Namespace\nmetadata:\n  name: a\0\n  labels: {x: y}\n");
    one_error(
        &diags,
        "nul.yaml:3:10: error: control character U+0000 is not allowed in YAML (hint: the file looks binary or corrupted; mesh config is UTF-8 text)",
    );
    let (_d, diags) = load("esc.yaml", b"kind: Namespace\nmetadata: {name: \x1b[31ma}\n");
    one_error(&diags, "esc.yaml:2:18: error: control character U+001B is not allowed in YAML");
}

#[test]
fn cr_line_breaks_count_as_lines() {
    // YAML breaks lines at CR too: positions must agree with the parser's.
    let text = format!("kind: Namespace\rmetadata:\r{}x: 1\r", " ".repeat(MAX_INDENT_COLUMN + 1));
    let e = yaml::parse(&text).expect_err("deep line after CRs");
    assert_eq!(e.pos.line, 3, "{e:?}");
}

#[test]
fn the_binary_reports_every_malformed_file_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, Vec<u8>)] = &[
        ("a-syntax.yaml", b"a: [\n".to_vec()),
        ("b-deep.yaml", format!("{}x\n", "- ".repeat(100_000)).into_bytes()),
        ("c-flow.yaml", "[".repeat(100_000).into_bytes()),
        ("d-alias.yaml", b"a: &x 1\nb: *x\n".to_vec()),
        ("e-utf8.yaml", b"\xc3\x28: 1\n".to_vec()),
        ("f-nul.yaml", b"\0\0\0\0".to_vec()),
        ("g-dup.yaml", b"a: 1\na: 2\n".to_vec()),
    ];
    for (name, bytes) in cases {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    let (code, json) = analyze(dir.path());
    assert_eq!(code, 2, "{json:#?}");
    let files: Vec<String> = json
        .iter()
        .filter(|d| d["severity"] == "error")
        .map(|d| {
            PathBuf::from(d["file"].as_str().unwrap_or(""))
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    for (name, _) in cases {
        assert_eq!(files.iter().filter(|f| f == name).count(), 1, "{name}: {json:#?}");
    }
}

/// Istio's documented examples (tests/fixtures/istio) never produce an error: kinds sluice does
/// not enforce yet warn, and wiring them must keep the corpus clean.
#[test]
fn istio_corpus_has_no_errors() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/istio");
    let (code, json) = analyze(&corpus);
    let errors: Vec<&serde_json::Value> = json.iter().filter(|d| d["severity"] == "error").collect();
    assert!(errors.is_empty(), "the Istio corpus has errors: {errors:#?}");
    assert!(code <= 1, "exit code {code}");
    // Every file was read and every kind recognised (unknown kinds would warn as such).
    assert!(json.iter().all(|d| !d["message"].as_str().unwrap_or("").contains("unknown kind")), "{json:#?}");
}
