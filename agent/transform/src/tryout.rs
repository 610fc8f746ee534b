//! `dataweaver transform test`: runs a module over NDJSON records without an agent, so a
//! transform author can see what it makes of sample input.
//!
//! Input: one record per line. A JSON object with a `payload` key is a record (`payload`
//! a string, or any other JSON value, taken as its JSON text; optional `ts_ns`, `source`,
//! `topic`, `key`, `headers` as an object); any other line is the payload itself.
//! Output: one JSON line per output record (the shape of the sink's JSONL lines, without
//! agent, queue and seq), and for each failed input a line `{"error": reason, "input": record}`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{Chain, Module, Settings, Stage, TransformError};
use dataweaver_core::Counters;
use dataweaver_core::Record;

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Input records.
    pub input: u64,
    /// Output records.
    pub output: u64,
    /// Failed inputs.
    pub failed: u64,
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryoutError {
    /// The module was refused.
    #[error(transparent)]
    Module(#[from] TransformError),
    /// Reading input or writing output failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A record as a JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordJson {
    /// Timestamp, ns.
    #[serde(default)]
    pub ts_ns: Option<u64>,
    /// Source name.
    #[serde(default)]
    pub source: Option<String>,
    /// Topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Key: UTF-8 text on input; base64 on output, as in the sink's JSONL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Headers in order (a repeated name keeps its last value in this form).
    #[serde(default)]
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// Payload as text, or any JSON value on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Payload bytes that are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl RecordJson {
    /// The JSON form of a record.
    pub fn from_record(r: &Record) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = std::str::from_utf8(&r.payload).ok();
        RecordJson {
            ts_ns: Some(r.ts_ns),
            source: Some(r.source.to_string()),
            topic: Some(r.topic.to_string()),
            key: r.key.as_ref().map(|k| b64.encode(k)),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect(),
            payload: text.map(|t| serde_json::Value::String(t.into())),
            payload_base64: text.is_none().then(|| b64.encode(&r.payload)),
        }
    }
}

/// Parses one input line (see the module docs).
pub fn parse_line(line: &str) -> Record {
    let mut r = Record::new("test", "test", line.as_bytes().to_vec());
    let Ok(j) = serde_json::from_str::<RecordJson>(line) else {
        return r;
    };
    let Some(payload) = j.payload else { return r };
    r.payload = match payload {
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    if let Some(ts) = j.ts_ns {
        r.ts_ns = ts;
    }
    if let Some(s) = j.source {
        r.source = s.into();
    }
    if let Some(t) = j.topic {
        r.topic = t.into();
    }
    r.key = j.key.map(String::into_bytes);
    r.headers = j
        .headers
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k.into(), s.into()),
            other => (k.into(), other.to_string().into()),
        })
        .collect();
    r
}

/// Runs `module` over `input` in batches of `settings.batch_max_records`, writing to `out`.
pub fn run(
    module: &std::path::Path,
    settings: Settings,
    input: impl BufRead,
    mut out: impl Write,
) -> Result<Summary, TryoutError> {
    let module: Arc<Module> = Module::load(module, settings, None)?;
    let batch_max = module.settings.batch_max_records.max(1);
    let stage = Stage::new(module, "test", Arc::new(Counters::default()))?;
    let mut chain = Chain::from_stages(vec![stage]);
    let mut sum = Summary::default();
    let mut batch = Vec::with_capacity(batch_max);
    let mut lines = input.lines();
    loop {
        let line = lines.next().transpose()?;
        let end = line.is_none();
        if let Some(l) = line
            && !l.trim().is_empty()
        {
            batch.push(parse_line(&l));
        }
        if batch.len() >= batch_max || (end && !batch.is_empty()) {
            sum.input += batch.len() as u64;
            let o = chain.apply(std::mem::take(&mut batch));
            for r in &o.records {
                serde_json::to_writer(&mut out, &RecordJson::from_record(r))
                    .map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
            }
            for (r, why) in &o.failed {
                let line = serde_json::json!({"error": why, "input": RecordJson::from_record(r)});
                serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
            }
            sum.output += o.records.len() as u64;
            sum.failed += o.failed.len() as u64;
        }
        if end {
            break;
        }
    }
    out.flush()?;
    Ok(sum)
}
