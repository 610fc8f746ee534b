//! The `stdin` source: lines from standard input until it closes.

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::StdinSourceConfig;
use crate::pipeline::Pipeline;
use crate::{codec, lines};
use dataweaver_core::Record;

/// Reads standard input until end of file or `shutdown`; the last line needs no newline.
pub async fn run(cfg: StdinSourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let source = format!(
        "{}/{}",
        pipeline.name,
        cfg.name.as_deref().unwrap_or("stdin")
    );
    let topic = cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone());
    let mut input = tokio::io::stdin();
    let mut buf = vec![0u8; 256 << 10];
    let mut carry = Vec::new();
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = input.read(&mut buf) => r.unwrap_or(0),
        };
        let mut found = if n == 0 {
            Vec::new()
        } else {
            carry.extend_from_slice(&buf[..n]);
            lines::split_lines(&mut carry, cfg.max_line_bytes)
        };
        if n == 0 && !carry.is_empty() {
            found.push(std::mem::take(&mut carry));
        }
        if !found.is_empty() {
            let records = Record::from_lines(&source, &topic, None, found);
            let (records, rejected) = codec::decode_all(cfg.codec, records);
            if let Err(e) = pipeline
                .emit_until_accepted(records, rejected, &shutdown)
                .await
            {
                tracing::warn!(%source, error = %e, "stdin lines not queued");
                break;
            }
        }
        if n == 0 {
            tracing::info!(%source, "standard input closed");
            break;
        }
    }
}
