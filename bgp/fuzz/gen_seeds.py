#!/usr/bin/env python3
"""Seeds of the BGP fuzz targets (seeds/decode, seeds/session), built byte by byte from the
RFCs so they owe nothing to our codec: a peer's OPEN (with and without 4-octet ASNs),
KEEPALIVE, UPDATEs (IPv4 NLRI, MP_REACH/MP_UNREACH IPv6, withdrawals, End-of-RIB),
ROUTE-REFRESH, NOTIFICATION; session scripts that establish, change routes, let timers run,
stop, restart and collide. Run: python3 bgp/fuzz/gen_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def msg(kind, body):
    return b"\xff" * 16 + struct.pack(">HB", 19 + len(body), kind) + body


def cap(code, value):
    return bytes([code, len(value)]) + value


def open_msg(asn=65000, four=True, hold=9, ident=(10, 0, 0, 1), gr=True):
    caps = [cap(1, struct.pack(">HBB", 1, 0, 1)), cap(1, struct.pack(">HBB", 2, 0, 1)), cap(2, b"")]
    if four:
        caps.append(cap(65, struct.pack(">I", asn)))
    if gr:
        caps.append(cap(64, struct.pack(">H", 120) + struct.pack(">HBB", 1, 1, 0x80) + struct.pack(">HBB", 2, 1, 0x80)))
    params = b"".join(bytes([2, len(c)]) + c for c in caps)
    my_as = asn if asn < 65536 else 23456
    return msg(1, struct.pack(">BHH4sB", 4, my_as, hold, bytes(ident), len(params)) + params)


def attr(flags, code, value):
    if len(value) > 255:
        return struct.pack(">BBH", flags | 0x10, code, len(value)) + value
    return bytes([flags, code, len(value)]) + value


def prefix(length, addr):
    return bytes([length]) + bytes(addr[: (length + 7) // 8])


def update(withdrawn=b"", attrs=b"", nlri=b""):
    return msg(2, struct.pack(">H", len(withdrawn)) + withdrawn + struct.pack(">H", len(attrs)) + attrs + nlri)


def path(four, asns):
    w = ">I" if four else ">H"
    return attr(0x40, 2, bytes([2, len(asns)]) + b"".join(struct.pack(w, a) for a in asns))


def v4_update(four=True):
    attrs = attr(0x40, 1, b"\x00") + path(four, [65000, 65100]) + attr(0x40, 3, bytes([10, 0, 0, 1]))
    attrs += attr(0x80, 4, struct.pack(">I", 5)) + attr(0xC0, 8, struct.pack(">HH", 65000, 100))
    return update(attrs=attrs, nlri=prefix(24, [10, 1, 0, 0]) + prefix(32, [192, 0, 2, 1]))


def v6_update(four=True):
    nh = bytes.fromhex("fd000000000000000000000000000001")
    reach = struct.pack(">HBB", 2, 1, 16) + nh + b"\x00" + prefix(64, list(bytes.fromhex("fd000244000100000000000000000000")))
    attrs = attr(0x40, 1, b"\x00") + path(four, [65000]) + attr(0x80, 14, reach)
    return update(attrs=attrs)


def v6_withdraw():
    unreach = struct.pack(">HB", 2, 1) + prefix(64, list(bytes.fromhex("fd000244000100000000000000000000")))
    return update(attrs=attr(0x80, 15, unreach))


KEEPALIVE = msg(4, b"")
EOR4 = update()
EOR6 = update(attrs=attr(0x80, 15, struct.pack(">HB", 2, 1)))
V4_WITHDRAW = update(withdrawn=prefix(24, [10, 1, 0, 0]))
REFRESH = msg(5, struct.pack(">HBB", 1, 0, 1))
CEASE = msg(3, bytes([6, 2]) + bytes([11]) + b"maintenance")
HOLD_EXPIRED = msg(3, bytes([4, 0]))


def chunks(stream, size=200):
    out = b""
    for i in range(0, len(stream), size):
        part = stream[i : i + size]
        out += bytes([0, len(part)]) + part
    return out


def op_time(secs):
    return bytes([1 | (secs << 2)])


def op_routes(mask):
    return bytes([2 | (mask << 2)])


def op_ctl(k):
    return bytes([3 | (k << 2)])


def established(four=True, asn=65000):
    return chunks(open_msg(asn=asn, four=four) + KEEPALIVE)


def main():
    four, two = True, False
    decode = {
        "open": open_msg(),
        "open-2octet": open_msg(four=False),
        "open-as4": open_msg(asn=4_200_000_002),
        "keepalive": KEEPALIVE,
        "update-v4": v4_update(four),
        "update-v4-2octet": v4_update(two),
        "update-v6": v6_update(four),
        "withdraw-v4": V4_WITHDRAW,
        "withdraw-v6": v6_withdraw(),
        "eor-v4": EOR4,
        "eor-v6": EOR6,
        "route-refresh": REFRESH,
        "cease": CEASE,
        "stream": open_msg() + KEEPALIVE + v4_update() + v6_update() + V4_WITHDRAW + EOR4 + EOR6,
    }
    session = {
        "establish-announce-withdraw": bytes([0]) + established() + chunks(v4_update() + v6_update() + EOR4 + EOR6)
        + op_time(3) + op_routes(0b000101) + op_time(3) + chunks(KEEPALIVE) + op_routes(0b111111)
        + chunks(V4_WITHDRAW + v6_withdraw() + REFRESH) + op_time(20),
        "passive-incoming": bytes([1 | 8]) + established() + op_routes(0b011011) + op_time(4) + chunks(KEEPALIVE) + op_time(30),
        "ibgp": bytes([2]) + chunks(open_msg(asn=65001) + KEEPALIVE) + op_routes(0b001001) + chunks(KEEPALIVE),
        "ibgp-as4": bytes([2 | 4]) + chunks(open_msg(asn=4_200_000_001) + KEEPALIVE) + op_routes(0b110011),
        "peer-2octet": bytes([0]) + established(four=False) + chunks(v4_update(two) + EOR4),
        "split-messages": bytes([0]) + chunks(open_msg() + KEEPALIVE + v4_update() + v6_update(), size=7),
        "stop-restart": bytes([16]) + established() + op_ctl(1) + op_time(2) + op_ctl(2) + op_time(2)
        + established() + op_ctl(0) + op_ctl(2) + op_time(5),
        "peer-closes": bytes([0]) + established() + op_ctl(3) + op_time(3) + op_time(3) + established(),
        "collision": bytes([0]) + chunks(open_msg()) + op_ctl(4) + chunks(open_msg(ident=(10, 0, 0, 9)) + KEEPALIVE)
        + op_time(1) + chunks(KEEPALIVE),
        "notification": bytes([0]) + established() + chunks(CEASE) + op_time(5) + established() + chunks(HOLD_EXPIRED),
        "hold-expires": bytes([0]) + established() + op_time(10) + op_time(63),
    }
    for name, seeds in [("decode", decode), ("session", session)]:
        d = os.path.join(HERE, "seeds", name)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            os.remove(os.path.join(d, old))
        for k, v in seeds.items():
            with open(os.path.join(d, k), "wb") as f:
                f.write(v)
    print(f"{len(decode)} decode seeds, {len(session)} session seeds")


main()
