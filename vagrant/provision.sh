#!/usr/bin/env bash
# Provisions the sluice VM (Debian 12, run as root by `vagrant up` / `vagrant provision`):
#   - Debian packages: Docker (kind's node runtime), skopeo (OCI archive -> docker archive for kind),
#     tcpdump and tshark (the wire check), python3 with PyYAML (the chart comparison), build tools;
#   - pinned binaries, each checked against its published SHA-256: kind, kubectl, helm;
#   - the Rust toolchain (rustup, stable; `cargo xtask` adds nightly rust-src and bpf-linker);
#   - then builds the image: `cargo xtask image` -> target/image/sluice-<version>.oci.tar, and the
#     static `sluice` binary (CLI for the smoke suite) under target/x86_64-unknown-linux-gnu/release.
# Idempotent: tools already at the pinned version are kept; the image is always rebuilt.
# Usage: provision.sh [REPO_DIR]   (default /home/vagrant/sluice)
set -euo pipefail

REPO=${1:-/home/vagrant/sluice}
KIND_VERSION=${KIND_VERSION:-v0.27.0}
KUBECTL_VERSION=${KUBECTL_VERSION:-v1.32.2}
HELM_VERSION=${HELM_VERSION:-v3.17.3}

log() { printf '==> %s\n' "$*"; }
die() {
    printf 'provision: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root"
[[ -f $REPO/Cargo.toml ]] || die "$REPO is not the sluice repository (is the rsync folder synced?)"
export DEBIAN_FRONTEND=noninteractive

# LLVM 22 (bpf-linker, installed by `cargo xtask setup`) comes from bookworm-security.
if ! grep -rqs 'bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-security to the APT sources"
    cat >/etc/apt/sources.list.d/sluice-debian-security.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

log "Debian packages"
apt-get update -q
apt-get install -y -q --no-install-recommends \
    ca-certificates curl git rsync jq build-essential pkg-config \
    docker.io skopeo tcpdump tshark python3 python3-yaml
systemctl enable --now docker
# Multi-node kind needs more inotify instances than Debian's default (kind's known-issues page).
cat >/etc/sysctl.d/90-sluice-kind.conf <<'SYSCTL'
fs.inotify.max_user_watches = 524288
fs.inotify.max_user_instances = 512
SYSCTL
sysctl -q --system

# Downloads URL to DEST after checking it against the SHA-256 published at SHA_URL (the first word
# of that file), and makes it executable.
fetch_checked() {
    local url=$1 sha_url=$2 dest=$3 tmp want have
    tmp=$(mktemp)
    curl -fsSL --retry 3 -o "$tmp" "$url"
    want=$(curl -fsSL --retry 3 "$sha_url" | awk '{print $1}')
    have=$(sha256sum "$tmp" | awk '{print $1}')
    if [[ -z $want || $want != "$have" ]]; then
        rm -f "$tmp"
        die "checksum mismatch for $url (published '$want', got '$have')"
    fi
    install -m 0755 "$tmp" "$dest"
    rm -f "$tmp"
}

if ! kind version 2>/dev/null | grep -q "kind $KIND_VERSION "; then
    log "kind $KIND_VERSION"
    base=https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION
    fetch_checked "$base/kind-linux-amd64" "$base/kind-linux-amd64.sha256sum" /usr/local/bin/kind
fi

if ! kubectl version --client 2>/dev/null | grep -q "Client Version: $KUBECTL_VERSION$"; then
    log "kubectl $KUBECTL_VERSION"
    base=https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/amd64
    fetch_checked "$base/kubectl" "$base/kubectl.sha256" /usr/local/bin/kubectl
fi

if ! helm version --short 2>/dev/null | grep -q "^$HELM_VERSION+"; then
    log "helm $HELM_VERSION"
    tarball=helm-$HELM_VERSION-linux-amd64.tar.gz
    tmpdir=$(mktemp -d)
    fetch_checked "https://get.helm.sh/$tarball" "https://get.helm.sh/$tarball.sha256sum" "$tmpdir/$tarball"
    tar -xzf "$tmpdir/$tarball" -C "$tmpdir" linux-amd64/helm
    install -m 0755 "$tmpdir/linux-amd64/helm" /usr/local/bin/helm
    rm -rf "$tmpdir"
fi

log "Rust toolchain"
export PATH=/root/.cargo/bin:$PATH
if ! command -v rustup >/dev/null; then
    curl --proto '=https' --tlsv1.2 -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
fi
rustup toolchain install stable --profile minimal
rustup default stable

log "building the image (cargo xtask image; the first run also builds bpf-linker: expect 20-40 minutes)"
cd "$REPO"
cargo xtask image

version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n1)
for f in "target/image/sluice-$version.oci.tar" target/x86_64-unknown-linux-gnu/release/sluice; do
    [[ -f $f ]] || die "$REPO/$f was not built"
done
log "ready: kind $KIND_VERSION, kubectl $KUBECTL_VERSION, helm $HELM_VERSION, image sluice:$version"
log "run the smoke suite: vagrant ssh -c 'sudo $REPO/vagrant/smoke.sh'"
