//! Compiles the eBPF programs (`ebpf/`, crate `sluice-ebpf`) with aya-build so the agent embeds the
//! object built from source in the same build. Needs the nightly toolchain with rust-src and
//! bpf-linker on PATH: `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed while locating the sluice-ebpf crate")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "sluice-ebpf")
        .ok_or_else(|| anyhow!("the workspace has no sluice-ebpf package (expected at ebpf/)"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sluice-ebpf manifest {} has no parent", ebpf.manifest_path))?;
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH; the agent embeds eBPF programs compiled from ebpf/. \
             Run `cargo xtask setup` once (installs LLVM 22, bpf-linker and the nightly rust-src)"
        ));
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "sluice-ebpf", root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}
