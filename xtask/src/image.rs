//! `cargo xtask image`: the container image as an OCI archive, built on this machine with no
//! registry access. The `sluice` binary is linked statically (glibc with `crt-static`, so the base
//! can be empty: `FROM scratch`, deploy/Containerfile), the image is built by buildah with a private
//! storage under target/image, and the archive is then checked: its layers are unpacked and the
//! binary inside must answer `--version` with this workspace's version.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `target/image/sluice-VERSION.oci.tar` and checks it; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    setup::run()?;
    setup::ensure_packages(&[("buildah", "builds the OCI image offline, FROM scratch")])?;
    let root = cmd::workspace_root();
    // xtask and the agent share the workspace's version.
    let version = env!("CARGO_PKG_VERSION");

    // A static binary: the flags apply to the x86_64 target only, not to build scripts or the
    // nested eBPF build.
    let mut build =
        cmd::cargo_cmd(&["build", "--release", "-p", "sluice", "--bin", "sluice", "--target", TARGET]);
    build.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
    cmd::run(&mut build).context("building the static sluice binary")?;
    let bin = root.join("target").join(TARGET).join("release/sluice");
    let ldd = Command::new("ldd").arg(&bin).output().context("running ldd")?;
    let says = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    if !(says.contains("not a dynamic executable") || says.contains("statically linked")) {
        bail!(
            "{} is not statically linked (ldd: {}); the image has no libraries",
            bin.display(),
            says.trim()
        );
    }

    let dir = root.join("target/image");
    let context = dir.join("context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&bin, context.join("sluice")).context("copying the binary into the build context")?;
    // The release profile keeps line tables for profiling; the image does not need them (symbols
    // stay, so panics still name functions).
    cmd::run(Command::new("strip").arg("--strip-debug").arg(context.join("sluice"))).context("strip")?;
    let tag = format!("localhost/sluice:{version}");
    let archive = dir.join(format!("sluice-{version}.oci.tar"));
    let _ = std::fs::remove_file(&archive);
    cmd::run(
        buildah(&dir)
            .args(["build", "--layers=false", "-f"])
            .arg(root.join("deploy/Containerfile"))
            .args(["--build-arg", &format!("VERSION={version}"), "-t", &tag])
            .arg(&context),
    )
    .context("buildah build")?;
    cmd::run(
        buildah(&dir)
            .arg("push")
            .arg(&tag)
            .arg(format!("oci-archive:{}:sluice:{version}", archive.display())),
    )
    .context("buildah push to an OCI archive")?;

    check(&archive, version)?;
    eprintln!(
        "image: {} (sluice:{version}); load it with `podman load -i` or `ctr images import`",
        archive.display()
    );
    Ok(archive)
}

/// buildah with storage kept under target/image (vfs: works on any filesystem, needs no fuse).
fn buildah(dir: &Path) -> Command {
    let mut c = Command::new("buildah");
    c.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"]);
    c
}

/// Unpacks `archive`'s layers and runs the binary inside with `--version`.
pub fn check(archive: &Path, version: &str) -> anyhow::Result<()> {
    let work = archive.with_extension("check");
    let _ = std::fs::remove_dir_all(&work);
    let (oci, rootfs) = (work.join("oci"), work.join("rootfs"));
    std::fs::create_dir_all(&oci)?;
    std::fs::create_dir_all(&rootfs)?;
    cmd::run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&oci))
        .context("unpacking the archive")?;
    let blob = |digest: &str| -> anyhow::Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").with_context(|| format!("digest {digest}: not sha256"))?;
        Ok(oci.join("blobs/sha256").join(hex))
    };
    let json = |p: &Path| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    };
    let index = json(&oci.join("index.json"))?;
    let manifest_digest =
        index["manifests"][0]["digest"].as_str().context("index.json names no manifest")?.to_string();
    let manifest = json(&blob(&manifest_digest)?)?;
    let layers = manifest["layers"].as_array().context("the manifest has no layers")?;
    if layers.is_empty() {
        bail!("the image has no layers");
    }
    for l in layers {
        let d = l["digest"].as_str().context("a layer without a digest")?;
        cmd::run(Command::new("tar").arg("-xf").arg(blob(d)?).arg("-C").arg(&rootfs))
            .with_context(|| format!("unpacking layer {d}"))?;
    }
    let path = "usr/local/bin/sluice";
    let out = Command::new(rootfs.join(path))
        .arg("--version")
        .output()
        .with_context(|| format!("running /{path} from the image"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    let want = format!("sluice {version}");
    if !out.status.success() || said.trim() != want {
        bail!("/{path} in the image answered {:?} to --version, expected {want:?}", said.trim());
    }
    // The CNI plugin copy answers the CNI VERSION command as a container runtime would ask it.
    let path = "opt/sluice/cni/sluice-cni";
    let out = Command::new(rootfs.join(path))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .with_context(|| format!("running /{path} from the image"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    let ok = serde_json::from_str::<serde_json::Value>(said.trim())
        .is_ok_and(|v| v["supportedVersions"].as_array().is_some_and(|a| !a.is_empty()));
    if !out.status.success() || !ok {
        bail!("/{path} in the image answered {:?} to CNI_COMMAND=VERSION", said.trim());
    }
    std::fs::remove_dir_all(&work)?;
    eprintln!(
        "image: checked: the archive's binary answers `sluice {version}` to --version, its CNI copy to VERSION"
    );
    Ok(())
}
