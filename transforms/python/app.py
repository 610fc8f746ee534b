"""The example transform in Python (see transforms/README.md for what it does).

Built with componentize-py against wit/transform.wit; `wit_world` is the package it
generates (`componentize-py -d ../../wit -w transformer bindings .` shows it).
"""

import json

from wit_world import exports
from wit_world.imports import host, types
from componentize_py_types import Err

_host = None


def _reject_constant(name):
    # NaN and Infinity are not JSON: refuse them like the other languages' parsers.
    raise ValueError(name)


def _parse(payload: bytes):
    return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)


def _dump(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _with_host(obj: dict) -> dict:
    out = {k: v for k, v in obj.items() if k != "host"}
    out["host"] = _host
    return out


class Transformer(exports.Transformer):
    def init(self, config: str) -> None:
        global _host
        try:
            cfg = json.loads(config)
        except ValueError:
            raise Err("config is not JSON")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("host"), str):
            raise Err("config: `host` (a string) is required")
        _host = cfg["host"]

    def process(self, batch):
        events, errors = [], []
        for i, ev in enumerate(batch):
            try:
                doc = _parse(ev.payload)
            except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
                errors.append(types.RecordError(i, "malformed JSON"))
                continue
            if not isinstance(doc, dict):
                errors.append(types.RecordError(i, "payload is not a JSON object"))
                continue
            if doc.get("level") == "debug":
                continue
            service = doc.get("service")
            topic = service if isinstance(service, str) else ev.topic
            items = doc.get("batch")
            if isinstance(items, list):
                payloads = [_with_host(x) if isinstance(x, dict) else {"value": x, "host": _host} for x in items]
            else:
                payloads = [_with_host(doc)]
            for p in payloads:
                events.append(types.Event(ev.ts_ns, ev.source, topic, ev.key, ev.headers, _dump(p)))
        return types.BatchResult(events, errors)
