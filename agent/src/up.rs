//! `dataweaver up`: a sink and an agent in one process on loopback, with generated
//! certificates, a sample input file and the example transform (built from
//! `transforms/rust/example`, embedded in the binary): what the README's first command runs.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use dataweaver::{agent, config, sink, tls};
use tokio_util::sync::CancellationToken;

/// Sets up `dir` (certificates, configs, input file) and runs until `shutdown`.
pub async fn run(
    dir: &Path,
    port: u16,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        tls::init_ca(&certs)?;
        tls::issue(&certs, "sink", true, &[], false)?;
        tls::issue(&certs, "local-agent", false, &[], false)?;
    }
    // Written every time, so an old copy never shadows the binary's own.
    let module = dir.join("example_transform.wasm");
    std::fs::write(&module, EXAMPLE_TRANSFORM)?;
    let input = dir.join("input.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&input)?;

    let sink_toml = dir.join("sink.toml");
    std::fs::write(&sink_toml, sink_config(port))?;
    let sink_cfg = config::load_sink(&sink_toml)?;
    let sink = sink::Sink::bind(&sink_cfg)?;
    let addr = sink.local_addr()?;
    // The agent's config names the port the sink actually got.
    std::fs::write(&sink_toml, sink_config(addr.port()))?;
    let agent_toml = dir.join("agent.toml");
    std::fs::write(&agent_toml, agent_config(addr.port()))?;
    let agent_cfg = config::load_agent(&agent_toml)?;

    let output = dir.join("output");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "DataWeaver is up: sink on {addr} (QUIC, TLS 1.3, mutual TLS) and one agent."
    )?;
    writeln!(out, "  write lines to:  {}", input.display())?;
    writeln!(out, "  JSONL output in: {}", output.display())?;
    writeln!(
        out,
        "  configs:         {} and {}",
        agent_toml.display(),
        sink_toml.display()
    )?;
    writeln!(
        out,
        "  transform:       {} (the example: JSON in, debug dropped, topic from `service`, `host` added; see transforms/README.md)",
        module.display()
    )?;
    writeln!(
        out,
        "  try:             echo '{{\"service\":\"web\",\"level\":\"info\",\"msg\":\"hello\"}}' >> {} ; tail -f {}/out-*.jsonl",
        input.display(),
        output.display()
    )?;
    writeln!(out, "Ctrl-C stops both.")?;
    out.flush()?;
    drop(out);

    let stop = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run(stop.clone()));
    let agent_stop = stop.clone();
    let agent_task = tokio::spawn(agent::run(agent_cfg, async move {
        agent_stop.cancelled().await
    }));
    shutdown.await;
    stop.cancel();
    agent_task.await??;
    sink_task.await?;
    Ok(())
}

/// The example transform (Rust), as built into `transforms/prebuilt` by CI's check.
const EXAMPLE_TRANSFORM: &[u8] = include_bytes!("../../transforms/prebuilt/example_rust.wasm");

fn sink_config(port: u16) -> String {
    format!(
        r#"# Written by `dataweaver up`.
listen = "127.0.0.1:{port}"
data_dir = "sink-data"
tls = {{ ca = "certs/ca.pem", cert = "certs/sink.pem", key = "certs/sink.key" }}

[[outputs]]
type = "jsonl"
dir = "output"
"#
    )
}

fn agent_config(port: u16) -> String {
    format!(
        r#"# Written by `dataweaver up`.
data_dir = "agent-data"

[forward]
sinks = ["127.0.0.1:{port}"]
server_name = "localhost"
tls = {{ ca = "certs/ca.pem", cert = "certs/local-agent.pem", key = "certs/local-agent.key" }}

[[pipelines]]
name = "sample"

# Lines that are not JSON objects go to the dead-letter table with the reason.
[[pipelines.transforms]]
module = "example_transform.wasm"
config = {{ host = "local" }}

[[pipelines.sources]]
type = "file"
include = ["input.log"]
poll_interval_ms = 100
"#
    )
}
