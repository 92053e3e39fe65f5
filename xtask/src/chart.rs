//! The Helm chart under deploy/helm/sluice, checked offline (Helm is not installable on this machine;
//! vagrant/chart-matches-manifests.sh makes the same comparison with real Helm in the VM).
//!
//! The check: every file the chart needs exists; Chart.yaml and values.yaml parse; the chart's
//! version and appVersion and the image tag equal the workspace version; every value is described
//! in the chart's README; and the default render equals deploy/rbac.yaml + deploy/daemonset.yaml
//! as parsed objects (comments, formatting and document order ignored).
//!
//! The render is done here by a small interpreter of the part of Helm's template language the chart
//! uses: text with `{{ }}` actions and their `{{-`/`-}}` whitespace trimming, comments, `if`/`else`/
//! `end`, fields of `.Values`, `.Release` and `.Chart`, string and integer literals, pipelines, and the
//! functions `quote`, `toYaml`, `indent`, `nindent`, `eq`, `ne` and `fail`, each with Go's and Sprig's
//! meaning. Anything else (another function, `range`, `with`, `include`, variables, parentheses, a
//! missing value, a number Go would print in exponent form) is an error naming the file and line,
//! never a guess: extend the interpreter, or leave that comparison to the VM script.
//! YAML is parsed by Python's PyYAML (a dependency of kubernetes-validate, which the manifest check
//! installs), and the parsed documents are compared here.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Map, Value};

use crate::cmd;

/// The chart, relative to the workspace root.
pub const CHART_DIR: &str = "deploy/helm/sluice";
/// Files the chart must have.
const REQUIRED: [&str; 6] = [
    "Chart.yaml",
    "values.yaml",
    "README.md",
    "templates/NOTES.txt",
    "templates/rbac.yaml",
    "templates/daemonset.yaml",
];
/// The plain manifests whose objects the default render must equal.
const MANIFESTS: [&str; 2] = ["deploy/rbac.yaml", "deploy/daemonset.yaml"];
/// `helm template sluice deploy/helm/sluice --namespace sluice-system`.
const RELEASE_NAME: &str = "sluice";
const RELEASE_NAMESPACE: &str = "sluice-system";

/// Runs every check of the chart; prints one line when it passes.
pub fn check() -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let dir = root.join(CHART_DIR);
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        bail!("{CHART_DIR}: missing {}", missing.join(", "));
    }
    let version = env!("CARGO_PKG_VERSION");
    let chart = single_doc(&dir.join("Chart.yaml"))?;
    for (field, want) in
        [("apiVersion", "v2"), ("name", "sluice"), ("version", version), ("appVersion", version)]
    {
        if chart[field].as_str() != Some(want) {
            bail!("{CHART_DIR}/Chart.yaml: {field} is {}, expected \"{want}\"", chart[field]);
        }
    }
    let values = single_doc(&dir.join("values.yaml"))?;
    if !values.is_object() {
        bail!("{CHART_DIR}/values.yaml is not a mapping");
    }
    if values["image"]["tag"].as_str() != Some(version) {
        bail!(
            "{CHART_DIR}/values.yaml: image.tag is {}, expected \"{version}\" (the image `cargo xtask image` builds)",
            values["image"]["tag"]
        );
    }
    let readme = std::fs::read_to_string(dir.join("README.md"))?;
    let undocumented: Vec<String> =
        leaf_paths(&values, "").into_iter().filter(|p| !readme.contains(&format!("`{p}`"))).collect();
    if !undocumented.is_empty() {
        bail!("{CHART_DIR}/README.md does not describe the values {}", undocumented.join(", "));
    }

    let ctx = Context::new(values.clone(), &chart);
    let templates = template_files(&dir)?;
    let notes = dir.join("templates/NOTES.txt");
    render_file(&notes, &ctx)?;
    let expected = manifest_docs(&root)?;
    let rendered = render_chart(&templates, &ctx)?;
    let diffs = compare(&expected, &rendered);
    if !diffs.is_empty() {
        bail!("the chart's default render differs from {}:\n  {}", MANIFESTS.join(" + "), diffs.join("\n  "));
    }

    // The comparison must be able to fail: a changed value must show up as a difference.
    let mut debug = values.clone();
    debug["logLevel"] = Value::String("debug".into());
    let changed = render_chart(&templates, &Context::new(debug, &chart))?;
    if compare(&expected, &changed).is_empty() {
        bail!(
            "the chart rendered with logLevel=debug compares equal to the manifests: the check proves nothing"
        );
    }
    // The conditional parts render too: a trust domain other than the agent's default is passed to it,
    // and a CA mode the agent does not have refuses to render.
    let mut td = values.clone();
    td["trustDomain"] = Value::String("example.org".into());
    let with_td = render_chart(&templates, &Context::new(td, &chart))?;
    let has_flag = with_td.iter().any(|d| {
        d["kind"] == "DaemonSet"
            && d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "--trust-domain=example.org"))
    });
    if !has_flag {
        bail!("the chart rendered with trustDomain=example.org does not pass --trust-domain=example.org");
    }
    let mut ca = values;
    ca["ca"]["mode"] = Value::String("vault".into());
    if render_chart(&templates, &Context::new(ca, &chart)).is_ok() {
        bail!("the chart rendered with ca.mode=vault, a mode the agent does not have");
    }

    eprintln!(
        "chart: {CHART_DIR} renders (offline, defaults) exactly the {} objects of {}",
        expected.len(),
        MANIFESTS.join(" + ")
    );
    Ok(())
}

