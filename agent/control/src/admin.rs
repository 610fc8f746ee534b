//! The operator's client: one admin request to a sink over QUIC, authenticated by a
//! client certificate whose name the sink lists in `admins`.

use std::path::PathBuf;
use std::time::Duration;

use super::ControlError;
use dataweaver_wire::{
    self as wire, AdminReply, AdminRequest, AgentFrame, SinkFrame, agent_frame, sink_frame,
};

/// How the operator's client reaches a sink.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// `host:port` of the sink.
    pub sink: String,
    /// Name the sink's certificate must carry.
    pub server_name: String,
    /// CA that signed the sink.
    pub ca: PathBuf,
    /// The admin's certificate.
    pub cert: PathBuf,
    /// The admin's key.
    pub key: PathBuf,
}

/// Sends `req`; for `status`, fetches every page and returns them as one reply.
pub async fn request_all(t: &AdminTarget, req: AdminRequest) -> Result<AdminReply, ControlError> {
    let paged = req.action == "status";
    let mut all = request(t, req.clone()).await?;
    while paged && all.ok && !all.next.is_empty() {
        let page = AdminRequest {
            after: std::mem::take(&mut all.next),
            ..req.clone()
        };
        let mut r = request(t, page).await?;
        all.agents.append(&mut r.agents);
        all.next = r.next;
        all.ok = r.ok;
        if !r.ok {
            all.message = r.message;
        }
    }
    Ok(all)
}

/// Sends `req` and returns the sink's reply.
pub async fn request(t: &AdminTarget, req: AdminRequest) -> Result<AdminReply, ControlError> {
    use prost::Message as _;
    let err = |e: &dyn std::fmt::Display| ControlError::Connection(format!("{}: {e}", t.sink));
    let frame = AgentFrame {
        kind: Some(agent_frame::Kind::Admin(req)),
    };
    // The sink drops a stream whose frame is over the limit, which the client would see
    // only as "sending stopped by peer".
    let len = frame.encoded_len();
    if len > wire::MAX_CONTROL_FRAME {
        return Err(ControlError::Format(format!(
            "the request is {len} bytes, over the {} MiB limit of a control frame (the module and its self-check vectors must fit in it)",
            wire::MAX_CONTROL_FRAME / (1024 * 1024)
        )));
    }
    let client = dataweaver_tls::TlsMaterial::load(&t.ca, Some((&t.cert, &t.key)))
        .and_then(|m| dataweaver_tls::client_config(&m, Duration::from_secs(30)))
        .map_err(|e| ControlError::Format(e.to_string()))?;
    let addr = tokio::net::lookup_host(&t.sink)
        .await
        .map_err(|e| err(&e))?
        .next()
        .ok_or_else(|| err(&"does not resolve"))?;
    let endpoint = dataweaver_forward::client_endpoint().map_err(|e| err(&e))?;
    let conn = endpoint
        .connect_with(client, addr, &t.server_name)
        .map_err(|e| err(&e))?
        .await
        .map_err(|e| err(&e))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(&e))?;
    wire::write_frame(&mut send, &frame)
        .await
        .map_err(|e| err(&e))?;
    let _ = send.finish();
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        wire::read_frame_max::<SinkFrame>(&mut recv, wire::MAX_CONTROL_FRAME),
    )
    .await
    .map_err(|_| err(&"no answer within 60 s"))?
    .map_err(|e| err(&e))?;
    conn.close(0u32.into(), b"done");
    // Give the endpoint a moment to send the close; a full `wait_idle` lasts the QUIC
    // draining period (tens of ms) for nothing: the sink is done with this connection.
    let _ = tokio::time::timeout(Duration::from_millis(10), endpoint.wait_idle()).await;
    match answer {
        Some(SinkFrame {
            kind: Some(sink_frame::Kind::AdminReply(r)),
        }) => Ok(r),
        other => Err(err(&format!("unexpected answer {other:?}"))),
    }
}
