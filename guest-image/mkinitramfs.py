#!/usr/bin/env python3
"""Writes the myvm guest initramfs: a reproducible newc cpio archive.

Entries are sorted, owned by root, with mtime 0 and inode numbers assigned in order, so the same
inputs always give the same bytes. Device nodes are written into the archive directly (no mknod
on the build host needed).

usage: mkinitramfs.py --agent PATH --busybox PATH -o OUT
"""
import argparse
import os
import stat
import sys

DIRS = ["bin", "dev", "etc", "mnt", "proc", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin"]
# name -> (mode, major, minor)
NODES = {"dev/console": (stat.S_IFCHR | 0o600, 5, 1), "dev/null": (stat.S_IFCHR | 0o666, 1, 3)}


def entry(ino, name, mode, data=b"", rdev=(0, 0), nlink=1):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    out = b"070701" + b"".join(b"%08X" % f for f in fields) + name_b
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True, help="static myvm-agent binary (becomes /init)")
    p.add_argument("--busybox", required=True, help="static busybox (debug shell, /bin/sh)")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()

    items = {}  # name -> (mode, data, rdev)
    for d in DIRS:
        items[d] = (stat.S_IFDIR | 0o755, b"", (0, 0))
    for name, (mode, major, minor) in NODES.items():
        items[name] = (mode, b"", (major, minor))
    for name, path in (("init", a.agent), ("bin/busybox", a.busybox)):
        with open(path, "rb") as f:
            items[name] = (stat.S_IFREG | 0o755, f.read(), (0, 0))
    items["bin/sh"] = (stat.S_IFLNK | 0o777, b"busybox", (0, 0))

    tmp = a.output + ".tmp"
    with open(tmp, "wb") as out:
        for ino, name in enumerate(sorted(items), start=1):
            mode, data, rdev = items[name]
            out.write(entry(ino, name, mode, data, rdev, nlink=2 if stat.S_ISDIR(mode) else 1))
        out.write(entry(len(items) + 1, "TRAILER!!!", 0))
    os.replace(tmp, a.output)


if __name__ == "__main__":
    sys.exit(main())
