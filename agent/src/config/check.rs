//! Stage two of reading a config: what serde cannot check (non-empty lists, readable
//! files, sane limits), every problem collected rather than the first.

use super::*;

/// Largest record or batch a config may ask for: half a wire frame, leaving room for the
/// per-record envelope.
pub const MAX_RECORD_BYTES: usize = crate::wire::MAX_FRAME / 2;

/// A problem found by validation: `(dotted key path, message)`.
pub type Invalid = (String, String);

/// The problems found so far; one per key (the first), in the order found.
#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn push(&mut self, key: String, message: String) {
        if !self.0.iter().any(|(k, _)| *k == key) {
            self.0.push((key, message));
        }
    }

    fn nonzero(&mut self, key: &str, v: usize) {
        if v == 0 {
            self.push(key.into(), "must be greater than 0".into());
        }
    }

    fn finish(self) -> Result<(), Vec<Invalid>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

impl AgentConfig {
    /// Checks what serde cannot; the errors are `(key path, message)`, every one found.
    pub fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut found = Problems::default();
        let found = &mut found;
        let f = &self.forward;
        if f.sinks.is_empty() {
            found.push(
                "forward.sinks".into(),
                "at least one sink address is needed".into(),
            );
        }
        for (i, s) in f.sinks.iter().enumerate() {
            if !s.contains(':') {
                found.push(
                    format!("forward.sinks[{i}]"),
                    format!("`{s}` is not host:port"),
                );
            }
        }
        found.nonzero("forward.window", f.window);
        found.nonzero("forward.batch_max_records", f.batch_max_records);
        found.nonzero("forward.batch_max_bytes", f.batch_max_bytes);
        found.nonzero("forward.ack_timeout_ms", f.ack_timeout_ms as usize);
        found.nonzero("forward.connect_timeout_ms", f.connect_timeout_ms as usize);
        found.nonzero("forward.failover_after", f.failover_after as usize);
        found.nonzero("forward.failback_after_ms", f.failback_after_ms as usize);
        // A batch (and so a single record) must fit in one wire frame.
        if f.batch_max_bytes > MAX_RECORD_BYTES {
            found.push(
                "forward.batch_max_bytes".into(),
                format!("at most {MAX_RECORD_BYTES}"),
            );
        }
        if f.reconnect_min_ms == 0 || f.reconnect_min_ms > f.reconnect_max_ms {
            found.push(
                "forward.reconnect_min_ms".into(),
                "must be > 0 and <= reconnect_max_ms".into(),
            );
        }
        check_tls(found, "forward.tls", &f.tls);
        found.nonzero("queue.max_bytes", self.queue.max_bytes as usize);
        found.nonzero("queue.commit_max_records", self.queue.commit_max_records);
        found.nonzero("queue.commit_max_bytes", self.queue.commit_max_bytes);
        if self.pipelines.is_empty() {
            found.push("pipelines".into(), "at least one pipeline is needed".into());
        }
        for (i, k) in self.control.trusted_keys.iter().enumerate() {
            if let Err(e) = crate::control::parse_public_key(k) {
                found.push(format!("control.trusted_keys[{i}]"), e);
            }
        }
        let c = &self.control;
        if c.rollback_window_batches == 0 || !(0.0..1.0).contains(&c.rollback_failed_share) {
            found.push(
                "control.rollback_failed_share".into(),
                "needs rollback_window_batches > 0 and a share in [0, 1)".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            if !names.insert(&p.name) {
                found.push(
                    format!("pipelines[{i}].name"),
                    format!("duplicate pipeline `{}`", p.name),
                );
            }
            if p.sources.is_empty() {
                found.push(
                    format!("pipelines[{i}].sources"),
                    "at least one source is needed".into(),
                );
            }
            let mut transform_names = std::collections::HashSet::new();
            for (j, t) in p.transforms.iter().enumerate() {
                let key = format!("pipelines[{i}].transforms[{j}]");
                if !transform_names.insert(t.name()) {
                    found.push(
                        format!("{key}.name"),
                        format!("duplicate transform name `{}`", t.name()),
                    );
                }
                if !t.module.is_file() {
                    found.push(
                        format!("{key}.module"),
                        format!("no such file: {}", t.module.display()),
                    );
                }
                found.nonzero(&format!("{key}.deadline_ms"), t.deadline_ms as usize);
                found.nonzero(&format!("{key}.batch_max_records"), t.batch_max_records);
                if t.memory_max_bytes < (1 << 20) {
                    found.push(format!("{key}.memory_max_bytes"), "at least 1 MiB".into());
                }
                // Guest code runs on the agent's own threads (2 MiB stacks): a WebAssembly
                // stack limit near that would overrun the native stack instead of trapping.
                if t.max_stack_bytes < (64 << 10) || t.max_stack_bytes > (1 << 20) {
                    found.push(
                        format!("{key}.max_stack_bytes"),
                        "between 64 KiB and 1 MiB".into(),
                    );
                }
                for (k, d) in t.wasi.iter().flat_map(|w| w.dirs.iter()).enumerate() {
                    if !d.host.is_dir() {
                        found.push(
                            format!("{key}.wasi.dirs[{k}].host"),
                            format!("no such directory: {}", d.host.display()),
                        );
                    }
                }
            }
            let mut source_names = std::collections::HashSet::new();
            for (j, s) in p.sources.iter().enumerate() {
                if !source_names.insert(s.name()) {
                    found.push(
                        format!("pipelines[{i}].sources[{j}].name"),
                        format!(
                            "duplicate source name `{}` in pipeline `{}` (checkpoints are kept per source name)",
                            s.name(),
                            p.name
                        ),
                    );
                }
                let key = format!("pipelines[{i}].sources[{j}]");
                let fc = match s {
                    SourceConfig::File(fc) => fc,
                    SourceConfig::Tcp(n) | SourceConfig::Udp(n) => {
                        found.nonzero(&format!("{key}.max_line_bytes"), n.max_line_bytes);
                        if n.max_line_bytes > MAX_RECORD_BYTES {
                            found.push(
                                format!("{key}.max_line_bytes"),
                                format!("at most {MAX_RECORD_BYTES}"),
                            );
                        }
                        found.nonzero(&format!("{key}.buffer_records"), n.buffer_records);
                        continue;
                    }
                    SourceConfig::Stdin(n) => {
                        found.nonzero(&format!("{key}.max_line_bytes"), n.max_line_bytes);
                        continue;
                    }
                    SourceConfig::HostMetrics(h) => {
                        found.nonzero(&format!("{key}.interval_secs"), h.interval_secs as usize);
                        continue;
                    }
                    SourceConfig::Mqtt(m) => {
                        check_mqtt(found, &key, m);
                        continue;
                    }
                    SourceConfig::Http(h) => {
                        found.nonzero(&format!("{key}.max_body_bytes"), h.max_body_bytes);
                        if !h.path.starts_with('/') {
                            found.push(format!("{key}.path"), "must start with /".into());
                        }
                        if h.auth_token.as_deref() == Some("") {
                            found.push(format!("{key}.auth_token"), "must not be empty".into());
                        }
                        continue;
                    }
                };
                if fc.include.is_empty() {
                    found.push(
                        format!("{key}.include"),
                        "at least one glob is needed".into(),
                    );
                }
                for (k, g) in fc.include.iter().chain(&fc.exclude).enumerate() {
                    if let Err(e) = glob::Pattern::new(g) {
                        let (list, k) = match k.checked_sub(fc.include.len()) {
                            None => ("include", k),
                            Some(k) => ("exclude", k),
                        };
                        found.push(format!("{key}.{list}[{k}]"), format!("bad glob `{g}`: {e}"));
                    }
                }
                found.nonzero(
                    &format!("{key}.poll_interval_ms"),
                    fc.poll_interval_ms as usize,
                );
                found.nonzero(&format!("{key}.max_line_bytes"), fc.max_line_bytes);
                if fc.max_line_bytes > MAX_RECORD_BYTES {
                    found.push(
                        format!("{key}.max_line_bytes"),
                        format!("at most {MAX_RECORD_BYTES}"),
                    );
                }
                found.nonzero(&format!("{key}.read_chunk_bytes"), fc.read_chunk_bytes);
            }
        }
        in_ranges(found, self.bounds());
        std::mem::take(found).finish()
    }
}

