//! The sink's side of the control plane: the pushed modules (per pipeline, with the one
//! before for a rollback), what each agent reported, and the agents connected now.
//!
//! Stored in `control.redb` beside the journal, so a restarted sink still offers the
//! pushed version to agents that connect later. The sink does not judge signatures: the
//! agents do, with their own trusted keys, and report back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::now_ms;
use crate::store::{Store, db_err};
use dataweaver_store::{Medium, StoreError};
use dataweaver_wire::{
    self as wire, AdminReply, AdminRequest, AgentFrame, AgentStatus, ControlHello, ModuleOffer,
    ModuleOutcome,
};

/// Pushed modules by pipeline: CBOR [`Desired`].
pub(crate) const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Reports by `agent \t pipeline`: CBOR [`Status`].
pub(crate) const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_status");

/// A pushed module as stored. CBOR; do not reorder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pushed {
    version: String,
    sha256: String,
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
    key: String,
    #[serde(with = "serde_bytes")]
    vectors: Vec<u8>,
    at_ms: u64,
    /// Only these agents (empty: all).
    #[serde(default)]
    agents: Vec<String>,
    /// The signed sequence number (0: a v1 signature, which agents refuse).
    #[serde(default)]
    seq: u64,
    /// A signed rollback order (an empty module: back to the configured module).
    #[serde(default)]
    rollback: bool,
}

/// What a pipeline should run. CBOR; do not reorder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Desired {
    current: Option<Pushed>,
    previous: Option<Pushed>,
    /// The operator rolled back past every push: agents run their configured module.
    configured: bool,
}

/// An agent's last report for a pipeline. CBOR; do not reorder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Status {
    active_version: String,
    last_outcome: String,
    reason: String,
    at_ms: u64,
}

impl Pushed {
    /// Whether this push is for `agent`.
    fn selects(&self, agent: &str) -> bool {
        self.agents.is_empty() || self.agents.iter().any(|a| a == agent)
    }

    fn offer(&self, pipeline: &str) -> ModuleOffer {
        ModuleOffer {
            pipeline: pipeline.into(),
            version: self.version.clone(),
            module: self.module.clone(),
            signature: self.signature.clone(),
            key: self.key.clone(),
            vectors: self.vectors.clone(),
            seq: self.seq,
            rollback: self.rollback,
        }
    }
}

pub use dataweaver_wire::session::control::MAX_PIPELINES_PER_AGENT;
use dataweaver_wire::session::control::{ControlSink, MAX_NAME_BYTES, SinkEffect};
/// Longest reason kept from an agent (a rollback's reason names the failures).
pub const MAX_REASON_BYTES: usize = 1024;
/// Rows per `transform status` reply at most: with bounded rows, a page stays far
/// below the control frame limit.
const STATUS_PAGE_ROWS: usize = 256;
/// Encoded bytes per `transform status` reply at most (rows written before the bounds
/// may be larger).
const STATUS_PAGE_BYTES: usize = 4 * 1024 * 1024;

use dataweaver_core::bounded as capped;

/// A connected agent's control stream.
struct AgentConn {
    id: u64,
    pipelines: Vec<String>,
    tx: mpsc::UnboundedSender<ModuleOffer>,
}

/// The sink's control plane.
pub struct ControlPlane {
    store: Store,
    admins: Vec<String>,
    agents: Mutex<HashMap<String, AgentConn>>,
    next_id: AtomicU64,
}

/// What went wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The control store could not be opened.
    #[error("control store: {0}")]
    Open(#[from] StoreError),
    /// The control store failed (its writer reopens it).
    #[error("control store: {0}")]
    Storage(redb::Error),
    /// The commit a write joined failed (its writer reopens the store); retry.
    #[error("control store write failed: {0}")]
    Failed(String),
    /// A blocking task of the store panicked or was cancelled.
    #[error("control store task: {0}")]
    Task(String),
    /// The agent's control stream failed.
    #[error("control stream: {0}")]
    Stream(String),
    /// A request or a report was refused, with why (told to the operator or logged).
    #[error("{0}")]
    Refused(String),
}

