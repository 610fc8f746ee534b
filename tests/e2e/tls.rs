//! Acceptance 5: mutual TLS. Wrong CA, wrong name or no certificate gets nothing.

use std::net::SocketAddr;
use std::time::Duration;

use dataweaver::forward::{self, ForwardError};
use dataweaver::tls;

use crate::util::*;

async fn try_connect(
    port: u16,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    name: &str,
) -> Result<forward::Session, ForwardError> {
    let client = tls::client_config(
        &tls::TlsMaterial::load(ca, identity).unwrap(),
        Duration::from_secs(3),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        forward::connect(
            &endpoint,
            client,
            forward::Dial {
                addr,
                server_name: name,
                timeout: Duration::from_secs(3),
            },
            "q-test",
            forward::Incarnation::default(),
            |_| Ok((0, 0)),
        ),
    )
    .await;
    r.unwrap_or_else(|_| Err(ForwardError::Protocol("timed out".into())))
}

/// Waits until the sink answers a correct client (it may still be starting).
async fn wait_ready(w: &World) {
    let c = w.certs();
    for _ in 0..100 {
        if try_connect(
            w.port,
            &c.join("ca.pem"),
            Some((&c.join("edge-1.pem"), &c.join("edge-1.key"))),
            "localhost",
        )
        .await
        .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sink never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_strangers() {
    let w = World::new();
    let _sink = w.sink();
    wait_ready(&w).await;
    let c = w.certs();
    let ca = c.join("ca.pem");

    // A second CA with its own agent and sink certificates.
    let other = w.path("other");
    let o = other.to_str().unwrap();
    dw(&["certs", "init", "--dir", o]);
    dw(&["certs", "issue", "--dir", o, "--name", "edge-1"]);
    dw(&["certs", "issue", "--dir", o, "--name", "sink", "--sink"]);

    // The right credentials get a welcome (so the refusals below are about the credentials).
    let ok = try_connect(
        w.port,
        &ca,
        Some((&c.join("edge-1.pem"), &c.join("edge-1.key"))),
        "localhost",
    )
    .await;
    assert_eq!(ok.expect("valid agent is welcomed").high_water_mark, 0);

    // An agent certificate from another CA, even with the same name, is refused by the sink.
    let r = try_connect(
        w.port,
        &ca,
        Some((&other.join("edge-1.pem"), &other.join("edge-1.key"))),
        "localhost",
    )
    .await;
    assert!(r.is_err(), "foreign agent certificate accepted");

    // A QUIC client without a certificate gets nothing.
    let r = try_connect(w.port, &ca, None, "localhost").await;
    assert!(r.is_err(), "client without certificate accepted");

    // The agent refuses a sink whose certificate does not carry the expected name.
    let r = try_connect(
        w.port,
        &ca,
        Some((&c.join("edge-1.pem"), &c.join("edge-1.key"))),
        "sink.example.org",
    )
    .await;
    let e = r.err().expect("wrong sink name accepted").to_string();
    assert!(e.contains("connect"), "{e}");

    // The agent refuses a sink whose certificate comes from another CA.
    let port2 = free_port();
    let cfg = w.path("sink2.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port2}\"\ndata_dir = \"sink2\"\ntls = {{ ca = \"certs/ca.pem\", cert = \"other/sink.pem\", key = \"other/sink.key\" }}\n[[outputs]]\ntype = \"jsonl\"\ndir = \"sink2/out\"\n"
        ),
    )
    .unwrap();
    let _sink2 = Proc::start("sink", &cfg, &w.path("sink2.log"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = try_connect(
        port2,
        &ca,
        Some((&c.join("edge-1.pem"), &c.join("edge-1.key"))),
        "localhost",
    )
    .await;
    let e = r.err().expect("sink from another CA accepted").to_string();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer") || e.contains("connect"),
        "{e}"
    );

    // Nothing from the refused clients reached the output, and the sink says why it refused.
    assert!(read_output(&w.output_dir()).is_empty());
    w.wait_log("sink.log", "refused connection");
}
