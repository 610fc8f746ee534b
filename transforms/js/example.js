// The example transform in JavaScript (see transforms/README.md for what it does).
// Built with componentize-qjs (QuickJS) against wit/transform.wit. Records arrive as
// objects with camelCase fields (`tsNs` is a BigInt, `payload` a Uint8Array); QuickJS
// here has no TextEncoder/TextDecoder, so utf8.js converts bytes and strings.
import { decodeUtf8, encodeUtf8 } from "./utf8.js";

let host = null;

function init(config) {
  let cfg;
  try {
    cfg = JSON.parse(config);
  } catch (e) {
    throw "config is not JSON";
  }
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg) || typeof cfg.host !== "string") {
    throw "config: `host` (a string) is required";
  }
  host = cfg.host;
}

// A plain copy: a "__proto__" key stays a key (Object.assign into {} would drop it).
function withHost(obj) {
  const out = Object.create(null);
  for (const k of Object.keys(obj)) if (k !== "host") out[k] = obj[k];
  out.host = host;
  return out;
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function process(batch) {
  const events = [];
  const errors = [];
  for (let i = 0; i < batch.length; i++) {
    const ev = batch[i];
    let doc;
    try {
      doc = JSON.parse(decodeUtf8(ev.payload));
    } catch (e) {
      errors.push({ index: i, reason: "malformed JSON" });
      continue;
    }
    if (!isObject(doc)) {
      errors.push({ index: i, reason: "payload is not a JSON object" });
      continue;
    }
    if (doc.level === "debug") continue;
    const topic = typeof doc.service === "string" ? doc.service : ev.topic;
    const payloads = Array.isArray(doc.batch)
      ? doc.batch.map((x) => (isObject(x) ? withHost(x) : { value: x, host: host }))
      : [withHost(doc)];
    for (const p of payloads) {
      events.push({
        tsNs: ev.tsNs,
        source: ev.source,
        topic: topic,
        key: ev.key,
        headers: ev.headers,
        payload: encodeUtf8(JSON.stringify(p)),
      });
    }
  }
  return { events: events, errors: errors };
}

export const transformer = { init, process };