impl SinkConfig {
    /// Checks what serde cannot; the errors are `(key path, message)`, every one found.
    pub fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut found = Problems::default();
        let found = &mut found;
        check_tls(found, "tls", &self.tls);
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_agent",
                l.max_connections_per_agent,
            ),
            ("limits.max_streams_per_agent", l.max_streams_per_agent),
            ("limits.max_streams", l.max_streams),
            ("limits.max_queues_per_agent", l.max_queues_per_agent),
        ] {
            if v == 0 || v > 1_000_000 {
                found.push(key.into(), "must be between 1 and 1000000".into());
            }
        }
        if self.outputs.is_empty() {
            found.push("outputs".into(), "at least one output is needed".into());
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if let OutputConfig::Jsonl(j) = o
                && j.max_file_bytes < 4096
            {
                found.push(
                    format!("outputs[{i}].max_file_bytes"),
                    "must be at least 4096".into(),
                );
            }
            if let OutputConfig::Jsonl(j) = o
                && let Err(e) = crate::fsmode::parse_mode(&j.file_mode)
            {
                found.push(format!("outputs[{i}].file_mode"), e);
            }
        }
        in_ranges(found, self.bounds());
        std::mem::take(found).finish()
    }
}

fn check_mqtt(found: &mut Problems, key: &str, m: &MqttSourceConfig) {
    match m
        .broker
        .rsplit_once(':')
        .map(|(h, port)| (h, port.parse::<u16>()))
    {
        Some((h, Ok(_))) if !h.is_empty() => {}
        _ => {
            found.push(
                format!("{key}.broker"),
                format!("`{}` is not host:port", m.broker),
            );
        }
    }
    if m.client_id.is_empty() {
        found.push(format!("{key}.client_id"), "must not be empty".into());
    }
    if m.topics.is_empty() {
        found.push(format!("{key}.topics"), "at least one topic filter".into());
    }
    for (i, t) in m.topics.iter().enumerate() {
        if t.filter.is_empty() {
            found.push(
                format!("{key}.topics[{i}].filter"),
                "must not be empty".into(),
            );
        }
    }
    found.nonzero(
        &format!("{key}.keep_alive_secs"),
        m.keep_alive_secs as usize,
    );
    if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
        found.push(
            format!("{key}.reconnect_min_ms"),
            "must be > 0 and <= reconnect_max_ms".into(),
        );
    }
    if m.password.is_some() && m.username.is_none() {
        found.push(format!("{key}.password"), "needs a username".into());
    }
    if let Some(t) = &m.tls {
        if !t.ca.is_file() {
            found.push(
                format!("{key}.tls.ca"),
                format!("no such file: {}", t.ca.display()),
            );
        }
        if t.cert.is_some() != t.key.is_some() {
            found.push(format!("{key}.tls.cert"), "cert and key go together".into());
        }
    }
}

