#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/seeds/<target>/ (committed; rerun after
changing an input format). Seeds are well-formed inputs that reach deep states quickly: a driver
that activates the device and publishes descriptor chains, good and bad handshake replies, agent
responses with every field set."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- virtio_mmio (see run() in fuzz_targets/virtio_mmio.rs) ----

WIDTHS = [1, 2, 4, 8]


def opcode(kind, width=4):
    for b in range(256):
        if b % 7 == kind and WIDTHS[(b >> 4) & 3] == width:
            return b
    raise ValueError((kind, width))


def reg_write(off, value, width=4):
    return bytes([opcode(0, width)]) + struct.pack("<H", off) + value.to_bytes(8, "little")[:width]


def reg_read(off, width=4):
    return bytes([opcode(1, width)]) + struct.pack("<H", off)


def mem_write(addr, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += bytes([opcode(2)]) + struct.pack("<IB", addr + i, len(chunk)) + chunk
    return out


def notify(q):
    return bytes([opcode(3), q])


def poll():
    return bytes([opcode(4)])


def irq_ack():
    return bytes([opcode(5), 0xff])


F_VERSION_1, F_INDIRECT, F_EVENT_IDX = 1 << 32, 1 << 28, 1 << 29
FEATURES = F_VERSION_1 | F_INDIRECT | F_EVENT_IDX | 1
# (size, desc, avail, used) per queue, in the two RAM regions [0, 64K) and [128K, 192K).
QUEUES = [(8, 0x1000, 0x2000, 0x3000), (16, 0x2_0000, 0x2_1000, 0x2_2000), (1, 0x4000, 0x4100, 0x4200)]


def init_macro(features=FEATURES, queues=QUEUES):
    out = bytes([opcode(6)]) + struct.pack("<Q", features)
    for size, desc, avail, used in queues:
        out += struct.pack("<HIIIB", size, desc, avail, used, 1)
    return out


def init_registers(features=FEATURES, queues=QUEUES):
    out = reg_write(0x070, 1) + reg_write(0x070, 3)
    out += reg_write(0x024, 0) + reg_write(0x020, features & 0xffffffff)
    out += reg_write(0x024, 1) + reg_write(0x020, features >> 32)
    out += reg_write(0x070, 0xb) + reg_read(0x070)
    for i, (size, desc, avail, used) in enumerate(queues):
        out += reg_write(0x030, i) + reg_read(0x034) + reg_write(0x038, size)
        out += reg_write(0x080, desc) + reg_write(0x084, 0)
        out += reg_write(0x090, avail) + reg_write(0x094, 0)
        out += reg_write(0x0a0, used) + reg_write(0x0a4, 0)
        out += reg_write(0x044, 1) + reg_read(0x044)
    return out + reg_write(0x070, 0xf) + reg_read(0x070)


NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def avail(heads, idx=None, flags=0):
    idx = len(heads) if idx is None else idx
    return struct.pack("<HH", flags, idx) + b"".join(struct.pack("<H", h) for h in heads)


def chains_q0():
    # 0 -> 1: a readable then a writable buffer; 2: an indirect table of two; 3: a loop 3 -> 3.
    table = desc(0x8000, 64, NEXT, 1) + desc(0x9000, 64, WRITE) + desc(0x5000, 32, INDIRECT)
    table += desc(0x8100, 16, NEXT, 3)
    indirect = desc(0x8000, 16, NEXT, 1) + desc(0x9100, 16, WRITE)
    return (mem_write(0x1000, table) + mem_write(0x5000, indirect)
            + mem_write(0x8000, bytes(range(64))) + mem_write(0x2000, avail([0, 2, 3])))


def chains_q1():
    # A buffer that crosses the end of the second region, and one in the hole.
    table = desc(0x2_fff0, 32, 0) + desc(0x1_8000, 16, WRITE)
    return mem_write(0x2_0000, table) + mem_write(0x2_1000, avail([0, 1]))


write("virtio_mmio", "activate-and-serve", init_macro() + chains_q0() + notify(0) + irq_ack()
      + chains_q1() + notify(1) + notify(2) + poll() + reg_read(0x060))
write("virtio_mmio", "registers-driver", init_registers() + chains_q0() + notify(0)
      + reg_read(0x060) + reg_write(0x064, 1) + reg_write(0x070, 0) + reg_read(0x070)
      + init_registers() + notify(0))
write("virtio_mmio", "reset-and-again", init_macro() + chains_q0() + notify(0)
      + reg_write(0x070, 0) + init_macro(F_VERSION_1) + chains_q0() + notify(0) + poll())
write("virtio_mmio", "config-space", b"".join(reg_read(0x100 + o, w) for o in range(0, 12, 2)
                                            for w in WIDTHS)
      + reg_write(0x100, 7, 8) + reg_read(0x0fc) + reg_read(0x0b0) + reg_read(0x000, 2)
      + reg_write(0x014, 1) + reg_read(0x010) + reg_write(0x014, 0) + reg_read(0x010))
write("virtio_mmio", "bad-rings", init_macro(queues=[(8, 0x0_fff0, 0x2001, 0x1_0000),
                                                      (16, 0x4_0000, 0, 0), (3, 0, 0, 0)])
      + reg_read(0x070) + reg_read(0x060) + irq_ack() + notify(0))
write("virtio_mmio", "event-idx-wrap", init_macro() + chains_q0()
      + mem_write(0x2000, avail([0, 2, 3] * 3, idx=0xffff)) + notify(0) + poll()
      + mem_write(0x2000 + 4 + 2 * 8, struct.pack("<H", 0x10)) + notify(0))

# ---- hybrid_vsock (mode byte, then the input of that mode) ----

write("hybrid_vsock", "ack-line", b"\x00OK 1073741824")
write("hybrid_vsock", "ack-max", b"\x00OK 4294967295")
write("hybrid_vsock", "handshake-ok-with-data", b"\x01" + struct.pack("<IB", 1024, 1) + b"OK 1073741824\nhello")
write("hybrid_vsock", "handshake-garbage", b"\x01" + struct.pack("<IB", 1024, 1) + b"HELLO there\n")
write("hybrid_vsock", "handshake-refused", b"\x01" + struct.pack("<IB", 1026, 1))
write("hybrid_vsock", "handshake-long", b"\x01" + struct.pack("<IB", 1, 1) + b"O" * 40 + b"\n")
write("hybrid_vsock", "stdio-ok", b"\x02OK 5\nOK\nsome output")
write("hybrid_vsock", "stdio-err", b"\x02OK 5\nERR no such process c1/-\n")
write("hybrid_vsock", "stdio-closed", b"\x02OK 5\nOK")

# ---- agent_messages (type byte, then the protobuf encoding) ----


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def vfield(num, value):
    return varint(num << 3) + varint(value)


def lfield(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def agent(kind, name, data):
    write("agent_messages", name, bytes([kind]) + data)


agent(0, "check", vfield(1, 1))
agent(1, "version", lfield(1, "0.1.0") + vfield(2, 1))
agent(2, "guest-details", lfield(1, "6.1.0") + lfield(2, "Linux version 6.1.0 (gcc)")
      + vfield(3, 256 << 20) + vfield(4, 200 << 20) + vfield(5, 2) + lfield(6, "0.1.0")
      + vfield(7, 123456789) + vfield(8, 4567890))
agent(3, "create-container", vfield(1, 42))
agent(4, "exec-process", vfield(1, -1))
agent(5, "wait-process", vfield(1, 137) + vfield(2, 1_700_000_000_123_456_789))
agent(5, "wait-process-negative-time", vfield(1, -2) + vfield(2, -1))
agent(6, "list-processes", lfield(1, b"".join(varint(p) for p in [1, 7, 300, -5])) + vfield(1, 9))
mem = (vfield(1, 1 << 20) + vfield(2, 0) + vfield(3, 4096) + vfield(4, 0) + vfield(5, 1)
       + vfield(6, 1) + vfield(7, 3)
       + lfield(8, lfield(1, "anon") + vfield(2, 12345))
       + lfield(8, lfield(1, "file") + vfield(2, 999))
       + lfield(8, lfield(1, "anon") + vfield(2, 1)))
cpu = b"".join(vfield(i, i * 1000) for i in range(1, 7))
io = b"".join(vfield(i, v) for i, v in enumerate([8, 0, 4096, 512, 3, 1], start=1))
agent(7, "stats", lfield(1, cpu) + lfield(2, mem) + lfield(3, vfield(1, 3) + vfield(2, 100))
      + lfield(4, io) + lfield(4, io))
exited = lfield(3, vfield(1, 5) + vfield(2, 137) + vfield(3, 1_700_000_000_000_000_000))
ev1 = lfield(1, "c1") + lfield(2, "") + exited
ev2 = lfield(1, "c1") + lfield(4, b"")
ev3 = lfield(1, "c2") + lfield(2, "e1") + exited + lfield(4, b"")
agent(8, "get-events", lfield(1, ev1) + lfield(1, ev2) + lfield(1, ev3))
agent(9, "event-exited", ev1)
agent(10, "empty-with-unknown-fields", vfield(7, 1) + lfield(9, "x") + b"\x1d\x01\x02\x03\x04")
