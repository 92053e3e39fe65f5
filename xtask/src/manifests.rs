//! Offline, strict validation of the Kubernetes manifests under deploy/ against the Kubernetes
//! OpenAPI schemas shipped in the `kubernetes-validate` Python package (no cluster, no network).
//! Strict: an unknown field (a typo) is an error. The check proves it can fail by first
//! validating a manifest with a misspelt field, which must be rejected.
//! Then the Helm chart under deploy/helm/sluice: its default render must be these manifests
//! (`crate::chart`).
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// The validator release (its version is the newest Kubernetes schema it ships).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// The Kubernetes versions the manifests are checked against: the oldest minor still in common
/// managed-Kubernetes support, and the newest the validator ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

/// Installs the validator if missing (pip, pinned).
pub fn ensure_validator() -> anyhow::Result<()> {
    let have = cmd::output(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]))
        .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE_VERSION);
    if !have {
        crate::setup::pip_install("kubernetes-validate", KUBERNETES_VALIDATE_VERSION)?;
    }
    Ok(())
}

fn validate(version: &str, files: &[PathBuf]) -> Command {
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", version]).args(files);
    c
}

/// Validates every `*.yaml` under deploy/ (not recursing into a Helm chart's templates, which are
/// not plain YAML).
pub fn check() -> anyhow::Result<()> {
    ensure_validator()?;
    let dir = cmd::workspace_root().join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no manifests in {}", dir.display());
    }
    // The check must be able to fail: a misspelt field has to be rejected.
    let probe = std::env::temp_dir().join(format!("sluice-manifest-probe-{}.yaml", std::process::id()));
    std::fs::write(
        &probe,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: probe\n  namespce: typo\n",
    )?;
    let strict = validate(KUBERNETES_VERSIONS[0], std::slice::from_ref(&probe)).output();
    let _ = std::fs::remove_file(&probe);
    if strict.context("running kubernetes-validate")?.status.success() {
        bail!("kubernetes-validate accepted a misspelt field: the manifest check would prove nothing");
    }
    for v in KUBERNETES_VERSIONS {
        cmd::run(&mut validate(v, &files))
            .with_context(|| format!("deploy/ manifests do not validate against Kubernetes {v}"))?;
    }
    eprintln!(
        "manifests: {} file(s) valid against Kubernetes {} (strict)",
        files.len(),
        KUBERNETES_VERSIONS.join(" and ")
    );
    // After the validator's install: the chart check parses YAML with its PyYAML.
    crate::chart::check().context("the Helm chart (deploy/helm/sluice)")
}