fn check_tls(found: &mut Problems, key: &str, tls: &TlsFiles) {
    for (name, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if !file.is_file() {
            found.push(
                format!("{key}.{name}"),
                format!("no such file: {}", file.display()),
            );
        }
    }
}

/// One bounded key of a config: `(key path, value, min, max)`.
pub(super) type Bound = (String, u64, u64, u64);

const MS_HOUR: u64 = 3_600_000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Every value within its range. The ranges are wide: they only keep out what breaks the
/// agent (a linger of 292 million years that hangs the writer, a timeout of 0, a size no
/// machine has), not unusual tuning.
fn in_ranges(found: &mut Problems, bounds: Vec<Bound>) {
    for (key, v, min, max) in bounds {
        if !(min..=max).contains(&v) {
            found.push(
                key,
                format!("{v} is out of range: must be between {min} and {max}"),
            );
        }
    }
}

impl AgentConfig {
    /// The range of every duration, size and count key.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        let record = MAX_RECORD_BYTES as u64;
        let (f, q) = (&self.forward, &self.queue);
        let mut b: Vec<Bound> = vec![
            ("forward.window".into(), f.window as u64, 1, 1024),
            (
                "forward.batch_max_records".into(),
                f.batch_max_records as u64,
                1,
                1_000_000,
            ),
            (
                "forward.batch_max_bytes".into(),
                f.batch_max_bytes as u64,
                1,
                record,
            ),
            (
                "forward.reconnect_min_ms".into(),
                f.reconnect_min_ms,
                1,
                MS_HOUR,
            ),
            (
                "forward.reconnect_max_ms".into(),
                f.reconnect_max_ms,
                1,
                MS_HOUR,
            ),
            (
                "forward.idle_timeout_ms".into(),
                f.idle_timeout_ms,
                100,
                MS_HOUR,
            ),
            (
                "forward.ack_timeout_ms".into(),
                f.ack_timeout_ms,
                100,
                MS_HOUR,
            ),
            (
                "forward.connect_timeout_ms".into(),
                f.connect_timeout_ms,
                10,
                10 * 60_000,
            ),
            (
                "forward.failover_after".into(),
                f.failover_after.into(),
                1,
                1000,
            ),
            (
                "forward.failback_after_ms".into(),
                f.failback_after_ms,
                1,
                24 * MS_HOUR,
            ),
            ("queue.max_bytes".into(), q.max_bytes, 4096, 16 * TIB),
            (
                "queue.disk_reserve_bytes".into(),
                q.disk_reserve_bytes,
                0,
                TIB,
            ),
            (
                "queue.commit_max_records".into(),
                q.commit_max_records as u64,
                1,
                1_000_000,
            ),
            (
                "queue.commit_max_bytes".into(),
                q.commit_max_bytes as u64,
                1,
                GIB,
            ),
            (
                "queue.commit_linger_ms".into(),
                q.commit_linger_ms,
                0,
                10_000,
            ),
            (
                "admin.ready_sink_down_secs".into(),
                self.admin.ready_sink_down_secs,
                1,
                7 * 86_400,
            ),
            (
                "control.rollback_window_batches".into(),
                self.control.rollback_window_batches.into(),
                1,
                100_000,
            ),
        ];
        for (i, p) in self.pipelines.iter().enumerate() {
            for (j, t) in p.transforms.iter().enumerate() {
                let key = |k: &str| format!("pipelines[{i}].transforms[{j}].{k}");
                b.extend([
                    (key("memory_max_bytes"), t.memory_max_bytes, MIB, 4 * GIB),
                    (key("deadline_ms"), t.deadline_ms, 1, 600_000),
                    (key("output_max_bytes"), t.output_max_bytes, 1, GIB),
                    (
                        key("max_stack_bytes"),
                        t.max_stack_bytes as u64,
                        64 << 10,
                        MIB,
                    ),
                    (
                        key("batch_max_records"),
                        t.batch_max_records as u64,
                        1,
                        65_536,
                    ),
                ]);
            }
            for (j, s) in p.sources.iter().enumerate() {
                let key = |k: &str| format!("pipelines[{i}].sources[{j}].{k}");
                match s {
                    SourceConfig::File(c) => b.extend([
                        (key("poll_interval_ms"), c.poll_interval_ms, 1, MS_HOUR),
                        (key("max_line_bytes"), c.max_line_bytes as u64, 1, record),
                        (
                            key("read_chunk_bytes"),
                            c.read_chunk_bytes as u64,
                            1,
                            64 * MIB,
                        ),
                        (
                            key("rescan_interval_ms"),
                            c.rescan_interval_ms,
                            1,
                            24 * MS_HOUR,
                        ),
                        (key("max_open_files"), c.max_open_files as u64, 1, 1 << 20),
                    ]),
                    SourceConfig::Tcp(c) | SourceConfig::Udp(c) => b.extend([
                        (key("max_line_bytes"), c.max_line_bytes as u64, 1, record),
                        (key("buffer_records"), c.buffer_records as u64, 1, 1 << 24),
                        (key("max_connections"), c.max_connections as u64, 1, 65_536),
                    ]),
                    SourceConfig::Stdin(c) => {
                        b.push((key("max_line_bytes"), c.max_line_bytes as u64, 1, record))
                    }
                    SourceConfig::Http(c) => b.extend([
                        (key("max_body_bytes"), c.max_body_bytes as u64, 1, GIB),
                        (
                            key("header_read_timeout_ms"),
                            c.header_read_timeout_ms,
                            100,
                            MS_HOUR,
                        ),
                        (
                            key("body_read_timeout_ms"),
                            c.body_read_timeout_ms,
                            100,
                            MS_HOUR,
                        ),
                        (key("max_connections"), c.max_connections as u64, 1, 65_536),
                    ]),
                    SourceConfig::HostMetrics(c) => {
                        b.push((key("interval_secs"), c.interval_secs, 1, 86_400))
                    }
                    // MQTT carries keep-alive as 16-bit seconds.
                    SourceConfig::Mqtt(c) => {
                        b.extend([
                            (
                                key("keep_alive_secs"),
                                c.keep_alive_secs,
                                1,
                                u16::MAX.into(),
                            ),
                            (key("reconnect_min_ms"), c.reconnect_min_ms, 1, MS_HOUR),
                            (key("reconnect_max_ms"), c.reconnect_max_ms, 1, MS_HOUR),
                        ]);
                        for (t, topic) in c.topics.iter().enumerate() {
                            b.push((key(&format!("topics[{t}].qos")), topic.qos.into(), 0, 2));
                        }
                    }
                }
            }
        }
        b
    }
}

