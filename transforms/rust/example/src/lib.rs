//! The example transform in Rust (see `transforms/README.md` for what it does).

use dataweaver_guest::json::{self, Value};
use dataweaver_guest::{export_transform, Event, Transform};

struct Enrich {
    host: String,
}

impl Transform for Enrich {
    fn init(config: &str) -> Result<Self, String> {
        let cfg = json::parse(config.as_bytes()).map_err(|_| "config is not JSON".to_string())?;
        match cfg.get("host").and_then(Value::as_str) {
            Some(h) => Ok(Enrich { host: h.to_string() }),
            None => Err("config: `host` (a string) is required".to_string()),
        }
    }

    fn record(&mut self, ev: Event, out: &mut Vec<Event>) -> Result<(), String> {
        let doc = json::parse(&ev.payload).map_err(|_| "malformed JSON".to_string())?;
        if !matches!(doc, Value::Object(_)) {
            return Err("payload is not a JSON object".to_string());
        }
        if doc.get("level").and_then(Value::as_str) == Some("debug") {
            return Ok(());
        }
        let topic = match doc.get("service") {
            Some(Value::String(s)) => s.clone(),
            _ => ev.topic.clone(),
        };
        let host = Value::String(self.host.clone());
        let with = |payload: Value| Event {
            topic: topic.clone(),
            payload: payload.to_vec(),
            ..ev.clone()
        };
        match doc.get("batch") {
            Some(Value::Array(items)) => {
                for item in items {
                    let mut p = match item {
                        Value::Object(_) => item.clone(),
                        other => Value::Object(vec![("value".to_string(), other.clone())]),
                    };
                    p.set("host", host.clone());
                    out.push(with(p));
                }
            }
            _ => {
                let mut p = doc;
                p.set("host", host);
                out.push(with(p));
            }
        }
        Ok(())
    }
}

export_transform!(Enrich);