/// The chart's manifest templates (every file of templates/ but NOTES.txt), sorted. A file the
/// interpreter would not treat as Helm does (helpers, other kinds) is an error.
fn template_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let tdir = dir.join("templates");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&tdir).with_context(|| format!("reading {}", tdir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name == "NOTES.txt" {
            continue;
        }
        if !p.is_file() || name.starts_with('_') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            bail!(
                "{}: the offline chart check renders plain *.yaml templates only (no helpers or \
                 subdirectories); extend xtask/src/chart.rs",
                p.display()
            );
        }
        files.push(p);
    }
    files.sort();
    Ok(files)
}

fn render_file(path: &Path, ctx: &Context) -> anyhow::Result<String> {
    let src = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    render(&src, ctx).with_context(|| format!("rendering {}", path.display()))
}

/// Renders every template and parses the result into its documents.
fn render_chart(templates: &[PathBuf], ctx: &Context) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for t in templates {
        let out = render_file(t, ctx)?;
        docs.extend(yaml_docs(&out).with_context(|| format!("parsing the render of {}", t.display()))?);
    }
    Ok(docs)
}

fn manifest_docs(root: &Path) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for m in MANIFESTS {
        let text = std::fs::read_to_string(root.join(m)).with_context(|| format!("reading {m}"))?;
        docs.extend(yaml_docs(&text).with_context(|| format!("parsing {m}"))?);
    }
    Ok(docs)
}

fn single_doc(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = yaml_docs(&text).with_context(|| format!("parsing {}", path.display()))?;
    if docs.len() != 1 {
        bail!("{}: expected one YAML document, found {}", path.display(), docs.len());
    }
    Ok(docs.remove(0))
}

/// The non-empty documents of a YAML stream, parsed by PyYAML (safe loader) and handed over as JSON.
fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
        json.dump(docs, sys.stdout, default=str)\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting python3 (PyYAML)")?;
    child.stdin.take().context("python3 stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("YAML does not parse: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    match serde_json::from_slice(&out.stdout)? {
        Value::Array(docs) => Ok(docs),
        other => bail!("unexpected parser output {other}"),
    }
}