impl SinkConfig {
    /// The range of every duration and size key.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        let mut b: Vec<Bound> = vec![
            ("idle_timeout_ms".into(), self.idle_timeout_ms, 100, MS_HOUR),
            (
                "admin.ready_sink_down_secs".into(),
                self.admin.ready_sink_down_secs,
                1,
                7 * 86_400,
            ),
        ];
        let l = &self.limits;
        for (k, v, max) in [
            ("max_connections", l.max_connections, 1 << 20),
            (
                "max_connections_per_agent",
                l.max_connections_per_agent,
                1 << 16,
            ),
            ("max_streams_per_agent", l.max_streams_per_agent, 1 << 16),
            ("max_streams", l.max_streams, 1 << 20),
            ("max_queues_per_agent", l.max_queues_per_agent, 1 << 16),
        ] {
            b.push((format!("limits.{k}"), v as u64, 1, max));
        }
        // At least one frame of the largest size must fit, else a stream could wait forever.
        for (k, v) in [
            ("max_frame_bytes_per_agent", l.max_frame_bytes_per_agent),
            ("max_frame_bytes", l.max_frame_bytes),
        ] {
            b.push((
                format!("limits.{k}"),
                v,
                crate::wire::MAX_FRAME as u64,
                1 << 40,
            ));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if let OutputConfig::Jsonl(j) = o {
                b.push((
                    format!("outputs[{i}].max_file_bytes"),
                    j.max_file_bytes,
                    4096,
                    TIB,
                ));
            }
        }
        b
    }
}
