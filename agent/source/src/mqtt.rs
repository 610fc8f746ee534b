//! MQTT source (MQTT 3.1.1, rumqttc): a message the broker considers delivered to us is
//! already durable in our queue.
//!
//! - **Acknowledge after commit.** Manual acks: PUBACK (QoS 1) and PUBREC (QoS 2) are sent
//!   only after the messages' queue transaction committed, in the order received. While the
//!   queue refuses (`block`), nothing is acknowledged, so the broker holds the rest (bounded
//!   by its in-flight window).
//! - **Persistent session** (`clean_session = false`): the broker keeps our subscriptions
//!   and what we never acknowledged while the agent is down, and redelivers it.
//! - **QoS 2 exactly once into the queue.** The packet ids received but not yet released
//!   (PUBREL) are stored, with a hash of topic and payload, in the *same* transaction as the
//!   records (the source's checkpoint). A redelivery after a crash (DUP set, same id, same
//!   content) is recognised and acknowledged without being queued twice. Released ids are
//!   kept too, for the last 32,768 releases (see `mqtt/qos2.rs`): Mosquitto 2.0 redelivers
//!   after PUBREL.
//!
//! rumqttc forgets the ids of incoming QoS 2 messages on every reconnect and then treats
//! the broker's PUBREL for them as a protocol error; after each CONNACK the source re-arms
//! those ids from its stored set (a synthetic publish on a `$dataweaver/` topic that never
//! reaches the pipeline). A PUBREL can also come for an id already released on our side
//! (the broker never saw our PUBCOMP before a crash): such an id is remembered and re-armed
//! on the next connect, so the broker gets its PUBCOMP instead of a reconnect loop.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, MqttOptions, Packet, Publish,
    QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod qos2;

use crate::MqttSourceConfig;
use crate::codec;
use crate::pipeline::Pipeline;
use dataweaver_core::Checkpoint;
use dataweaver_core::{Record, now_ns};

/// Synthetic publishes that re-arm QoS 2 ids in rumqttc's state use this topic.
const RESTORE_TOPIC: &str = "$dataweaver/restore-qos2";

/// QoS 0 messages waiting for a commit beyond which new ones are dropped.
const QOS0_HELD_MAX: u64 = 100_000;

/// Messages per commit at most.
const COMMIT_MAX: usize = 1024;

