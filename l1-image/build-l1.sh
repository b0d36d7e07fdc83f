#!/usr/bin/env bash
# Builds the L1 test VM of the nested-KVM tier (docs/vmm.md, "The L1 tier"): a kernel with KVM and
# AMD SVM (cached, `guest-image/build-kernel.sh --l1`) and a root filesystem (an uncompressed
# initramfs) holding what a node running myvm holds: containerd, runc, ctr and the CNI plugins
# (from this machine's Debian packages, with the shared libraries they link), QEMU with its
# firmware, myvm installed as `make install` lays it out (binaries, guest image, vhost-user
# daemons, /etc/myvm/config.toml with backend = "auto"), the test images as OCI tarballs, and the
# scripts of tests/l1/. Writes build/l1.env (MYVM_L1_KERNEL, MYVM_L1_INITRD).
#
# The root is rebuilt on every run (a few seconds): it holds this tree's binaries.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build"
. "$build/image.env"
. "$build/tools.env"

kernel_dir=$("$root/guest-image/build-kernel.sh" --l1)

work=$(mktemp -d "$build/l1-root.XXXXXX")
trap 'rm -rf "$work"' EXIT
r="$work/root"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/local/share/myvm,usr/local/libexec/myvm} \
         "$r"/{etc/myvm,proc,sys,dev,run,tmp,var/lib,root,opt/images,opt/myvm-tests,usr/lib/cni,usr/share/qemu}
chmod 1777 "$r/tmp"

# ELF files and the shared libraries they load, at the same paths as on this machine.
elfs=()
put() { # put SRC DEST [strip]: copies SRC to DEST in the root (following links)
    install -D -m 0755 "$1" "$r$2"
    [ "${3:-}" = strip ] && strip --strip-all "$r$2"
    elfs+=("$1")
}
for b in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr /usr/bin/qemu-system-x86_64; do
    put "$b" "$b"
done
put /usr/sbin/runc /usr/sbin/runc
put /usr/sbin/ip /usr/sbin/ip            # the shim runs `ip -j` (busybox's ip has no JSON)
put /usr/sbin/tc /usr/sbin/tc            # and `tc` (ingress qdisc, mirred redirect)
put /bin/bash /bin/bash                  # scripts/containerd-private.sh (with cksum)
put /usr/bin/cksum /usr/bin/cksum
for p in bridge host-local loopback; do put "/usr/lib/cni/$p" "/usr/lib/cni/$p"; done
for b in myvm containerd-shim-myvm-v2 myvm-vmm myvm-l1-cri; do
    put "$root/target/release/$b" "/usr/local/bin/$b" strip
done
put "$MYVM_VHOST_VSOCK" /usr/local/libexec/myvm/vhost-device-vsock
put "$MYVM_VIRTIOFSD" /usr/local/libexec/myvm/virtiofsd
install -m 0644 "$MYVM_KERNEL" "$r/usr/local/share/myvm/vmlinux"
install -m 0644 "$MYVM_INITRD" "$r/usr/local/share/myvm/initramfs.cpio"
cp -L /usr/share/qemu/qboot.rom /usr/share/qemu/bios-microvm.bin "$r/usr/share/qemu/"

for elf in "${elfs[@]}"; do
    deps=$(ldd "$elf" 2>&1) || { echo "$deps" | grep -q "not a dynamic executable" && continue; echo "build-l1: ldd $elf: $deps" >&2; exit 1; }
    if echo "$deps" | grep -q "not found"; then echo "build-l1: $elf: $deps" >&2; exit 1; fi
    echo "$deps" | grep -o '/[^ ]*\.so[^ ]*' || true
done | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$r"
done

# busybox for everything else: applets where no real binary was put.
install -m 0755 /bin/busybox "$r/bin/busybox"
for a in $(/bin/busybox --list); do
    [ -e "$r/bin/$a" ] || [ -e "$r/sbin/$a" ] || [ -e "$r/usr/sbin/$a" ] || [ -e "$r/usr/bin/$a" ] || ln -s busybox "$r/bin/$a"
done
ln -s /bin/busybox "$r/usr/bin/env"      # for #!/usr/bin/env
mknod -m 600 "$r/dev/console" c 5 1

cat > "$r/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
P
printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
printf '127.0.0.1 localhost\n' > "$r/etc/hosts"
: > "$r/etc/resolv.conf"
install -m 0644 "$root/docs/config.toml" "$r/etc/myvm/config.toml"

# The test images, as tests/src/containerd.rs builds them on the host.
"$root/scripts/mkimage.py" --name localhost/busybox:latest --cmd '["sh"]' --setuid-probe -o "$r/opt/images/busybox.tar"
"$root/scripts/mkimage.py" --name localhost/pause:latest \
    --cmd '["/bin/sh","-c","trap '"'"'exit 0'"'"' TERM INT; sleep 2147483647 & wait"]' -o "$r/opt/images/pause.tar"
cp "$root"/tests/l1/*.sh "$root/scripts/containerd-private.sh" "$r/opt/myvm-tests/"
install -m 0755 "$here/init" "$r/init"

( cd "$r" && find . | cpio -o -H newc --quiet ) > "$work/l1.cpio"
mv "$work/l1.cpio" "$build/l1-initramfs.cpio"
{
    echo "MYVM_L1_KERNEL=$kernel_dir/bzImage"
    echo "MYVM_L1_INITRD=$build/l1-initramfs.cpio"
} > "$build/l1.env"
echo "build-l1: kernel $kernel_dir/bzImage, root $(du -h "$build/l1-initramfs.cpio" | cut -f1)" >&2