impl From<String> for ControlError {
    fn from(why: String) -> Self {
        ControlError::Refused(why)
    }
}

impl From<&str> for ControlError {
    fn from(why: &str) -> Self {
        ControlError::Refused(why.into())
    }
}

type Result<T> = std::result::Result<T, ControlError>;

fn decode<T: serde::de::DeserializeOwned + Default>(v: Option<&[u8]>) -> T {
    v.and_then(|b| ciborium::from_reader(b).ok())
        .unwrap_or_default()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Cannot fail: plain structs into a Vec.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

impl ControlPlane {
    /// Opens (or creates) `control.redb` in `data_dir`; `admins` are the client
    /// certificate names allowed to push, roll back and query.
    pub fn open(data_dir: &Path, admins: Vec<String>) -> Result<Arc<ControlPlane>> {
        dataweaver_store::fsmode::data_dir(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.into(),
            source,
        })?;
        ControlPlane::open_on(Medium::File(data_dir.join("control.redb")), admins)
    }

    /// Opens (or creates) the control store on `medium`.
    pub fn open_on(medium: Medium, admins: Vec<String>) -> Result<Arc<ControlPlane>> {
        let store = Store::open(medium)?;
        Ok(Arc::new(ControlPlane {
            store,
            admins,
            agents: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentConn>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn desired(&self, pipeline: &str) -> Result<Desired> {
        let pipeline = pipeline.to_string();
        self.store
            .read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let t = txn.open_table(MODULES).map_err(db_err)?;
                let v = t.get(pipeline.as_str()).map_err(db_err)?;
                Ok(decode(v.as_ref().map(|g| g.value())))
            })
            .await
    }

    async fn set_desired(&self, pipeline: &str, d: Desired) -> Result<()> {
        let pipeline = pipeline.to_string();
        self.store
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(MODULES).map_err(db_err)?;
                t.insert(pipeline.as_str(), encode(&d).as_slice())
                    .map_err(db_err)?;
                Ok(Ok(()))
            }))
            .await
    }

    async fn update_status(
        &self,
        agent: &str,
        pipeline: &str,
        f: impl FnOnce(&mut Status) + Send + 'static,
    ) -> Result<()> {
        let key = format!("{agent}\t{pipeline}");
        let (from, to) = (format!("{agent}\t"), format!("{agent}\n"));
        self.store
            .write(Box::new(move |txn| {
                let mut t = txn.open_table(STATUS).map_err(db_err)?;
                let mut st: Status = {
                    let v = t.get(key.as_str()).map_err(db_err)?;
                    if v.is_none() {
                        let rows = t.range(from.as_str()..to.as_str()).map_err(db_err)?.count();
                        if rows >= MAX_PIPELINES_PER_AGENT {
                            // Refused before anything is written: the group goes on.
                            return Ok(Err(format!(
                                "agent already has {rows} status rows (the most kept per agent)"
                            )
                            .into()));
                        }
                    }
                    decode(v.as_ref().map(|g| g.value()))
                };
                f(&mut st);
                t.insert(key.as_str(), encode(&st).as_slice())
                    .map_err(db_err)?;
                Ok(Ok(()))
            }))
            .await
    }

    /// Serves an agent's control stream (its first frame, `hello`, already read):
    /// offers what it should run, records what it reports.
    pub async fn serve_agent(
        self: Arc<Self>,
        agent: String,
        hello: ControlHello,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<()> {
        let (tx, mut offers) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = ControlSink::new(hello);
        let hello = stream.hello().clone();
        if hello.transforms.len() < stream.announced() {
            tracing::warn!(%agent, announced = stream.announced(), kept = hello.transforms.len(), "agent announced too many transforms or overlong pipeline names; the rest are ignored");
        }
        let pipelines = stream.pipelines();
        self.agents().insert(
            agent.clone(),
            AgentConn {
                id,
                pipelines,
                tx: tx.clone(),
            },
        );
        tracing::info!(%agent, transforms = hello.transforms.len(), "agent control stream open");
        for t in &hello.transforms {
            let version = capped(t.version.clone(), MAX_NAME_BYTES);
            let res = self
                .update_status(&agent, &t.pipeline, move |s| {
                    s.active_version = version;
                    s.at_ms = now_ms();
                })
                .await;
            if let Err(e) = res {
                tracing::warn!(%agent, pipeline = %t.pipeline, error = %e, "agent state not recorded");
            }
            let d = self.desired(&t.pipeline).await?;
            match d.current {
                // A signed order back to the configured module: only agents running a
                // pushed one need it.
                Some(cur) if cur.module.is_empty() && t.pushed => {
                    let _ = tx.send(cur.offer(&t.pipeline));
                }
                Some(cur) if cur.module.is_empty() => {}
                Some(cur) if cur.sha256 != t.sha256 && cur.selects(&agent) => {
                    let _ = tx.send(cur.offer(&t.pipeline));
                }
                _ => {}
            }
        }
        let me = self.clone();
        let reporter = agent.clone();
        let reading = stream.clone();
        let mut reader = tokio::spawn(async move {
            loop {
                match wire::read_frame::<AgentFrame>(&mut recv).await {
                    Ok(Some(frame)) => match reading.handle(frame) {
                        Some(SinkEffect::Outcome(o)) => me.record_outcome(&reporter, o).await,
                        Some(SinkEffect::Unannounced { pipeline }) => {
                            tracing::warn!(agent = %reporter, pipeline = %capped(pipeline, MAX_NAME_BYTES), "outcome for a pipeline the agent did not announce ignored");
                        }
                        None => {}
                    },
                    Ok(None) | Err(_) => return,
                }
            }
        });
        let result = loop {
            tokio::select! {
                offer = offers.recv() => {
                    let Some(o) = offer else { break Ok(()) };
                    let frame = stream.offer(o);
                    if let Err(e) = wire::write_frame(&mut send, &frame).await {
                        break Err(ControlError::Stream(e.to_string()));
                    }
                }
                // The agent closed its side or the connection died.
                _ = &mut reader => break Ok(()),
            }
        };
        reader.abort();
        let mut agents = self.agents();
        if agents.get(&agent).is_some_and(|c| c.id == id) {
            agents.remove(&agent);
        }
        result
    }

    async fn record_outcome(&self, agent: &str, o: ModuleOutcome) {
        let ModuleOutcome {
            pipeline,
            version,
            outcome,
            reason,
            active_version,
            ..
        } = o;
        let version = capped(version, MAX_NAME_BYTES);
        let outcome = capped(outcome, MAX_NAME_BYTES);
        let active_version = capped(active_version, MAX_NAME_BYTES);
        let reason = capped(reason, MAX_REASON_BYTES);
        tracing::info!(%agent, %pipeline, %version, %outcome, %reason, "transform outcome");
        let res = self
            .update_status(agent, &pipeline, move |s| {
                if !active_version.is_empty() {
                    s.active_version = active_version;
                }
                s.last_outcome = format!("{outcome} {version}");
                s.reason = reason;
                s.at_ms = now_ms();
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(%agent, error = %e, "outcome not recorded");
        }
    }

    /// Offers `offer` to every connected agent running `pipeline` (only those in `only`,
    /// if any); how many.
    fn broadcast(&self, pipeline: &str, offer: &ModuleOffer, only: &[String]) -> usize {
        self.agents()
            .iter()
            .filter(|(id, _)| only.is_empty() || only.contains(id))
            .filter(|(_, c)| c.pipelines.iter().any(|p| p == pipeline))
            .filter(|(_, c)| c.tx.send(offer.clone()).is_ok())
            .count()
    }

    /// Carries out an admin request from the client certificate named `peer`.
    pub async fn admin(&self, peer: &str, req: AdminRequest) -> AdminReply {
        if !self.admins.iter().any(|a| a == peer) {
            tracing::warn!(%peer, action = %req.action, "admin request refused: not an admin");
            return reply(
                false,
                format!("`{peer}` is not an admin of this sink (sink config `admins`)"),
            );
        }
        let r = match req.action.as_str() {
            "push" => self.push(req).await,
            "rollback-plan" => self.rollback_plan(&req.pipeline).await,
            "rollback" => self.rollback(req).await,
            "status" => self.status(&req.after).await,
            other => Err(format!("unknown action `{other}`").into()),
        };
        r.unwrap_or_else(|e| reply(false, e.to_string()))
    }

    async fn push(&self, req: AdminRequest) -> Result<AdminReply> {
        let o = req.offer.ok_or("push without a module")?;
        if o.module.is_empty() || o.pipeline.is_empty() || o.version.is_empty() {
            return Err("push needs a module, a pipeline and a version".into());
        }
        let pushed = Pushed {
            version: o.version.clone(),
            sha256: dataweaver_transform::wasm::sha256_hex(&o.module),
            module: o.module.clone(),
            signature: o.signature.clone(),
            key: o.key.clone(),
            vectors: o.vectors.clone(),
            at_ms: now_ms(),
            agents: req.agents.clone(),
            seq: o.seq,
            rollback: false,
        };
        let mut d = self.desired(&o.pipeline).await?;
        if d.current
            .as_ref()
            .is_some_and(|c| c.sha256 != pushed.sha256)
        {
            d.previous = d.current.take();
        }
        d.current = Some(pushed);
        d.configured = false;
        self.set_desired(&o.pipeline, d).await?;
        let n = self.broadcast(&o.pipeline, &o, &req.agents);
        tracing::info!(pipeline = %o.pipeline, version = %o.version, agents = n, only = ?req.agents, "transform pushed");
        let to = if req.agents.is_empty() {
            String::new()
        } else {
            format!(" for agents {}", req.agents.join(", "))
        };
        Ok(reply(
            true,
            format!(
                "{} for pipeline `{}`{to} stored; offered to {n} connected agent(s), later ones get it when they connect",
                o.version, o.pipeline
            ),
        ))
    }

    /// What a rollback of `pipeline` returns to: the pushed version before the current
    /// one, or with none the agents' configured module.
    async fn rollback_target(&self, pipeline: &str) -> Result<(Desired, Option<Pushed>)> {
        let mut d = self.desired(pipeline).await?;
        let to = d.previous.take();
        Ok((d, to))
    }

    /// The target a rollback order must sign, for `transform rollback`.
    async fn rollback_plan(&self, pipeline: &str) -> Result<AdminReply> {
        let (_, to) = self.rollback_target(pipeline).await?;
        let mut r = reply(true, String::new());
        match to {
            Some(p) => {
                r.target = p.sha256;
                r.target_version = p.version;
            }
            None => {
                r.target = super::rollback_target(&[]);
                r.target_version = "the configured module".into();
            }
        }
        Ok(r)
    }

    /// The pushed version before the current one becomes the one to run; with none
    /// before it, agents go back to their configured module. The operator's signed order
    /// is stored and offered, so agents that connect later follow too.
    async fn rollback(&self, req: AdminRequest) -> Result<AdminReply> {
        let pipeline = req.pipeline.as_str();
        let order = req.offer.filter(|o| o.rollback).ok_or(
            "a rollback needs an order signed by a trusted key (`transform rollback --key`)",
        )?;
        let (mut d, to) = self.rollback_target(pipeline).await?;
        // Agents judge trust; the sink only keeps an order that a key already signing
        // this pipeline's pushes made from replacing what it offers.
        let keys: Vec<&str> = d
            .current
            .iter()
            .chain(to.iter())
            .map(|p| p.key.trim())
            .filter(|k| !k.is_empty())
            .collect();
        if !keys.is_empty() && !keys.contains(&order.key.trim()) {
            return Err(format!(
                "the rollback order is signed by {}, a key that signed neither the current push nor the one it returns to: agents would refuse it",
                order.key
            ).into());
        }
        let to = to.unwrap_or_else(|| Pushed {
            version: "the configured module".into(),
            sha256: String::new(),
            module: Vec::new(),
            signature: Vec::new(),
            key: String::new(),
            vectors: Vec::new(),
            at_ms: 0,
            agents: Vec::new(),
            seq: 0,
            rollback: true,
        });
        let pushed = Pushed {
            signature: order.signature,
            key: order.key,
            vectors: Vec::new(),
            at_ms: now_ms(),
            seq: order.seq,
            rollback: true,
            ..to
        };
        let offer = pushed.offer(pipeline);
        if super::verify_offer(&offer).is_err() {
            return Err(format!(
                "the rollback order is not signed for what a rollback of `{pipeline}` returns to now ({}): run `transform rollback` again",
                pushed.version
            ).into());
        }
        let now = pushed.version.clone();
        let only = pushed.agents.clone();
        d.configured = pushed.module.is_empty();
        d.current = Some(pushed);
        self.set_desired(pipeline, d).await?;
        let n = self.broadcast(pipeline, &offer, &only);
        tracing::info!(%pipeline, agents = n, "transform rollback sent");
        Ok(reply(
            true,
            format!(
                "rollback of `{pipeline}` sent to {n} connected agent(s); pushed version now: {now}"
            ),
        ))
    }

    /// One page of status rows: those after the row key `after`, at most
    /// [`STATUS_PAGE_ROWS`] and about [`STATUS_PAGE_BYTES`]; `next` names the last row
    /// when more follow.
    async fn status(&self, after: &str) -> Result<AdminReply> {
        use prost::Message as _;
        let after = after.to_string();
        let (rows, more, desired) = self
            .store
            .read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let t = txn.open_table(STATUS).map_err(db_err)?;
                let mut rows = Vec::new();
                let mut bytes = 0;
                let mut more = false;
                let range = t
                    .range::<&str>((
                        std::ops::Bound::Excluded(after.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .map_err(db_err)?;
                for e in range {
                    if rows.len() >= STATUS_PAGE_ROWS || bytes >= STATUS_PAGE_BYTES {
                        more = true;
                        break;
                    }
                    let (k, v) = e.map_err(db_err)?;
                    let mut st: Status = decode(Some(v.value()));
                    // Rows written before reasons were bounded may be huge.
                    st.reason = capped(st.reason, MAX_REASON_BYTES);
                    st.active_version = capped(st.active_version, MAX_NAME_BYTES);
                    st.last_outcome = capped(st.last_outcome, 2 * MAX_NAME_BYTES);
                    let key = k.value().to_string();
                    bytes += key.len()
                        + st.reason.len()
                        + st.active_version.len()
                        + st.last_outcome.len()
                        + 64;
                    rows.push((key, st));
                }
                let m = txn.open_table(MODULES).map_err(db_err)?;
                let mut desired = HashMap::new();
                for e in m.iter().map_err(db_err)? {
                    let (k, v) = e.map_err(db_err)?;
                    let d: Desired = decode(Some(v.value()));
                    desired.insert(k.value().to_string(), d.current);
                }
                Ok((rows, more, desired))
            })
            .await?;
        let next = if more {
            rows.last().map(|(k, _)| k.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let agents = self.agents();
        let list: Vec<AgentStatus> = rows
            .into_iter()
            .filter_map(|(k, st)| {
                let (agent, pipeline) = k.split_once('\t')?;
                Some(AgentStatus {
                    agent: capped(agent.into(), MAX_NAME_BYTES),
                    pipeline: capped(pipeline.into(), MAX_NAME_BYTES),
                    active_version: st.active_version,
                    last_outcome: st.last_outcome,
                    reason: st.reason,
                    at_ms: st.at_ms,
                    connected: agents.contains_key(agent),
                    desired_version: desired
                        .get(pipeline)
                        .and_then(|c| c.as_ref())
                        .filter(|c| c.selects(agent) && !c.module.is_empty())
                        .map(|c| c.version.clone())
                        .unwrap_or_default(),
                })
            })
            .collect();
        let r = AdminReply {
            ok: true,
            agents: list,
            next,
            ..Default::default()
        };
        debug_assert!(r.encoded_len() < wire::MAX_CONTROL_FRAME);
        Ok(r)
    }
}

fn reply(ok: bool, message: String) -> AdminReply {
    AdminReply {
        ok,
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Issue 12, defect 14: `transform status` answered with every row in one frame
    /// (`frame of 90000409 bytes` after a flood). It is paged now, each page far below
    /// the frame limit, rows written before the bounds cut to size; and one agent gets
    /// at most [`MAX_PIPELINES_PER_AGENT`] rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_is_paged_and_rows_per_agent_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(dir.path(), vec!["admin".into()]).unwrap();
        for a in 0..5 {
            for p in 0..MAX_PIPELINES_PER_AGENT {
                cp.update_status(&format!("agent-{a}"), &format!("p{p:03}"), |s| {
                    s.reason = "r".repeat(MAX_REASON_BYTES)
                })
                .await
                .unwrap();
            }
        }
        assert!(
            cp.update_status("agent-0", "one-more", |_| {})
                .await
                .is_err(),
            "a row past the per-agent bound"
        );
        // A row from before the bounds, with a 10 MB reason.
        cp.store
            .write(Box::new(|txn| {
                let mut t = txn.open_table(STATUS).map_err(db_err)?;
                let st = Status {
                    reason: "x".repeat(10 << 20),
                    ..Default::default()
                };
                t.insert("old\tapp", encode(&st).as_slice())
                    .map_err(db_err)?;
                Ok(Ok(()))
            }))
            .await
            .unwrap();
        let (mut after, mut rows, mut pages) = (String::new(), Vec::new(), 0);
        loop {
            let r = cp.status(&after).await.unwrap();
            assert!(r.encoded_len() < wire::MAX_CONTROL_FRAME / 16);
            pages += 1;
            rows.extend(
                r.agents
                    .into_iter()
                    .map(|a| (a.agent, a.pipeline, a.reason.len())),
            );
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        assert_eq!(rows.len(), 5 * MAX_PIPELINES_PER_AGENT + 1);
        assert!(pages >= 2, "{pages} pages");
        let mut unique = rows.clone();
        unique.dedup();
        assert_eq!(unique.len(), rows.len(), "no row twice");
        assert!(rows.iter().all(|r| r.2 <= MAX_REASON_BYTES + 3));
    }

    /// One failed write left the control store failing for good: redb latches an I/O
    /// error until the database is closed, and nothing closed it. Now its writer reopens
    /// it, and the writes after that go through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_store_recovers_after_a_failed_write() {
        use dataweaver_store::{Fault, SimDisk};
        let disk = SimDisk::new();
        let cp = ControlPlane::open_on(Medium::Sim(disk.clone()), vec![]).unwrap();
        cp.update_status("a", "p", |s| s.reason = "one".into())
            .await
            .unwrap();
        disk.fail_next(1, Fault::Io);
        assert!(cp.update_status("a", "p", |_| {}).await.is_err());
        let start = std::time::Instant::now();
        while cp.store.slot.reopens() == 0 {
            assert!(start.elapsed().as_secs() < 10, "the store was not reopened");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        cp.update_status("a", "p", |s| s.reason = "two".into())
            .await
            .expect("the store was reopened");
        let r = cp.status("").await.unwrap();
        assert_eq!(r.agents.len(), 1);
        assert_eq!(r.agents[0].reason, "two");
    }
}