/// Runs the source until `shutdown`.
pub async fn run(cfg: MqttSourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let source = format!(
        "{}/{}",
        pipeline.name,
        cfg.name.as_deref().unwrap_or("mqtt")
    );
    let opts = match options(&cfg) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(%source, error = %e, "mqtt source not started");
            return;
        }
    };
    let key = format!("mqtt:{source}:{}", cfg.client_id);
    let (state, unreadable) = load_pending(&pipeline, &key, &source);
    // Segments that do not decode are in no state: nothing would ever delete them, and
    // every restart would report them again.
    for k in unreadable {
        let delete = Checkpoint {
            key: k.clone(),
            value: Vec::new(),
        };
        match pipeline.store_checkpoint(delete).await {
            Ok(()) => {
                tracing::warn!(%source, key = %k, "unreadable mqtt QoS 2 state segment deleted")
            }
            Err(e) => {
                tracing::warn!(%source, key = %k, error = %e, "unreadable mqtt QoS 2 state segment not deleted")
            }
        }
    }
    let pending = Arc::new(Mutex::new(state));
    let c = &pipeline.counters;
    let counters = Counters {
        received: c.counter(&format!("{source}.received")),
        acked: c.counter(&format!("{source}.acked")),
        duplicates: c.counter(&format!("{source}.duplicates")),
        reconnects: c.counter(&format!("{source}.reconnects")),
        dropped: c.counter(&format!("{source}.dropped")),
    };
    // The poll loop must never wait on the committer: the committer's acks go through
    // the event loop's request channel, which only a polling loop drains (a bounded
    // hand-over deadlocked under load). What is held is bounded by the broker's in-flight
    // window for QoS 1/2, since we acknowledge only after commit.
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let held = Arc::new(AtomicU64::new(0));
    let committer = tokio::spawn(commit_loop(
        rx,
        held.clone(),
        client.clone(),
        pipeline.clone(),
        source.as_str().into(),
        cfg.codec,
        key,
        pending.clone(),
        counters.clone(),
        shutdown.clone(),
    ));

    // Recently released ids, and ids the broker released again after we had forgotten
    // them: re-armed on every connect, since a PUBCOMP lost in a disconnect makes the
    // broker send PUBREL again (see the module docs). Bounded: only recent ids matter.
    let mut rearm_extra: std::collections::VecDeque<u16> = Default::default();
    let mut delay = Duration::from_millis(cfg.reconnect_min_ms);
    let max_delay = Duration::from_millis(cfg.reconnect_max_ms);
    let mut connected = false;
    // Whether the current connection attempt got its CONNACK.
    let mut accepted = false;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(%source, broker = %cfg.broker, session_present = ack.session_present, "mqtt connected");
                if connected {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected = true;
                accepted = true;
                delay = Duration::from_millis(cfg.reconnect_min_ms);
                // The stored ids are kept even when the broker reports no session:
                // Mosquitto was seen redelivering after `session_present = false` (a
                // reconnect racing the killed connection's cleanup), and the DUP flag plus
                // the content hash keep the check safe.
                let mut ids = lock(&pending).rearm_ids(REARM_RECENT);
                ids.extend(rearm_extra.iter().copied());
                rearm_qos2(&mut eventloop, &ids);
                for t in &cfg.topics {
                    if let Err(e) = client.try_subscribe(&t.filter, qos(t.qos)) {
                        tracing::warn!(%source, filter = %t.filter, error = %e, "mqtt subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == RESTORE_TOPIC {
                    continue;
                }
                counters.received.fetch_add(1, Ordering::Relaxed);
                if p.qos == QoS::AtMostOnce && held.load(Ordering::Relaxed) > QOS0_HELD_MAX {
                    // QoS 0 has no flow control: beyond a bound, drop and count.
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                held.fetch_add(1, Ordering::Relaxed);
                if tx.send(Msg::Publish(p)).is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::PubRel(r))) => {
                // Released: a later message may reuse the id. In order with the publishes:
                // a redelivered copy received before this PUBREL must still be recognised.
                remember(&mut rearm_extra, r.pkid);
                if tx.send(Msg::Released(r.pkid)).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(ConnectionError::MqttState(rumqttc::StateError::Unsolicited(pkid))) => {
                // A PUBREL for an id we no longer hold: answer it after reconnecting.
                tracing::info!(%source, pkid, "mqtt broker re-released a QoS 2 id; re-arming it");
                remember(&mut rearm_extra, pkid);
            }
            Err(e) => {
                let refused = matches!(
                    e,
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                    )
                );
                // Some brokers (rumqttd) close the connection on wrong credentials
                // instead of answering with a refusal.
                let closed_early = !accepted
                    && matches!(
                        e,
                        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted)
                    );
                if refused {
                    // Wrong credentials do not fix themselves: say so once, retry slowly.
                    tracing::error!(%source, broker = %cfg.broker, error = %e, "mqtt broker refused our credentials; check username/password");
                    delay = max_delay;
                } else if closed_early {
                    // A broker that takes the TCP connection and then closes it before
                    // CONNACK is refusing us (a restarting one refuses the connection).
                    tracing::error!(%source, broker = %cfg.broker, error = %e, "mqtt broker closed the connection before accepting it; check username/password, client_id and the broker's ACLs");
                    delay = max_delay;
                } else {
                    tracing::warn!(%source, broker = %cfg.broker, error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection failed");
                }
                connected = connected && !refused;
                accepted = false;
                let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 4));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay + jitter) => {}
                }
                delay = (delay * 2).min(max_delay);
            }
        }
    }
    drop(tx);
    let _ = committer.await;
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// What the poll loop hands the committer, in arrival order.
enum Msg {
    Publish(Publish),
    Released(u16),
}

#[derive(Clone)]
struct Counters {
    received: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

/// Ids re-armed on connect beyond the stored set (the most recent releases).
const REARM_RECENT: usize = 1024;

fn remember(recent: &mut std::collections::VecDeque<u16>, pkid: u16) {
    if !recent.contains(&pkid) {
        if recent.len() == REARM_RECENT {
            recent.pop_front();
        }
        recent.push_back(pkid);
    }
}

/// The QoS 2 state stored with the last commit: the main checkpoint and its segments
/// (see [`qos2`]), and the keys of segments that do not decode (to delete). Unreadable, it
/// is said loudly: the redeliveries of what was queued before the restart would be queued
/// again.
fn load_pending(pipeline: &Pipeline, key: &str, source: &str) -> (qos2::State, Vec<String>) {
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(%source, error = %e, "mqtt QoS 2 state {what}; redeliveries of messages queued before the restart may be queued twice");
    };
    let main = match pipeline.checkpoint(key) {
        Ok(Some(v)) => qos2::decode_pending(&v).unwrap_or_else(|e| {
            unreadable("does not decode", &e);
            Default::default()
        }),
        Ok(None) => Default::default(),
        Err(e) => {
            unreadable("unreadable", &e);
            Default::default()
        }
    };
    let prefix = qos2::segment_prefix(key);
    let (segments, bad) = match pipeline.checkpoints(&prefix) {
        Ok(stored) => qos2::segments_of(&prefix, stored),
        Err(e) => {
            unreadable("segments unreadable", &e);
            Default::default()
        }
    };
    for (k, why) in &bad {
        unreadable(&format!("segment {k} is unreadable"), why);
    }
    let state = qos2::State::load(main, segments);
    let (unreleased, released) = state.counts();
    tracing::info!(%source, unreleased, released, "mqtt QoS 2 state loaded");
    (state, bad.into_iter().map(|(k, _)| k).collect())
}

