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
    )?;
    strip_debug_info()
}

/// Strips the DWARF sections from the eBPF object the agent embeds, keeping `.BTF`/`.BTF.ext`
/// (what the loader and the verifier use). bpf-linker needs DWARF to generate BTF, but nothing reads
/// it afterwards, and it is 92 % of the object since the programs carry the aya-log decision log
/// (3.9 MB -> 0.3 MB): the agent parses the embedded object at start, so every byte of it showed as
/// resident memory (idle RSS +3.7 MiB). Uses LLVM 22's llvm-objcopy (installed with the llvm-22
/// package `cargo xtask setup` brings for bpf-linker); without it the object stays as it is.
fn strip_debug_info() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LLVM_OBJCOPY");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let object = out.join("sluice-ebpf");
    if !object.is_file() {
        // aya-build skipped the eBPF build (AYA_BUILD_SKIP): nothing to strip.
        return Ok(());
    }
    let candidates = [
        std::env::var_os("LLVM_OBJCOPY").map(std::path::PathBuf::from),
        Some(std::path::PathBuf::from("/usr/lib/llvm-22/bin/llvm-objcopy")),
    ];
    let Some(objcopy) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
        println!("cargo:warning=llvm-objcopy (LLVM 22) not found: the eBPF object keeps its debug info");
        return Ok(());
    };
    let status = std::process::Command::new(&objcopy)
        .arg("--strip-debug")
        .arg(&object)
        .status()
        .with_context(|| format!("running {}", objcopy.display()))?;
    if !status.success() {
        return Err(anyhow!("{} --strip-debug {} failed: {status}", objcopy.display(), object.display()));
    }
    Ok(())
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}
