//! `sluice analyze PATH...`: offline validation of mesh config files, reported like a compiler
//! (file:line:column, the source line with a caret, the hint) or as JSON. Exit status 0 when
//! clean, 1 with warnings only, 2 with errors.
use std::{collections::HashMap, path::PathBuf, process::ExitCode};

use crate::{
    cli::Output,
    config::{
        Diagnostics, Severity, Snapshot,
        files::{LoadError, read_documents, yaml_files_of},
    },
};

/// Runs the analysis and prints the report; returns the exit code.
pub fn run(paths: &[PathBuf], output: Output) -> ExitCode {
    if paths.is_empty() {
        eprintln!("sluice analyze: name at least one file or directory");
        return ExitCode::from(2);
    }
    let files = match yaml_files_of(paths) {
        Ok(f) => f,
        Err(LoadError::Dir { path, source }) => {
            eprintln!("sluice analyze: {}: {source}", path.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("sluice analyze: {e}");
            return ExitCode::from(2);
        }
    };
    let mut diags = Diagnostics::default();
    let docs = read_documents(&files, &mut diags);
    let snap = Snapshot::compile(&docs, &mut diags);
    snap.check_references(&docs, &mut diags);
    diags.0.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&diags.0).unwrap_or_else(|_| "[]".into()))
        }
        Output::Text => print_human(&diags, files.len(), docs.len()),
    }
    if diags.has_errors() {
        ExitCode::from(2)
    } else if diags.warnings().next().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_human(diags: &Diagnostics, files: usize, docs: usize) {
    let mut sources: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for d in &diags.0 {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut head = format!("{sev}: ");
        if let Some(o) = &d.object {
            head.push_str(&format!("{o}: "));
        }
        if let Some(f) = &d.field {
            head.push_str(&format!("`{f}`: "));
        }
        head.push_str(&d.message);
        println!("{head}");
        println!("  --> {}:{}:{}", d.file.display(), d.line, d.column);
        let lines = sources.entry(d.file.clone()).or_insert_with(|| {
            std::fs::read_to_string(&d.file)
                .map(|t| t.lines().map(str::to_string).collect())
                .unwrap_or_default()
        });
        if let Some(src) = d.line.checked_sub(1).and_then(|i| lines.get(i)) {
            let gutter = d.line.to_string().len();
            println!("{:gutter$} |", "");
            println!("{} | {src}", d.line);
            println!("{:gutter$} | {}^", "", " ".repeat(d.column.saturating_sub(1)));
        }
        if let Some(h) = &d.hint {
            println!("  = hint: {h}");
        }
        println!();
    }
    let errors = diags.errors().count();
    let warnings = diags.warnings().count();
    println!("{files} file(s), {docs} object(s): {errors} error(s), {warnings} warning(s)");
}
