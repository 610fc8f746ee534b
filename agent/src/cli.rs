//! Command-line parsing and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataweaver::config::{self, Kind};
use dataweaver::tls;

/// DataWeaver: collect, transform, queue durably, forward over QUIC.
#[derive(Parser)]
#[command(name = "dataweaver", version, about)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `dataweaver=debug`; overrides the
    /// config's `log.level`, and `RUST_LOG` overrides it.
    #[arg(long, global = true, env = "DATAWEAVER_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge agent.
    Agent {
        /// Agent config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the central sink.
    Sink {
        /// Sink config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a sink and an agent on loopback with generated certificates: the quick start.
    Up {
        /// Working directory for certificates, configs, data, input and output.
        #[arg(long, default_value = "dataweaver-up")]
        dir: PathBuf,
        /// UDP port of the local sink (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Show a running agent's (or sink's) figures, refreshed every second.
    Status {
        /// Its admin endpoint.
        #[arg(long, default_value = "127.0.0.1:7410")]
        admin: String,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
    },
    /// Install, remove, start, stop or query the system service (systemd, launchd, or the
    /// Windows service manager).
    Service {
        /// What to do.
        #[arg(value_enum)]
        action: crate::install::Action,
        /// Agent or sink.
        #[arg(long, value_enum, default_value = "agent")]
        kind: crate::install::Kind,
        /// The config the service runs with (install).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The account it runs as (systemd, launchd).
        #[arg(long, default_value = "dataweaver")]
        user: String,
        /// With install: print the definition for this OS (systemd unit, launchd plist)
        /// instead of installing it.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "current")]
        print: Option<PrintFor>,
    },
    /// Check a config file and exit.
    Validate {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Which kind it is (default: guessed from its keys).
        #[arg(long, value_parser = ["agent", "sink"])]
        kind: Option<String>,
    },
    /// Print the configuration reference: every key of the agent's and the sink's config
    /// with its type, default, range and meaning (Markdown; `docs/config.md`).
    ConfigReference,
    /// Make a CA and certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Work with WASM transform modules.
    Transform {
        #[command(subcommand)]
        command: TransformCommand,
    },
    /// Inspect an agent's queue (with the agent stopped: the file is locked while it runs).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Verify the queue file: redb integrity, then every stored chunk decoded.
    Check {
        /// The agent's data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Depth, bytes, oldest record, dead letters and drop counters.
    Stats {
        /// The agent's data directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write every queued record, then every dead letter, as NDJSON to stdout; what could
    /// not be read is listed on stderr (exit 1).
    Export {
        /// The agent's data directory.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        dir: Option<PathBuf>,
        /// A queue file set aside as corrupt (`queue.redb.corrupt-*`): salvage what still
        /// decodes, without changing it.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run a module over NDJSON records and print what it makes of them (no agent needed).
    Test {
        /// The component (`.wasm`).
        #[arg(long)]
        module: PathBuf,
        /// The module's settings: a TOML table or, for `.json` files, a JSON object.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records, one per line (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Records per guest call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Memory cap in bytes.
        #[arg(long, default_value_t = 64 << 20)]
        memory_max_bytes: u64,
        /// Time limit per call, ms.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
    },
    /// Make an ed25519 signing key pair: NAME.key (private, 0600) and NAME.pub.
    Keygen {
        /// Directory for the files.
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        /// File name stem.
        #[arg(long, default_value = "signing")]
        name: String,
    },
    /// Sign a module for a pipeline and version; writes MODULE.sig (JSON).
    Sign {
        /// The component (`.wasm`).
        #[arg(long)]
        module: PathBuf,
        /// Pipeline it is for.
        #[arg(long)]
        pipeline: String,
        /// Version it carries.
        #[arg(long)]
        version: String,
        /// The private key (`transform keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signature (default: MODULE.sig).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The NDJSON self-check vectors the push will carry (signed too).
        #[arg(long)]
        vectors: Option<PathBuf>,
        /// Sequence number: agents take only offers above the last one they took for
        /// the pipeline (default: ms since the epoch).
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Push a signed module through a sink to every agent running a pipeline.
    Push {
        #[command(flatten)]
        admin: AdminArgs,
        /// Pipeline whose (first) transform it replaces.
        #[arg(long)]
        pipeline: String,
        /// The component (`.wasm`).
        #[arg(long)]
        module: PathBuf,
        /// Version it carries.
        #[arg(long)]
        version: String,
        /// Sign with this private key now...
        #[arg(long, conflicts_with = "signature")]
        key: Option<PathBuf>,
        /// ...or use a signature made by `transform sign`.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// NDJSON records for the agents' self-check (default: their recent input).
        #[arg(long)]
        vectors: Option<PathBuf>,
        /// Only this agent (its certificate name); repeat for several. A canary: the
        /// others keep what they run until a push without `--agent`.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Sequence number when signing with `--key` (default: ms since the epoch).
        #[arg(long, requires = "key")]
        seq: Option<u64>,
    },
    /// Return the agents of a pipeline to the version before the current one (an order
    /// signed with a trusted key).
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// Pipeline.
        #[arg(long)]
        pipeline: String,
        /// The private key that signs the order (`transform keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Sequence number (default: ms since the epoch).
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Per agent and pipeline: the active version and the last outcome.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which OS's service definition `service install --print` shows.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PrintFor {
    /// This machine's.
    Current,
    /// A systemd unit.
    Linux,
    /// A launchd plist.
    Macos,
}

/// How an operator reaches a sink: its address and an admin client certificate.
#[derive(clap::Args)]
struct AdminArgs {
    /// The sink, `host:port`.
    #[arg(long)]
    sink: String,
    /// Name on the sink's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Directory with `ca.pem` and the admin's `NAME.pem` / `NAME.key`.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// The admin certificate's name (listed in the sink's `admins`).
    #[arg(long, default_value = "admin")]
    name: String,
}

impl AdminArgs {
    fn target(&self) -> dataweaver::control::admin::AdminTarget {
        dataweaver::control::admin::AdminTarget {
            sink: self.sink.clone(),
            server_name: self.server_name.clone(),
            ca: self.certs.join("ca.pem"),
            cert: self.certs.join(format!("{}.pem", self.name)),
            key: self.certs.join(format!("{}.key", self.name)),
        }
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA (`ca.pem`, `ca.key`) in a directory.
    Init {
        /// Where the CA goes.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue `NAME.pem` and `NAME.key` signed by the CA in `--dir`.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate name: the agent id for agent certificates.
        #[arg(long)]
        name: String,
        /// Issue a sink (server) certificate instead of an agent (client) one.
        #[arg(long)]
        sink: bool,
        /// Host names or IPs the certificate is valid for (sink default: localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace an existing `NAME.key` and `NAME.pem` (the CA's files never).
        #[arg(long)]
        force: bool,
    },
}

/// Parses the command line and runs the chosen command.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // Agent and sink log as their config says; other commands to stderr.
    let log_cfg = match &cli.command {
        Command::Agent { config } => Some(config::load_agent(config)?.log),
        Command::Sink { config } => Some(config::load_sink(config)?.log),
        _ => None,
    };
    let _log_guard = crate::logs::init(cli.log.as_deref(), &log_cfg.unwrap_or_default())?;
    if matches!(cli.command, Command::Agent { .. } | Command::Sink { .. }) {
        dataweaver::fsmode::owner_only_umask();
    }
    match cli.command {
        Command::Agent { config } => {
            runtime()?.block_on(crate::service::run_agent(config))?;
        }
        Command::Sink { config } => {
            runtime()?.block_on(crate::service::run_sink(config))?;
        }
        Command::Status { admin, once } => return crate::status::run(&admin, once),
        Command::Service {
            action,
            kind,
            config,
            user,
            print,
        } => {
            let print = print.map(|p| match p {
                PrintFor::Current => crate::install::Os::current(),
                PrintFor::Linux => crate::install::Os::Linux,
                PrintFor::Macos => crate::install::Os::Macos,
            });
            return crate::install::service(action, kind, config.as_deref(), &user, print);
        }
        Command::Up { dir, port } => runtime()?.block_on(crate::up::run(
            &dir,
            port,
            crate::service::shutdown_signal(),
        ))?,
        Command::ConfigReference => print!("{}", config::reference()),
        Command::Validate { config, kind } => {
            let kind = match kind.as_deref() {
                Some("sink") => Kind::Sink,
                Some(_) => Kind::Agent,
                None => config::detect_kind(&config)?,
            };
            match kind {
                Kind::Agent => {
                    let c = config::load_agent(&config)?;
                    println!(
                        "{}: valid agent config ({} pipelines)",
                        config.display(),
                        c.pipelines.len()
                    );
                }
                Kind::Sink => {
                    let c = config::load_sink(&config)?;
                    println!(
                        "{}: valid sink config ({} outputs)",
                        config.display(),
                        c.outputs.len()
                    );
                }
            }
        }
        Command::Queue { command } => return queue_command(command),
        Command::Transform { command } => return transform_command(command),
        Command::Certs { command } => match command {
            CertsCommand::Init { dir } => {
                let p = tls::init_ca(&dir)?;
                println!("CA written to {}", p.display());
            }
            CertsCommand::Issue {
                dir,
                name,
                sink,
                hosts,
                force,
            } => {
                let (cert, key) = tls::issue(&dir, &name, sink, &hosts, force)?;
                println!("certificate {} and key {}", cert.display(), key.display());
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn transform_command(command: TransformCommand) -> anyhow::Result<ExitCode> {
    use dataweaver::control::{self, SignatureFile, SigningKey};
    use dataweaver::wire::{AdminRequest, ModuleOffer};
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let request = |admin: &AdminArgs, req: AdminRequest| -> anyhow::Result<ExitCode> {
        let reply = runtime()?.block_on(control::admin::request_all(&admin.target(), req))?;
        if !reply.message.is_empty() {
            println!("{}", reply.message);
        }
        if !reply.agents.is_empty() {
            println!(
                "{:<20} {:<14} {:<12} {:<12} {:<9} {:<24} reason",
                "agent", "pipeline", "active", "pushed", "online", "last outcome"
            );
        }
        for a in &reply.agents {
            println!(
                "{:<20} {:<14} {:<12} {:<12} {:<9} {:<24} {}",
                a.agent,
                a.pipeline,
                a.active_version,
                a.desired_version,
                if a.connected { "yes" } else { "no" },
                a.last_outcome,
                a.reason
            );
        }
        Ok(if reply.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    };
    let (module, config, input, batch, memory_max_bytes, deadline_ms) = match command {
        TransformCommand::Test {
            module,
            config,
            input,
            batch,
            memory_max_bytes,
            deadline_ms,
        } => (module, config, input, batch, memory_max_bytes, deadline_ms),
        TransformCommand::Keygen { dir, name } => {
            let (key, public) = control::write_key_pair(&dir, &name)?;
            println!(
                "private key: {key}\npublic key (for the agents' control.trusted_keys):\n{public}"
            );
            return Ok(ExitCode::SUCCESS);
        }
        TransformCommand::Sign {
            module,
            pipeline,
            version,
            key,
            out,
            vectors,
            seq,
        } => {
            let bytes = read(&module)?;
            let vectors = vectors.as_ref().map(read).transpose()?.unwrap_or_default();
            let seq = seq.unwrap_or_else(control::default_seq);
            let sig = SignatureFile::create(
                &SigningKey::read(&key)?,
                &bytes,
                &pipeline,
                &version,
                seq,
                &vectors,
            );
            let out = out.unwrap_or_else(|| {
                let mut p = module.clone().into_os_string();
                p.push(".sig");
                PathBuf::from(p)
            });
            std::fs::write(&out, serde_json::to_string_pretty(&sig)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            println!("signature written to {}", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        TransformCommand::Push {
            admin,
            pipeline,
            module,
            version,
            key,
            signature,
            vectors,
            agents,
            seq,
        } => {
            let bytes = read(&module)?;
            let vectors = vectors.as_ref().map(read).transpose()?.unwrap_or_default();
            let sig = match (key, signature) {
                (Some(k), _) => SignatureFile::create(
                    &SigningKey::read(&k)?,
                    &bytes,
                    &pipeline,
                    &version,
                    seq.unwrap_or_else(control::default_seq),
                    &vectors,
                ),
                (None, Some(f)) => {
                    SignatureFile::parse(&read(&f)?).with_context(|| format!("{}", f.display()))?
                }
                (None, None) => {
                    anyhow::bail!("--key or --signature is needed: agents refuse unsigned modules")
                }
            };
            if sig.vectors_sha256 != dataweaver::transform::wasm::sha256_hex(&vectors) {
                anyhow::bail!(
                    "the signature was made for other self-check vectors: pass the same --vectors to `transform sign` and `transform push`"
                );
            }
            let offer = ModuleOffer {
                pipeline: pipeline.clone(),
                version,
                signature: sig.signature_bytes()?,
                key: sig.key,
                vectors,
                module: bytes,
                seq: sig.seq,
                rollback: false,
            };
            let req = AdminRequest {
                action: "push".into(),
                pipeline,
                offer: Some(offer),
                agents,
                ..Default::default()
            };
            return request(&admin, req);
        }
        TransformCommand::Rollback {
            admin,
            pipeline,
            key,
            seq,
        } => {
            let key = SigningKey::read(&key)?;
            let plan = AdminRequest {
                action: "rollback-plan".into(),
                pipeline: pipeline.clone(),
                ..Default::default()
            };
            let plan = runtime()?.block_on(control::admin::request(&admin.target(), plan))?;
            if !plan.ok {
                anyhow::bail!("{}", plan.message);
            }
            let seq = seq.unwrap_or_else(control::default_seq);
            let order = ModuleOffer {
                pipeline: pipeline.clone(),
                version: plan.target_version,
                signature: key.sign_rollback(&pipeline, &plan.target, seq),
                key: key.public(),
                seq,
                rollback: true,
                ..Default::default()
            };
            let req = AdminRequest {
                action: "rollback".into(),
                pipeline,
                offer: Some(order),
                ..Default::default()
            };
            return request(&admin, req);
        }
        TransformCommand::Status { admin } => {
            let req = AdminRequest {
                action: "status".into(),
                ..Default::default()
            };
            return request(&admin, req);
        }
    };
    use dataweaver::transform::{Settings, tryout};
    let config_json = match &config {
        None => "{}".to_string(),
        Some(p) => {
            let raw =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            if p.extension().is_some_and(|e| e == "json") {
                let v: serde_json::Value = serde_json::from_str(&raw)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                v.to_string()
            } else {
                let t: toml::Table = config::parse(p, &raw)?;
                serde_json::to_string(&t)?
            }
        }
    };
    let settings = Settings {
        name: module
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "transform".into()),
        config_json,
        memory_max_bytes: memory_max_bytes as usize,
        deadline: std::time::Duration::from_millis(deadline_ms.max(1)),
        max_stack_bytes: 512 << 10,
        batch_max_records: batch.max(1),
        output_max_bytes: 16 << 20,
        version_header: None,
        wasi: None,
    };
    let stdout = std::io::stdout();
    let out = std::io::BufWriter::new(stdout.lock());
    let sum = match input {
        Some(p) => {
            let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            tryout::run(&module, settings, std::io::BufReader::new(f), out)?
        }
        None => tryout::run(&module, settings, std::io::stdin().lock(), out)?,
    };
    eprintln!(
        "{} records in, {} out, {} failed",
        sum.input, sum.output, sum.failed
    );
    Ok(ExitCode::SUCCESS)
}

fn queue_command(command: QueueCommand) -> anyhow::Result<ExitCode> {
    use dataweaver::queue;
    match command {
        QueueCommand::Check { dir } => {
            let report = queue::check(&dir)?;
            println!(
                "{}: {} chunks, {} records",
                dir.join(queue::FILE_NAME).display(),
                report.chunks,
                report.records
            );
            if report.problems.is_empty() {
                println!("ok");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            Ok(ExitCode::FAILURE)
        }
        QueueCommand::Stats { dir } => {
            let st = queue::offline_stats(&dir)?;
            let age = st.oldest_ts_ns.map(|ts| {
                let now = dataweaver::record::now_ns();
                format!("{:.1} s", now.saturating_sub(ts) as f64 / 1e9)
            });
            println!("queue_id:       {}", st.queue_id);
            println!("depth:          {} records", st.depth);
            println!("bytes:          {}", st.bytes);
            println!("chunks:         {}", st.chunks);
            println!("next_seq:       {}", st.next_seq);
            println!("oldest age:     {}", age.unwrap_or_else(|| "-".into()));
            println!("dead letters:   {}", st.dead_letters);
            println!("dropped_newest: {}", st.dropped_newest);
            println!("dropped_oldest: {}", st.dropped_oldest);
            println!("corrupt lost:   {}", st.corrupt_dropped);
            println!("corrupt dead:   {}", st.corrupt_dead);
            println!("set aside:      {}", st.set_aside);
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Export { dir, file } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let report = queue::export(dir.as_deref(), file.as_deref(), &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("exported {} records", report.records);
            if report.problems.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for p in &report.problems {
                eprintln!("could not export: {p}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