fn lock(m: &Mutex<qos2::State>) -> std::sync::MutexGuard<'_, qos2::State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(cfg: &MqttSourceConfig) -> Result<MqttOptions, String> {
    let (host, port) = cfg.broker_addr()?;
    let mut o = MqttOptions::new(&cfg.client_id, host, port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(1)))
        .set_clean_session(cfg.clean_session)
        .set_manual_acks(true);
    if let Some(u) = &cfg.username {
        o.set_credentials(u, cfg.password.as_deref().unwrap_or(""));
    }
    if let Some(t) = &cfg.tls {
        let tls = t
            .load()
            .and_then(|m| dataweaver_tls::plain_client_config(&m))
            .map_err(|e| e.to_string())?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}

/// Re-arms rumqttc's record of incoming QoS 2 ids, so the broker's PUBRELs for messages
/// we acknowledged before the reconnect are answered instead of failing the connection.
fn rearm_qos2(eventloop: &mut rumqttc::EventLoop, ids: &[u16]) {
    for &pkid in ids {
        let mut p = Publish::new(RESTORE_TOPIC, QoS::ExactlyOnce, Vec::<u8>::new());
        p.pkid = pkid;
        let _ = eventloop.state.handle_incoming_packet(Incoming::Publish(p));
    }
}

fn content_hash(p: &Publish) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.topic.hash(&mut h);
    p.payload.hash(&mut h);
    h.finish()
}

/// Commits received messages in groups and acknowledges them, in order, after commit.
#[allow(clippy::too_many_arguments)]
async fn commit_loop(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    held: Arc<AtomicU64>,
    client: AsyncClient,
    pipeline: Arc<Pipeline>,
    source: dataweaver_core::Shared,
    codec_kind: crate::Codec,
    key: String,
    pending: Arc<Mutex<qos2::State>>,
    counters: Counters,
    shutdown: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let mut msgs = vec![first];
        while msgs.len() < COMMIT_MAX {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        let ts_ns = now_ns();
        let mut batch = Vec::with_capacity(msgs.len());
        let mut records = Vec::with_capacity(msgs.len());
        let mut qos2 = false;
        {
            let mut pend = lock(&pending);
            for m in msgs {
                let p = match m {
                    Msg::Released(pkid) => {
                        pend.release(pkid);
                        qos2 = true;
                        continue;
                    }
                    Msg::Publish(p) => {
                        batch.push(p);
                        &batch[batch.len() - 1]
                    }
                };
                if p.qos == QoS::ExactlyOnce {
                    qos2 = true;
                    if pend.seen(p.pkid, content_hash(p), p.dup) {
                        // Queued before a crash or reconnect; only the PUBREC was missing
                        // (or the broker redelivered after releasing: see `qos2`).
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                records.push(Record {
                    ts_ns,
                    source: source.clone(),
                    topic: p.topic.as_str().into(),
                    key: None,
                    headers: Default::default(),
                    payload: p.payload.to_vec(),
                });
            }
        }
        held.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        let checkpoint = qos2.then(|| Checkpoint {
            key: key.clone(),
            value: lock(&pending).main(),
        });
        let (records, rejected) = codec::decode_all(codec_kind, records);
        if let Err(e) = pipeline
            .emit_held(records, rejected, checkpoint, &shutdown)
            .await
        {
            // Shutting down with the batch uncommitted: not acknowledged, so the broker
            // redelivers it to the next session.
            tracing::info!(%source, error = %e, "mqtt messages left unacknowledged at shutdown");
            return;
        }
        for p in &batch {
            if p.qos != QoS::AtMostOnce {
                if let Err(e) = client.ack(p).await {
                    tracing::warn!(%source, error = %e, "mqtt ack not sent");
                    continue;
                }
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        if qos2 {
            // Closed segments, from the state just committed (whose main checkpoint still
            // carries them), are stored before a later main checkpoint drops them.
            let writes = lock(&pending).closed();
            for w in writes {
                let segment = Checkpoint {
                    key: qos2::segment_key(&key, w.first),
                    value: w.value.clone(),
                };
                match pipeline.store_checkpoint(segment).await {
                    Ok(()) => lock(&pending).stored(&w),
                    Err(e) => {
                        // The main checkpoint keeps carrying them; tried again next commit.
                        tracing::warn!(%source, error = %e, "mqtt QoS 2 state segment not stored");
                        break;
                    }
                }
            }
        }
    }
}