/// Dotted paths of every leaf of a values tree (`image.tag`, `tolerations`; lists and empty maps
/// are leaves).
fn leaf_paths(v: &Value, prefix: &str) -> Vec<String> {
    match v {
        Value::Object(m) if !m.is_empty() && (prefix.is_empty() || !is_free_form(prefix)) => m
            .iter()
            .flat_map(|(k, v)| {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(v, &p)
            })
            .collect(),
        _ => vec![prefix.to_string()],
    }
}

/// Values whose keys are Kubernetes' own (documented as one value).
fn is_free_form(path: &str) -> bool {
    matches!(path, "resources" | "nodeSelector")
}

/// Identity of a Kubernetes object: apiVersion, kind, namespace, name.
fn object_key(d: &Value) -> String {
    let m = &d["metadata"];
    format!(
        "{} {} {}/{}",
        d["apiVersion"].as_str().unwrap_or("?"),
        d["kind"].as_str().unwrap_or("?"),
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("?")
    )
}

/// Differences between two sets of objects (matched by identity, order ignored), one line each.
fn compare(expected: &[Value], got: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let index = |docs: &[Value], what: &str, out: &mut Vec<String>| {
        let mut m = std::collections::BTreeMap::new();
        for d in docs {
            if m.insert(object_key(d), d.clone()).is_some() {
                out.push(format!("{what}: {} appears twice", object_key(d)));
            }
        }
        m
    };
    let want = index(expected, "manifests", &mut out);
    let have = index(got, "chart", &mut out);
    for (k, w) in &want {
        match have.get(k) {
            None => out.push(format!("{k}: in the manifests, not rendered by the chart")),
            Some(h) => diff_values(w, h, k, &mut out),
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("{k}: rendered by the chart, not in the manifests"));
    }
    out
}

fn diff_values(want: &Value, have: &Value, path: &str, out: &mut Vec<String>) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            let keys: std::collections::BTreeSet<&String> = w.keys().chain(h.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (w.get(k), h.get(k)) {
                    (Some(a), Some(b)) => diff_values(a, b, &p, out),
                    (Some(a), None) => out.push(format!("{p}: manifests {a}, chart has none")),
                    (None, Some(b)) => out.push(format!("{p}: chart {b}, manifests have none")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            for (i, (a, b)) in w.iter().zip(h).enumerate() {
                diff_values(a, b, &format!("{path}[{i}]"), out);
            }
        }
        _ if want != have => out.push(format!("{path}: manifests {want}, chart {have}")),
        _ => {}
    }
}

// ---- the template interpreter ----

/// The data a template sees: `.Values`, `.Release`, `.Chart`.
pub struct Context {
    root: Value,
}

impl Context {
    fn new(values: Value, chart: &Value) -> Context {
        let mut c = Map::new();
        for (field, key) in [("Name", "name"), ("Version", "version"), ("AppVersion", "appVersion")] {
            c.insert(field.into(), chart[key].clone());
        }
        let release = serde_json::json!({"Name": RELEASE_NAME, "Namespace": RELEASE_NAMESPACE});
        Context { root: serde_json::json!({"Values": values, "Release": release, "Chart": c}) }
    }
}

