#!/usr/bin/env bash
# Installs what myvm needs on a Debian 12 host, only what is missing (idempotent):
#  - Debian packages (kernel source, QEMU, containerd, runc, CNI plugins, busybox, build deps)
#  - the vhost-user daemons vhost-device-vsock and virtiofsd, cargo-installed into a machine-wide
#    cache keyed by crate + version (MYVM_CACHE, default /var/cache/myvm)
# Prints nothing on stdout but `KEY=path` lines for the Makefile (tools.env) when asked with --env.
# Optional, only for `make fuzz`: `deps.sh --cargo-fuzz` installs just cargo-fuzz (same cache, no
# Debian packages) and prints its path.
set -euo pipefail

cache=${MYVM_CACHE:-/var/cache/myvm}
VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
CARGO_FUZZ_VERSION=0.13.2

apt_pkgs=(linux-source-6.1 protobuf-compiler flex bison bc libelf-dev libssl-dev cpio python3 qemu-system-x86 busybox-static
          libseccomp-dev libcap-ng-dev containerd runc containernetworking-plugins pkg-config xz-utils
          iproute2 iptables util-linux procps strace bsdutils patch)
# `--cargo-fuzz` needs none of them (libFuzzer only needs the C++ compiler the build already has).
[ "${1:-}" = "--cargo-fuzz" ] && apt_pkgs=()

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# cargo_tool CRATE VERSION BIN -> path of the installed binary (cached)
cargo_tool() {
    local crate=$1 version=$2 bin=$3
    local root="$cache/tools/$crate-$version"
    if [ ! -x "$root/bin/$bin" ]; then
        echo "deps: cargo install $crate $version (once per machine, a few minutes)" >&2
        local tmp
        tmp=$(mktemp -d "$cache/tools/.install.XXXXXX")
        cargo install --locked --quiet --root "$tmp" --version "$version" "$crate" >&2 \
            || cargo install --quiet --root "$tmp" --version "$version" "$crate" >&2
        rm -rf "$root"
        mv "$tmp" "$root"
    fi
    # mktemp made it 0700; daemons that drop root (vhost-device-vsock) must reach their binary.
    chmod go+rx "$root"
    echo "$root/bin/$bin"
}

mkdir -p "$cache/tools"
if [ "${1:-}" = "--cargo-fuzz" ]; then
    cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz
    exit 0
fi
vsock=$(cargo_tool vhost-device-vsock "$VSOCK_VERSION" vhost-device-vsock)
virtiofsd=$(cargo_tool virtiofsd "$VIRTIOFSD_VERSION" virtiofsd)

if [ "${1:-}" = "--env" ]; then
    echo "MYVM_VHOST_VSOCK=$vsock"
    echo "MYVM_VIRTIOFSD=$virtiofsd"
fi
