#!/usr/bin/env bash
# Builds the myvm guest kernel (PVH-bootable vmlinux) from Debian's linux-source-6.1 with
# tinyconfig + kernel.fragment, with the patches in patches/ applied. The result is cached
# machine-wide, keyed by a hash of its inputs (kernel source package version, fragment, patches,
# this script), so a rebuild only happens when one changes.
#
# Usage: build-kernel.sh        -> prints the path of the cached guest kernel directory (vmlinux)
#        build-kernel.sh --l1   -> the same for the L1 test kernel (bzImage): the guest's fragment
#                                  plus ../l1-image/kernel.fragment (KVM, KVM_AMD, ACPI, 2 UARTs),
#                                  the kernel of the nested-KVM test tier (docs/vmm.md)
# Env:   MYVM_CACHE (default /var/cache/myvm), MYVM_JOBS (default nproc)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${MYVM_CACHE:-/var/cache/myvm}
jobs=${MYVM_JOBS:-$(nproc)}
tarball=/usr/src/linux-source-6.1.tar.xz

fragments=("$here/kernel.fragment") image=vmlinux name=kernel
case "${1:-}" in
"") ;;
--l1) fragments+=("$here/../l1-image/kernel.fragment") image=bzImage name=l1-kernel ;;
*) echo "usage: $0 [--l1]" >&2; exit 2 ;;
esac

[ -f "$tarball" ] || { echo "build-kernel: $tarball missing (apt-get install linux-source-6.1)" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$srcver"; cat "${fragments[@]}" "$here/build-kernel.sh" "$here"/patches/*.patch; } | sha256sum | cut -c1-16)
out="$cache/$name-$key"

if [ -f "$out/$image" ] && [ -f "$out/release" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/$name-build.XXXXXX")
tmpout=
trap 'rm -rf "$work" ${tmpout:+"$tmpout"}' EXIT
start=$(date +%s)
echo "build-kernel: building linux $srcver $image (key $key) in $work, this takes 10-15 min on 2 cores" >&2
# The fragments merged into one: a later fragment's line for an option replaces an earlier one's.
fragment="$work/fragment"
cat "${fragments[@]}" | awk '
    /^CONFIG_/ { opt = $0; sub(/=.*/, "", opt) }
    /^# CONFIG_.* is not set/ { opt = $2 }
    /^CONFIG_|^# CONFIG_.* is not set/ { if (!(opt in at)) order[++n] = opt; at[opt] = $0; next }
    END { for (i = 1; i <= n; i++) print at[order[i]] }' > "$fragment"
tar -C "$work" -xf "$tarball"
src="$work/linux-source-6.1"
cd "$src"
for p in "$here"/patches/*.patch; do
    patch -p1 --forward --quiet < "$p" >&2 || { echo "build-kernel: $p does not apply" >&2; exit 1; }
done
make -s ARCH=x86_64 tinyconfig >&2
./scripts/kconfig/merge_config.sh -m .config "$fragment" >&2
make -s ARCH=x86_64 olddefconfig >&2

# Every option the fragment asks for must have survived olddefconfig (a missing dependency drops it),
# and every option it turns off must still be off (a `select` elsewhere can turn it back on).
missing=0
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qx -- "$line" .config || { echo "build-kernel: fragment wants $line, .config has: $(grep -- "^${line%%=*}=" .config || echo unset)" >&2; missing=1; } ;;
    "# CONFIG_"*" is not set")
        # An option the fragment turns off must stay off (another option may select it).
        opt=${line#\# }; opt=${opt%% *}
        if grep -q -- "^$opt=" .config; then echo "build-kernel: fragment turns off $opt, .config has: $(grep -- "^$opt=" .config)" >&2; missing=1; fi ;;
    esac
done < "$fragment"
[ "$missing" = 0 ] || exit 1

make -s ARCH=x86_64 -j"$jobs" "$image" >&2
release=$(make -s ARCH=x86_64 kernelrelease)

tmpout=$(mktemp -d "$cache/$name-out.XXXXXX")
if [ "$image" = vmlinux ]; then
    strip --strip-debug -o "$tmpout/vmlinux" vmlinux
else
    cp arch/x86/boot/bzImage "$tmpout/bzImage"
fi
cp .config "$tmpout/config"
echo "$release" > "$tmpout/release"
echo "$(( $(date +%s) - start ))" > "$tmpout/build-seconds"
rm -rf "$out"
mv "$tmpout" "$out"
tmpout=
chmod 755 "$out"
echo "build-kernel: done in $(cat "$out/build-seconds") s: $out/$image ($release)" >&2
echo "$out"
