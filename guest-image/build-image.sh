#!/usr/bin/env bash
# Builds the guest image: kernel (cached, see build-kernel.sh), the static agent, and the
# initramfs (cached by a hash of agent + busybox + this script + mkinitramfs.py). Links the results
# as build/vmlinux and build/initramfs.cpio and writes build/env (paths for tests and `myvm`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${MYVM_CACHE:-/var/cache/myvm}
target=x86_64-unknown-linux-gnu
busybox=/bin/busybox

kernel_dir=$("$here/build-kernel.sh")

echo "build-image: building the static agent" >&2
# libseccomp is linked statically too (libseccomp-dev ships libseccomp.a).
( cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static \
      LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu cargo build --quiet --release --locked \
      --target "$target" -p myvm-agent )
agent_unstripped="$root/target/$target/release/myvm-agent"
agent="$root/target/$target/release/myvm-agent.stripped"
strip --strip-all -o "$agent" "$agent_unstripped"
if ldd "$agent" >/dev/null 2>&1 && ! ldd "$agent" 2>&1 | grep -q "statically linked"; then
    echo "build-image: $agent is not statically linked" >&2
    exit 1
fi

key=$(cat "$agent" "$busybox" "$here/mkinitramfs.py" "$here/build-image.sh" | sha256sum | cut -c1-16)
initrd="$cache/initramfs-$key.cpio"
if [ ! -f "$initrd" ]; then
    python3 "$here/mkinitramfs.py" --agent "$agent" --busybox "$busybox" -o "$initrd.tmp.$$"
    mv "$initrd.tmp.$$" "$initrd"
    # Keep the cache small: only the newest few initramfs images.
    ls -t "$cache"/initramfs-*.cpio 2>/dev/null | tail -n +6 | xargs -r rm -f
fi

mkdir -p "$root/build"
ln -sfn "$kernel_dir/vmlinux" "$root/build/vmlinux"
ln -sfn "$initrd" "$root/build/initramfs.cpio"
cp "$kernel_dir/release" "$root/build/kernel-release"
{
    echo "MYVM_KERNEL=$kernel_dir/vmlinux"
    echo "MYVM_INITRD=$initrd"
    echo "MYVM_KERNEL_RELEASE=$(cat "$kernel_dir/release")"
} > "$root/build/image.env"
echo "build-image: kernel $(cat "$kernel_dir/release") $(du -h "$kernel_dir/vmlinux" | cut -f1), initramfs $(du -h "$initrd" | cut -f1)" >&2
