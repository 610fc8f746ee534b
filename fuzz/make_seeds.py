#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/: real messages of every kind the
decoders take, encoded as the Rust code encodes them (protobuf per agent/src/wire/mod.rs,
CBOR as ciborium writes the queue's serde structs, the packaged example configs).

Run it after a format change: `python3 fuzz/make_seeds.py`. The offer's ed25519 signature is
real if the `cryptography` package is installed, else a dummy one (the decoders run the
same; only the "valid signature" branch needs a real one).
"""
import base64
import hashlib
import json
import os
import shutil
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- protobuf (proto3: zero values are not written) ---
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_uint(tag, n):
    return varint(tag << 3) + varint(n) if n else b""


def f_bool(tag, b):
    return f_uint(tag, 1 if b else 0)


def f_bytes(tag, data, always=False):
    if isinstance(data, str):
        data = data.encode()
    if not data and not always:
        return b""
    return varint(tag << 3 | 2) + varint(len(data)) + data


def msg(*fields):
    return b"".join(fields)


def record(seq, ts, source, topic, payload, key=None, headers=()):
    return msg(
        f_uint(1, seq), f_uint(2, ts), f_bytes(3, source), f_bytes(4, topic),
        f_bytes(5, key, always=True) if key is not None else b"",
        *[f_bytes(6, msg(f_bytes(1, k), f_bytes(2, v))) for k, v in headers],
        f_bytes(7, payload),
    )


RECORDS = [
    dict(ts=1764000000000000000, source="app/http", topic="app",
         payload=b'{"level":"info","n":1}', key=b"host-1",
         headers=[("path", "/var/log/app.log"), ("peer", "10.0.0.7:5141")]),
    dict(ts=1764000000000000001, source="app/file", topic="app", payload=b"plain text line"),
    dict(ts=1764000000000000002, source="app/file", topic="app", payload=b"\xff\xfe\x00\x80"),
    dict(ts=1764000000000000003, source="app/file", topic="app", payload=b""),
]


def batch(first):
    return msg(f_uint(1, 7), *[
        f_bytes(2, record(first + i, r["ts"], r["source"], r["topic"], r["payload"],
                          r.get("key"), r.get("headers", ())))
        for i, r in enumerate(RECORDS)
    ])


MODULE = b"\0asm\x01\0\0\0"


VECTORS = b'{"payload":{"a":1},"key":"k","headers":{"h":"v"}}\nplain\n'
SEQ = 1_767_225_600_000


def signed_offer(pipeline="app", version="v2"):
    # The v2 message of control::signed_message: module hash, pipeline, version, seq and
    # the vectors' hash.
    digest = hashlib.sha256(MODULE).hexdigest()
    vectors = hashlib.sha256(VECTORS).hexdigest()
    message = (f"dataweaver-module-v2\n{digest}\n{pipeline}\n{version}\n{SEQ}\n{vectors}"
               .encode())
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization
        k = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        sig = k.sign(message)
        pub = k.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)
    except ImportError:
        sig, pub = bytes(64), bytes(32)
    key = "ed25519:" + base64.b64encode(pub).decode()
    return dict(pipeline=pipeline, version=version, module=MODULE, signature=sig, key=key,
                vectors=VECTORS, sha256=digest, vectors_sha256=vectors, seq=SEQ)


def offer_msg(o):
    return msg(f_bytes(1, o["pipeline"]), f_bytes(2, o["version"]), f_bytes(3, o["module"]),
               f_bytes(4, o["signature"]), f_bytes(5, o["key"]), f_bytes(6, o["vectors"]),
               f_uint(7, o["seq"]))


def frame(tag, body):
    return f_bytes(tag, body, always=True)


OFFER = signed_offer()
PUSH = msg(f_bytes(1, "push"), f_bytes(2, "app"), f_bytes(3, offer_msg(OFFER)),
           f_bytes(4, "edge-1"))

put("agent_frames", "hello", frame(1, msg(f_uint(1, 1), f_bytes(2, "3f2a9c41d07e4b8a"),
                                          f_bytes(3, "0.1.0"))))
put("agent_frames", "batch", frame(2, batch(41)))
put("agent_frames", "confirm", frame(3, msg(f_uint(1, 44))))
put("agent_frames", "resolve", frame(4, msg(f_uint(1, 40), f_uint(2, 44))))
put("agent_frames", "control-hello", frame(5, msg(f_bytes(1, msg(
    f_bytes(1, "app"), f_bytes(2, "redact"), f_bytes(3, "v1"), f_bytes(4, "ab" * 32),
    f_bool(5, True))))))
put("agent_frames", "outcome", frame(6, msg(
    f_bytes(1, "app"), f_bytes(2, "v2"), f_bytes(3, "cd" * 32), f_bytes(4, "refused"),
    f_bytes(5, "bad signature"), f_bytes(6, "v1"))))
put("agent_frames", "admin-push", frame(7, PUSH))
put("agent_frames", "admin-status", frame(7, msg(f_bytes(1, "status"))))

put("sink_frames", "welcome", frame(1, msg(f_uint(1, 1), f_bytes(3, "sink-a"),
                                           f_bytes(4, "9d1c0b7e55aa4f10"))))
put("sink_frames", "ack", frame(2, msg(f_uint(1, 7), f_uint(2, 44))))
put("sink_frames", "refusal", frame(3, msg(f_bytes(1, "protocol version 2 is not supported"))))
put("sink_frames", "resolved", frame(4, msg(f_uint(1, 40))))
put("sink_frames", "offer", frame(5, offer_msg(OFFER)))
put("sink_frames", "admin-reply", frame(6, msg(f_bool(1, True), f_bytes(2, "pushed to 1 agent"),
    f_bytes(3, msg(f_bytes(1, "edge-1"), f_bytes(2, "app"), f_bytes(3, "v1"),
                   f_bytes(4, "accepted"), f_uint(6, 1764000000000), f_bool(7, True),
                   f_bytes(8, "v2"))))))

for name, skip in [("entry", 0), ("entry-skip", 42)]:
    put("journal_entry", name, msg(f_bytes(1, "edge-1"), f_bytes(2, "3f2a9c41d07e4b8a"),
                                    f_uint(4, 44), f_bytes(5, batch(41)), f_uint(6, skip)))

put("module_offer", "offer", offer_msg(OFFER))
put("module_offer", "admin-push", PUSH)
put("signature_file", "sig", (json.dumps({
    "pipeline": OFFER["pipeline"], "version": OFFER["version"], "sha256": OFFER["sha256"],
    "seq": OFFER["seq"], "vectors_sha256": OFFER["vectors_sha256"], "key": OFFER["key"], "signature": base64.b64encode(OFFER["signature"]).decode(),
}, indent=2) + "\n").encode())


# --- CBOR, as ciborium writes serde structs (maps with field names) ---
def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for bits, code in ((8, 24), (16, 25), (32, 26), (64, 27)):
        if n < 1 << bits:
            return bytes([major << 5 | code]) + n.to_bytes(bits // 8, "big")
    raise ValueError(n)


def cbor(v):
    if v is None:
        return b"\xf6"
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return cbor_head(0, v)
    if isinstance(v, bytes):
        return cbor_head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return cbor_head(3, len(b)) + b
    if isinstance(v, (list, tuple)):
        return cbor_head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return cbor_head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)


def queue_record(r):
    # Field order of agent/core/src/record.rs.
    return {"ts_ns": r["ts"], "source": r["source"], "topic": r["topic"],
            "key": r.get("key"), "headers": [list(h) for h in r.get("headers", ())],
            "payload": r["payload"]}


recs = [queue_record(r) for r in RECORDS]
def chunk(rs):
    # Format 2 (queue/mod.rs): [2][count u32 LE][crc32 u32 LE][CBOR], the CRC-32 over every
    # byte but its own four.
    head, body = bytes([2]) + struct.pack("<I", len(rs)), cbor(rs)
    return head + struct.pack("<I", zlib.crc32(head + body)) + body


put("queue_record", "chunk", chunk(recs))
put("queue_record", "chunk-one", chunk(recs[1:2]))
put("queue_record", "chunk-v1", bytes([1]) + struct.pack("<I", len(recs)) + cbor(recs))
put("queue_record", "dead", cbor({"ts_ns": 1, "pipeline": "app",
                                  "reason": "invalid JSON: expected value at line 1 column 1",
                                  "record": recs[1]}))
put("queue_record", "state", cbor({
    "active": {"version": "v2", "hash": "ab" * 32, "module": MODULE},
    "previous": None, "rejected": ["cd" * 32]}))

# --- HTTP bodies: first byte = line limit (low 6 bits) and codec (top 2 bits) ---
for name, pick, body in [
    ("ndjson", 0x80 | 0x3F,
     b'{"level":"info","msg":"started"}\n{"n":[1,2.5,null,true]}\r\n\n'),
    ("raw", 0x10, b"first line\r\nsecond line that is longer than sixteen\nlast"),
    ("binary", 0x40 | 0x08, b"\x00\x01\r\n\xff\xfe\n\n"),
    ("json-bad", 0xC0 | 0x20, b'{"a":\n[[[[[[1]]]]]]\n"\xff"\n'),
]:
    put("http_body", name, bytes([pick]) + body)

# --- configs: the packaged examples, and the source kinds they leave out ---
for name in ("agent", "sink"):
    with open(os.path.join(REPO, "packaging", "examples", name + ".toml"), "rb") as f:
        put("config", name, f.read())
put("config", "agent-sources", b'''data_dir = "data"
[forward]
sinks = ["127.0.0.1:7400", "[::1]:7400"]
tls = { ca = "ca.pem", cert = "agent.pem", key = "agent.key" }
[[pipelines]]
name = "iot"
when_full = "drop_newest"
[[pipelines.sources]]
type = "mqtt"
broker = "127.0.0.1:1883"
client_id = "edge-1"
topics = [{ filter = "plant/#", qos = 1 }]
codec = "json"
[[pipelines.sources]]
type = "udp"
listen = "127.0.0.1:5141"
[[pipelines.sources]]
type = "stdin"
[[pipelines.transforms]]
module = "redact.wasm"
config = { field = "password", depth = 2 }
memory_max_bytes = 16777216
deadline_ms = 100
''')
