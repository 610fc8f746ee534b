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

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::now_ms;
use crate::wire::{
    self, AdminReply, AdminRequest, AgentFrame, AgentStatus, ControlHello, ModuleOffer,
    ModuleOutcome, SinkFrame, agent_frame, sink_frame,
};

/// Pushed modules by pipeline: CBOR [`Desired`].
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Reports by `agent \t pipeline`: CBOR [`Status`].
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_status");

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
        }
    }
}

/// A connected agent's control stream.
struct AgentConn {
    id: u64,
    pipelines: Vec<String>,
    tx: mpsc::UnboundedSender<ModuleOffer>,
}

/// The sink's control plane.
pub struct ControlPlane {
    db: Arc<Database>,
    admins: Vec<String>,
    agents: Mutex<HashMap<String, AgentConn>>,
    next_id: AtomicU64,
}

/// Store errors, as text for the operator.
type Result<T> = std::result::Result<T, String>;

fn db_err(e: impl std::fmt::Display) -> String {
    format!("control store: {e}")
}

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
        std::fs::create_dir_all(data_dir).map_err(db_err)?;
        let db = Database::create(data_dir.join("control.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(MODULES).map_err(db_err)?;
        txn.open_table(STATUS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Arc::new(ControlPlane {
            db: Arc::new(db),
            admins,
            agents: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentConn>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(db_err)?
    }

    async fn desired(&self, pipeline: &str) -> Result<Desired> {
        let pipeline = pipeline.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(MODULES).map_err(db_err)?;
            let v = t.get(pipeline.as_str()).map_err(db_err)?;
            Ok(decode(v.as_ref().map(|g| g.value())))
        })
        .await
    }

    async fn set_desired(&self, pipeline: &str, d: Desired) -> Result<()> {
        let pipeline = pipeline.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(MODULES).map_err(db_err)?;
                t.insert(pipeline.as_str(), encode(&d).as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn update_status(
        &self,
        agent: &str,
        pipeline: &str,
        f: impl FnOnce(&mut Status) + Send + 'static,
    ) -> Result<()> {
        let key = format!("{agent}\t{pipeline}");
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(STATUS).map_err(db_err)?;
                let mut st: Status = {
                    let v = t.get(key.as_str()).map_err(db_err)?;
                    decode(v.as_ref().map(|g| g.value()))
                };
                f(&mut st);
                t.insert(key.as_str(), encode(&st).as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
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
        let pipelines: Vec<String> = hello
            .transforms
            .iter()
            .map(|t| t.pipeline.clone())
            .collect();
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
            let version = t.version.clone();
            self.update_status(&agent, &t.pipeline, move |s| {
                s.active_version = version;
                s.at_ms = now_ms();
            })
            .await?;
            let d = self.desired(&t.pipeline).await?;
            match d.current {
                Some(cur) if cur.sha256 != t.sha256 && cur.selects(&agent) => {
                    let _ = tx.send(cur.offer(&t.pipeline));
                }
                None if d.configured && t.pushed => {
                    let _ = tx.send(revert_order(&t.pipeline));
                }
                _ => {}
            }
        }
        let me = self.clone();
        let reporter = agent.clone();
        let mut reader = tokio::spawn(async move {
            loop {
                match wire::read_frame::<AgentFrame>(&mut recv).await {
                    Ok(Some(AgentFrame {
                        kind: Some(agent_frame::Kind::Outcome(o)),
                    })) => me.record_outcome(&reporter, o).await,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        });
        let result = loop {
            tokio::select! {
                offer = offers.recv() => {
                    let Some(o) = offer else { break Ok(()) };
                    let frame = SinkFrame { kind: Some(sink_frame::Kind::Offer(o)) };
                    if let Err(e) = wire::write_frame(&mut send, &frame).await {
                        break Err(e.to_string());
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
        tracing::info!(%agent, pipeline = %o.pipeline, version = %o.version, outcome = %o.outcome, reason = %o.reason, "transform outcome");
        let ModuleOutcome {
            pipeline,
            version,
            outcome,
            reason,
            active_version,
            ..
        } = o;
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
            "rollback" => self.rollback(&req.pipeline).await,
            "status" => self.status().await,
            other => Err(format!("unknown action `{other}`")),
        };
        r.unwrap_or_else(|e| reply(false, e))
    }

    async fn push(&self, req: AdminRequest) -> Result<AdminReply> {
        let o = req.offer.ok_or("push without a module")?;
        if o.module.is_empty() || o.pipeline.is_empty() || o.version.is_empty() {
            return Err("push needs a module, a pipeline and a version".into());
        }
        let pushed = Pushed {
            version: o.version.clone(),
            sha256: crate::transform::wasm::sha256_hex(&o.module),
            module: o.module.clone(),
            signature: o.signature.clone(),
            key: o.key.clone(),
            vectors: o.vectors.clone(),
            at_ms: now_ms(),
            agents: req.agents.clone(),
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

    /// The pushed version before the current one becomes the one to run (offered like a
    /// push); with none before it, agents go back to their configured module. Both are
    /// stored, so agents that connect later follow too.
    async fn rollback(&self, pipeline: &str) -> Result<AdminReply> {
        let mut d = self.desired(pipeline).await?;
        d.current = d.previous.take();
        d.configured = d.current.is_none();
        let (now, order, only) = match &d.current {
            Some(c) => (c.version.clone(), c.offer(pipeline), c.agents.clone()),
            None => (
                "the configured module".to_string(),
                revert_order(pipeline),
                Vec::new(),
            ),
        };
        self.set_desired(pipeline, d).await?;
        let n = self.broadcast(pipeline, &order, &only);
        tracing::info!(%pipeline, agents = n, "transform rollback sent");
        Ok(reply(
            true,
            format!(
                "rollback of `{pipeline}` sent to {n} connected agent(s); pushed version now: {now}"
            ),
        ))
    }

    async fn status(&self) -> Result<AdminReply> {
        let (rows, desired) = self
            .blocking(|db| {
                let txn = db.begin_read().map_err(db_err)?;
                let t = txn.open_table(STATUS).map_err(db_err)?;
                let mut rows = Vec::new();
                for e in t.iter().map_err(db_err)? {
                    let (k, v) = e.map_err(db_err)?;
                    let st: Status = decode(Some(v.value()));
                    rows.push((k.value().to_string(), st));
                }
                let m = txn.open_table(MODULES).map_err(db_err)?;
                let mut desired = HashMap::new();
                for e in m.iter().map_err(db_err)? {
                    let (k, v) = e.map_err(db_err)?;
                    let d: Desired = decode(Some(v.value()));
                    desired.insert(k.value().to_string(), d.current);
                }
                Ok((rows, desired))
            })
            .await?;
        let agents = self.agents();
        let list = rows
            .into_iter()
            .filter_map(|(k, st)| {
                let (agent, pipeline) = k.split_once('\t')?;
                Some(AgentStatus {
                    agent: agent.into(),
                    pipeline: pipeline.into(),
                    active_version: st.active_version,
                    last_outcome: st.last_outcome,
                    reason: st.reason,
                    at_ms: st.at_ms,
                    connected: agents.contains_key(agent),
                    desired_version: desired
                        .get(pipeline)
                        .and_then(|c| c.as_ref())
                        .filter(|c| c.selects(agent))
                        .map(|c| c.version.clone())
                        .unwrap_or_default(),
                })
            })
            .collect();
        Ok(AdminReply {
            ok: true,
            message: String::new(),
            agents: list,
        })
    }
}

/// An offer without a module: back to the configured module.
fn revert_order(pipeline: &str) -> ModuleOffer {
    ModuleOffer {
        pipeline: pipeline.into(),
        ..Default::default()
    }
}

fn reply(ok: bool, message: String) -> AdminReply {
    AdminReply {
        ok,
        message,
        agents: Vec::new(),
    }
}