/// One piece of a lexed template.
#[derive(Debug)]
enum Piece {
    Text(String),
    /// An action's text between the delimiters (trim markers removed), and its line.
    Action(String, usize),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits a template into text and actions, applying Go's `{{- ` and ` -}}` trimming. Comments
/// (`{{/* */}}`) vanish.
fn lex(src: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    let line_of = |rest: &str| src[..src.len() - rest.len()].matches('\n').count() + 1;
    loop {
        let Some(open) = rest.find("{{") else {
            let t = if trim_next { rest.trim_start_matches(is_space) } else { rest };
            pieces.push(Piece::Text(t.to_string()));
            return Ok(pieces);
        };
        let line = line_of(&rest[open..]);
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let mut body = &rest[open + 2..];
        if body.starts_with('-') && body[1..].starts_with(is_space) {
            text = text.trim_end_matches(is_space);
            body = &body[2..];
        }
        pieces.push(Piece::Text(text.to_string()));
        let (inner, after) = if let Some(comment) = body.strip_prefix("/*") {
            let end = comment.find("*/").ok_or_else(|| anyhow!("line {line}: unclosed comment"))?;
            let tail = &comment[end + 2..];
            let close = tail.find("}}").ok_or_else(|| anyhow!("line {line}: unclosed action"))?;
            if !tail[..close].trim_start_matches(is_space).trim_start_matches('-').is_empty() {
                bail!("line {line}: text after a comment inside an action");
            }
            (&tail[..close], &tail[close + 2..])
        } else {
            let close = find_close(body).ok_or_else(|| anyhow!("line {line}: unclosed action"))?;
            (&body[..close], &body[close + 2..])
        };
        let right_trim = inner.ends_with('-') && inner[..inner.len() - 1].ends_with(is_space);
        if !body.starts_with("/*") {
            let inner = if right_trim { &inner[..inner.len() - 1] } else { inner };
            pieces.push(Piece::Action(inner.trim().to_string(), line));
        }
        trim_next = right_trim;
        rest = after;
    }
}

/// Position of the `}}` that closes an action, skipping string literals.
fn find_close(body: &str) -> Option<usize> {
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline, usize),
    If { cond: Pipeline, then: Vec<Node>, otherwise: Vec<Node>, line: usize },
}

/// `cmd | cmd | ...`; each command is words: a function and its arguments, or one operand.
#[derive(Debug)]
struct Pipeline(Vec<Vec<String>>);

/// An `if` being parsed: its condition and line, the branch so far, the else-branch once `else` came.
struct OpenIf {
    cond: Pipeline,
    line: usize,
    then: Vec<Node>,
    otherwise: Option<Vec<Node>>,
}

fn parse(pieces: Vec<Piece>) -> anyhow::Result<Vec<Node>> {
    let mut stack: Vec<OpenIf> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    fn current<'a>(top: &'a mut Vec<Node>, stack: &'a mut [OpenIf]) -> &'a mut Vec<Node> {
        match stack.last_mut() {
            Some(OpenIf { otherwise: Some(e), .. }) => e,
            Some(OpenIf { then, .. }) => then,
            None => top,
        }
    }
    for p in pieces {
        match p {
            Piece::Text(t) => current(&mut top, &mut stack).push(Node::Text(t)),
            Piece::Action(a, line) => {
                let first = a.split(is_space).next().unwrap_or_default();
                match first {
                    "if" => stack.push(OpenIf {
                        cond: pipeline(&a[2..], line)?,
                        line,
                        then: Vec::new(),
                        otherwise: None,
                    }),
                    "else" if a == "else" => match stack.last_mut() {
                        Some(OpenIf { otherwise: e @ None, .. }) => *e = Some(Vec::new()),
                        _ => bail!("line {line}: `else` outside an `if`"),
                    },
                    "end" if a == "end" => {
                        let open =
                            stack.pop().ok_or_else(|| anyhow!("line {line}: `end` outside an `if`"))?;
                        let node = Node::If {
                            cond: open.cond,
                            then: open.then,
                            otherwise: open.otherwise.unwrap_or_default(),
                            line: open.line,
                        };
                        current(&mut top, &mut stack).push(node);
                    }
                    "else" | "end" | "range" | "with" | "define" | "template" | "block" | "include"
                    | "break" | "continue" => {
                        bail!("line {line}: `{a}` is not supported by the offline renderer")
                    }
                    _ => current(&mut top, &mut stack).push(Node::Print(pipeline(&a, line)?, line)),
                }
            }
        }
    }
    if let Some(open) = stack.last() {
        bail!("line {}: `if` without `end`", open.line);
    }
    Ok(top)
}

