//! The agent's way to its sinks, shared by the forwarder (its data streams and the
//! sweeper) and the control stream: one QUIC endpoint, one TLS client configuration, one
//! dial (resolve, then the handshake under `connect_timeout_ms`) and one back-off.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Dial, ForwardConfig, ForwardError, backoff, client_endpoint, handshake};

/// The endpoint and TLS client configuration every connection to a sink goes through.
#[derive(Clone)]
pub struct Link {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    server_name: String,
    connect_timeout: Duration,
    reconnect_ms: (u64, u64),
}

impl Link {
    /// The link `cfg` describes (its TLS files are read now).
    pub fn new(cfg: &ForwardConfig) -> Result<Link, ForwardError> {
        let client = dataweaver_tls::client_config(
            &cfg.tls.load()?,
            Duration::from_millis(cfg.idle_timeout_ms),
        )?;
        Ok(Link {
            endpoint: client_endpoint()?,
            client,
            server_name: cfg.server_name.clone(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            reconnect_ms: (cfg.reconnect_min_ms, cfg.reconnect_max_ms),
        })
    }

    /// The address `target` (`host:port`) resolves to first.
    pub async fn resolve(&self, target: &str) -> Result<SocketAddr, ForwardError> {
        tokio::net::lookup_host(target)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ForwardError::Resolve(target.into()))
    }

    /// How to dial `addr`: the sink's certificate name and the handshake's deadline.
    pub(crate) fn dial(&self, addr: SocketAddr) -> Dial<'_> {
        Dial {
            addr,
            server_name: &self.server_name,
            timeout: self.connect_timeout,
        }
    }

    /// A QUIC connection to `target`, its handshake bounded by `connect_timeout_ms`.
    pub async fn connect(&self, target: &str) -> Result<quinn::Connection, ForwardError> {
        let addr = self.resolve(target).await?;
        handshake(&self.endpoint, self.client(), self.dial(addr)).await
    }

    /// The pause before the next attempt after `failures` consecutive failures.
    pub fn backoff(&self, failures: u32) -> Duration {
        backoff(self.reconnect_ms.0, self.reconnect_ms.1, failures)
    }

    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The TLS client configuration.
    pub(crate) fn client(&self) -> quinn::ClientConfig {
        self.client.clone()
    }

    /// Closes every connection of the endpoint; the close frames leave at once, and
    /// waiting out the draining period would only delay a stop (by seconds when the sink
    /// is unreachable).
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_millis(300), self.endpoint.wait_idle()).await;
    }
}
