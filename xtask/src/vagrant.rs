//! The offline checks of vagrant/ (the VM runs on a workstation, not here): the Vagrantfile parses
//! (`ruby -c`) and every `vagrant/*.sh` passes shellcheck (all its checks, warnings and style
//! included). Both tools first prove they can fail here, on a broken Ruby file and on a script with
//! an unquoted expansion, so a tool that accepts anything cannot make the check pass.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

/// Scripts the VM needs (vagrant/README.md describes them); more `*.sh` files are linted too.
const SCRIPTS: [&str; 3] = ["provision.sh", "smoke.sh", "chart-matches-manifests.sh"];

fn ruby_check(file: &std::path::Path) -> Command {
    let mut c = Command::new("ruby");
    c.arg("-c").arg(file);
    c
}

fn shellcheck(files: &[PathBuf]) -> Command {
    let mut c = Command::new("shellcheck");
    // Follow `source` of sibling files; report everything (default severity: style).
    c.args(["--external-sources", "--source-path=SCRIPTDIR"]).args(files);
    c
}

pub fn check() -> anyhow::Result<()> {
    setup::ensure_setup_packages(&["ruby", "shellcheck"])?;
    let dir = cmd::workspace_root().join("vagrant");
    let vagrantfile = dir.join("Vagrantfile");
    let missing: Vec<&str> = std::iter::once("Vagrantfile")
        .chain(SCRIPTS)
        .chain(["README.md"])
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!("vagrant/: missing {}", missing.join(", "));
    }
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();

    // Both checks must be able to fail.
    let probe = std::env::temp_dir().join(format!("sluice-vagrant-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe)?;
    let bad_rb = probe.join("Vagrantfile");
    let bad_sh = probe.join("bad.sh");
    std::fs::write(&bad_rb, "Vagrant.configure(\"2\") do |config|\n  config.vm.box = \"x\"\n")?;
    std::fs::write(&bad_sh, "#!/usr/bin/env bash\ndir=$1\nrm -rf $dir/cache\n")?;
    let ruby_probe = ruby_check(&bad_rb).output().context("running ruby");
    let sc_probe = shellcheck(std::slice::from_ref(&bad_sh)).output().context("running shellcheck");
    let _ = std::fs::remove_dir_all(&probe);
    if ruby_probe?.status.success() {
        bail!("`ruby -c` accepted a Vagrantfile with a missing `end`: the check would prove nothing");
    }
    if sc_probe?.status.success() {
        bail!("shellcheck accepted `rm -rf $dir/cache` (unquoted): the check would prove nothing");
    }

    cmd::run(&mut ruby_check(&vagrantfile)).context("vagrant/Vagrantfile does not parse")?;
    cmd::run(&mut shellcheck(&scripts)).context("vagrant/*.sh: shellcheck found problems")?;
    eprintln!("vagrant: Vagrantfile parses, {} script(s) pass shellcheck", scripts.len());
    Ok(())
}