fn pipeline(src: &str, line: usize) -> anyhow::Result<Pipeline> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let mut chars = src.chars().peekable();
    let flush = |word: &mut String, cmds: &mut Vec<Vec<String>>| {
        if !word.is_empty() {
            cmds.last_mut().expect("one command").push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                word.push(c);
                while let Some(c) = chars.next() {
                    word.push(c);
                    if c == '\\' {
                        word.extend(chars.next());
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '|' => {
                flush(&mut word, &mut cmds);
                cmds.push(Vec::new());
            }
            c if is_space(c) => flush(&mut word, &mut cmds),
            '(' | ')' | '$' | '`' | '\'' => {
                bail!("line {line}: `{c}` in `{src}` is not supported by the offline renderer")
            }
            c => word.push(c),
        }
    }
    flush(&mut word, &mut cmds);
    if cmds.iter().any(Vec::is_empty) {
        bail!("line {line}: empty command in `{src}`");
    }
    Ok(Pipeline(cmds))
}

/// Renders a template with Go text/template and Sprig semantics for the supported subset.
pub fn render(src: &str, ctx: &Context) -> anyhow::Result<String> {
    let nodes = parse(lex(src)?)?;
    let mut out = String::new();
    exec(&nodes, ctx, &mut out)?;
    Ok(out)
}

fn exec(nodes: &[Node], ctx: &Context, out: &mut String) -> anyhow::Result<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Print(p, line) => {
                let v = eval(p, ctx).with_context(|| format!("line {line}"))?;
                out.push_str(&print(&v).with_context(|| format!("line {line}"))?);
            }
            Node::If { cond, then, otherwise, line } => {
                let v = eval(cond, ctx).with_context(|| format!("line {line}"))?;
                exec(if truth(&v) { then } else { otherwise }, ctx, out)?;
            }
        }
    }
    Ok(())
}

const FUNCTIONS: [&str; 7] = ["quote", "toYaml", "indent", "nindent", "eq", "ne", "fail"];

fn eval(p: &Pipeline, ctx: &Context) -> anyhow::Result<Value> {
    let mut piped: Option<Value> = None;
    for words in &p.0 {
        let head = words[0].as_str();
        let v = if FUNCTIONS.contains(&head) {
            let mut args =
                words[1..].iter().map(|w| operand(w, ctx)).collect::<anyhow::Result<Vec<Value>>>()?;
            args.extend(piped.take());
            call(head, &args)?
        } else {
            if words.len() > 1 || piped.is_some() {
                bail!("`{head}` is not a function the offline renderer knows ({})", FUNCTIONS.join(", "));
            }
            operand(head, ctx)?
        };
        piped = Some(v);
    }
    piped.ok_or_else(|| anyhow!("empty pipeline"))
}

fn operand(w: &str, ctx: &Context) -> anyhow::Result<Value> {
    if let Some(path) = w.strip_prefix('.') {
        let mut v = &ctx.root;
        for seg in path.split('.') {
            v = v
                .get(seg)
                .ok_or_else(|| anyhow!("`{w}` is not set (the offline renderer needs every value)"))?;
        }
        return Ok(v.clone());
    }
    if w.starts_with('"') {
        return serde_json::from_str(w).with_context(|| format!("string literal {w}"));
    }
    if let Ok(n) = w.parse::<i64>() {
        return Ok(Value::from(n));
    }
    match w {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => bail!("`{w}` is not supported by the offline renderer"),
    }
}

