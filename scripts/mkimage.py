#!/usr/bin/env python3
"""Builds a small OCI image archive from the host's static busybox, for `ctr images import`.

There is no container registry here, so test and demo images are made locally:
  mkimage.py --name localhost/busybox:latest -o busybox.tar
  mkimage.py --name localhost/pause:latest --cmd '["/bin/sh","-c","trap \\"exit 0\\" TERM INT; sleep 2147483647 & wait"]' -o pause.tar
The archive is reproducible (sorted entries, mtime 0).
With --setuid-probe the image also has /bin/euid, setuid root, which exits with its effective
uid (mod 256): 0 where setuid works, as it does under runc without no_new_privs.
"""
import argparse, gzip, hashlib, io, json, os, struct, subprocess, sys, tarfile


def euid_probe():
    """A static x86-64 ELF: exit(geteuid())."""
    code = bytes([0xb8, 0x6b, 0, 0, 0,   # mov eax, SYS_geteuid
                  0x0f, 0x05,            # syscall
                  0x89, 0xc7,            # mov edi, eax
                  0xb8, 0x3c, 0, 0, 0,   # mov eax, SYS_exit
                  0x0f, 0x05])           # syscall
    base, headers = 0x400000, 64 + 56
    size = headers + len(code)
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3e, 1, base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


def add(tar, name, data=None, mode=0o755, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime, ti.type, ti.linkname = mode, 0, kind, link
    ti.uid = ti.gid = 0
    if data is not None:
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    else:
        tar.addfile(ti)


def layer(busybox, setuid_probe=False):
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    files = {}
    for d in ["bin", "dev", "etc", "proc", "root", "sys", "tmp", "var", "home", "usr", "usr/bin", "usr/sbin", "sbin"]:
        files[d] = ("dir", None)
    with open(busybox, "rb") as f:
        files["bin/busybox"] = ("file", f.read())
    for a in applets:
        if a != "busybox":
            files.setdefault("bin/" + a, ("link", "busybox"))
    if setuid_probe:
        files["bin/euid"] = ("setuid", euid_probe())
    files["etc/passwd"] = ("file", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    files["etc/group"] = ("file", b"root:x:0:\nnogroup:x:65534:\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            kind, val = files[name]
            if kind == "dir":
                add(tar, name, kind=tarfile.DIRTYPE, mode=0o1777 if name == "tmp" else 0o755)
            elif kind == "link":
                add(tar, name, kind=tarfile.SYMTYPE, mode=0o777, link=val)
            elif kind == "setuid":
                add(tar, name, val, mode=0o4755)
            else:
                add(tar, name, val, mode=0o755 if name.startswith("bin/") else 0o644)
    diff = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(diff)
    return diff, gz.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    add(tar, "blobs/sha256/" + digest, data, mode=0o644)
    return "sha256:" + digest


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="image reference, e.g. localhost/busybox:latest")
    p.add_argument("--cmd", default='["sh"]', help="JSON array: the image's Cmd")
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--setuid-probe", action="store_true", help="add /bin/euid, setuid root")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    diff, gz = layer(a.busybox, a.setuid_probe)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": json.loads(a.cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
    }, sort_keys=True).encode()
    tmp = a.output + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        cfg = blob(tar, config)
        lay = blob(tar, gz)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": lay, "size": len(gz)}],
        }, sort_keys=True).encode()
        man = blob(tar, manifest)
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": a.name, "io.containerd.image.name": a.name},
            "platform": {"architecture": "amd64", "os": "linux"}}]}, sort_keys=True).encode()
        add(tar, "index.json", index, mode=0o644)
    os.replace(tmp, a.output)


if __name__ == "__main__":
    sys.exit(main())
