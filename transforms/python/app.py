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


def _parse_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)  # 1e400: would be written back as Infinity, not JSON
    return value


def _parse(payload: bytes):
    return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float)


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
                out = _transform(ev)
            except (ValueError, RecursionError):
                # Not JSON, too deep, or a lone surrogate that cannot be written back as
                # UTF-8 (UnicodeError is a ValueError): this record fails, not the batch.
                errors.append(types.RecordError(i, "malformed JSON"))
                continue
            except _NotObject:
                errors.append(types.RecordError(i, "payload is not a JSON object"))
                continue
            events.extend(out)
        return types.BatchResult(events, errors)


class _NotObject(Exception):
    pass


def _transform(ev):
    doc = _parse(ev.payload)
    if not isinstance(doc, dict):
        raise _NotObject()
    if doc.get("level") == "debug":
        return []
    service = doc.get("service")
    topic = service if isinstance(service, str) else ev.topic
    topic.encode("utf-8")  # a lone surrogate here must fail the record, not the batch
    items = doc.get("batch")
    if isinstance(items, list):
        payloads = [_with_host(x) if isinstance(x, dict) else {"value": x, "host": _host} for x in items]
    else:
        payloads = [_with_host(doc)]
    return [types.Event(ev.ts_ns, ev.source, topic, ev.key, ev.headers, _dump(p)) for p in payloads]