fn call(f: &str, args: &[Value]) -> anyhow::Result<Value> {
    let arity = |n: usize| -> anyhow::Result<()> {
        if args.len() == n { Ok(()) } else { bail!("`{f}` takes {n} argument(s), got {}", args.len()) }
    };
    let int = |v: &Value| v.as_i64().ok_or_else(|| anyhow!("`{f}`: {v} is not an integer"));
    let string =
        |v: &Value| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("`{f}`: {v} is not a string"));
    Ok(match f {
        // Sprig: %q of the value's string form.
        "quote" => {
            arity(1)?;
            let s = print(&args[0])?;
            if s.chars().any(|c| c.is_control()) {
                bail!("`quote` of a string with control characters is not supported by the offline renderer");
            }
            Value::String(serde_json::to_string(&s)?)
        }
        "toYaml" => {
            arity(1)?;
            Value::String(to_yaml(&args[0]))
        }
        "indent" | "nindent" => {
            arity(2)?;
            let pad = " ".repeat(usize::try_from(int(&args[0])?)?);
            let s = format!("{pad}{}", string(&args[1])?.replace('\n', &format!("\n{pad}")));
            Value::String(if f == "nindent" { format!("\n{s}") } else { s })
        }
        "eq" | "ne" => {
            arity(2)?;
            let same = match (&args[0], &args[1]) {
                (Value::String(a), Value::String(b)) => a == b,
                (Value::Bool(a), Value::Bool(b)) => a == b,
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (a, b) => bail!("`{f}`: incompatible types for comparison ({a} and {b})"),
            };
            Value::Bool(same == (f == "eq"))
        }
        "fail" => {
            arity(1)?;
            bail!("fail: {}", string(&args[0])?)
        }
        _ => bail!("unknown function `{f}`"),
    })
}

/// Go's truth: false, 0, "", nil and empty collections are false.
fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// How a value is printed into the output (Go's fmt of Helm's values, which are strings, bools,
/// float64 numbers and nil; Helm prints nil as nothing).
fn print(v: &Value) -> anyhow::Result<String> {
    Ok(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        // Helm's values are float64: Go prints integers below 1e6 as digits, larger ones as 1e+06.
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.abs() < 1_000_000 => i.to_string(),
            _ => bail!(
                "the number {n} would print in Go's float64 form; not supported by the offline renderer"
            ),
        },
        Value::Array(_) | Value::Object(_) => bail!("printing a list or map needs toYaml"),
    })
}

/// YAML for a value, block style without a trailing newline, as Helm's toYaml. Strings and keys are
/// written as JSON strings (valid YAML double-quoted scalars), so the text differs from Helm's but
/// parses to the same value, which is what the check compares.
pub fn to_yaml(v: &Value) -> String {
    let mut lines = Vec::new();
    block(v, 0, &mut lines);
    lines.join("\n")
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        // serde_json's string form of a string, number, bool or null is valid YAML for the same value.
        other => other.to_string(),
    }
}

fn is_collection(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn block(v: &Value, indent: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                let key = Value::String(k.clone()).to_string();
                if is_collection(val) {
                    out.push(format!("{pad}{key}:"));
                    block(val, indent + 2, out);
                } else {
                    out.push(format!("{pad}{key}: {}", scalar(val)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_collection(item) {
                    // The item's block, indented past the dash, with the dash on its first line.
                    let mut inner = Vec::new();
                    block(item, indent + 2, &mut inner);
                    for (i, l) in inner.into_iter().enumerate() {
                        if i == 0 {
                            out.push(format!("{pad}- {}", &l[indent + 2..]));
                        } else {
                            out.push(l);
                        }
                    }
                } else {
                    out.push(format!("{pad}- {}", scalar(item)));
                }
            }
        }
        other => out.push(format!("{pad}{}", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx(values: Value) -> Context {
        Context::new(values, &json!({"name": "sluice", "version": "1.2.3", "appVersion": "1.2.3"}))
    }

    #[test]
    fn fields_and_trimming_follow_go_templates() {
        let c = ctx(json!({"a": {"b": "x"}, "n": 35, "t": true}));
        let src = "k: {{ .Values.a.b }}\nns: {{ .Release.Namespace }}\n  {{- /* gone */}}\nn: {{ .Values.n }} \
                   {{- \" tail\" }}\nv: {{ .Chart.AppVersion | quote }}\nb: {{ .Values.t }}\n{{- \"\\n\" -}}\n  end";
        assert_eq!(
            render(src, &c).expect("renders"),
            "k: x\nns: sluice-system\nn: 35 tail\nv: \"1.2.3\"\nb: true\nend"
        );
    }

    #[test]
    fn if_else_and_comparisons() {
        let c = ctx(json!({"td": "cluster.local", "empty": "", "list": []}));
        let src = "a\n  {{- if ne .Values.td \"cluster.local\" }}\n  - x\n  {{- else }}\n  - y\n  {{- end }}\nb\
                   {{ if .Values.empty }}E{{ end }}{{ if .Values.list }}L{{ else }}-{{ end }}";
        assert_eq!(render(src, &c).expect("renders"), "a\n  - y\nb-");
        let c = ctx(json!({"td": "example.org", "empty": "", "list": []}));
        assert_eq!(render(src, &c).expect("renders"), "a\n  - x\nb-");
    }

    #[test]
    fn to_yaml_with_nindent_parses_back_to_the_value() {
        // Keys in sorted order, so the text is the same whether or not serde_json keeps insertion order.
        let v = json!({"l": [[1, 2], "s: x", null], "r": {"limits": {"memory": "512Mi"}, "requests": {}},
                       "tolerations": [{"operator": "Exists"}, {"effect": "NoSchedule", "key": "a"}]});
        let c = ctx(v);
        let out = render("x:\n  {{- toYaml .Values | nindent 2 }}\n", &c).expect("renders");
        assert_eq!(
            out,
            "x:\n  \"l\":\n    - - 1\n      - 2\n    - \"s: x\"\n    - null\n  \"r\":\n    \"limits\":\n      \
             \"memory\": \"512Mi\"\n    \"requests\": {}\n  \"tolerations\":\n    - \"operator\": \"Exists\"\n    \
             - \"effect\": \"NoSchedule\"\n      \"key\": \"a\"\n"
        );
        assert_eq!(to_yaml(&json!({})), "{}");
        assert_eq!(to_yaml(&json!("s")), "\"s\"");
    }

    #[test]
    fn unsupported_constructs_and_missing_values_are_errors() {
        let c = ctx(json!({"a": 1, "big": 1000000, "m": {"k": "v"}}));
        for src in [
            "{{ .Values.missing }}",
            "{{ include \"x\" . }}",
            "{{ range .Values.m }}{{ end }}",
            "{{ $x := 1 }}",
            "{{ default \"a\" .Values.a }}",
            "{{ .Values.big }}",
            "{{ .Values.m }}",
            "{{ if .Values.a }}",
            "{{ end }}",
            "{{ fail \"no\" }}",
            "{{ eq .Values.a \"1\" }}",
            "{{ .Values.a",
        ] {
            assert!(render(src, &c).is_err(), "{src} rendered");
        }
    }

    #[test]
    fn comparison_reports_missing_extra_and_changed_fields() {
        let a = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "s", "namespace": "n"}});
        let b = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}});
        assert!(compare(&[a.clone(), b.clone()], &[b.clone(), a.clone()]).is_empty());
        let mut a2 = a.clone();
        a2["metadata"]["labels"] = json!({"x": "y"});
        let d = compare(&[a.clone(), b.clone()], &[a2]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.contains("n/s.metadata.labels: chart")), "{d:?}");
        assert!(d.iter().any(|l| l.contains("Namespace /n: in the manifests, not rendered")), "{d:?}");
    }

    #[test]
    fn every_values_leaf_is_listed() {
        let v = json!({"image": {"tag": "1"}, "resources": {"limits": {}}, "tolerations": [], "x": "y"});
        assert_eq!(leaf_paths(&v, ""), ["image.tag", "resources", "tolerations", "x"]);
    }
}
