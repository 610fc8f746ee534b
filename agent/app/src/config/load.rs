//! Stage one of reading a config: the TOML text into typed values, every problem placed at
//! its file, line, column and key path.
//!
//! serde stops at the first problem. To report them all, the loader keeps the parsed
//! document with the position of every key and value, and after each problem takes the
//! offending key out and reads again (a key with a default gets it, so the rest of the file
//! is still checked). Only a missing required key, or a problem it cannot pin to one key,
//! ends the search. Tables whose type is picked by a `type` key (sources, outputs) are read
//! first on their own, as the type they name: serde reads those through a buffer that
//! forgets key paths and positions.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::*;

/// One problem in a config file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    /// Dotted path of the offending key (`forward.sinks[0]`), or `(file)` / `(document)`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.line {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}: {}", self.key, self.message)
    }
}

/// Every problem found in a config file (at least one), one per line in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order of their lines.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(file: &Path, key: &str, message: String) -> Self {
        ConfigError {
            problems: vec![Problem {
                file: file.into(),
                line: None,
                key: key.into(),
                message,
            }],
        }
    }
}

/// Which kind of config a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `dataweaver agent`.
    Agent,
    /// `dataweaver sink`.
    Sink,
}

/// Guesses the kind from the top-level keys: a sink has `listen`, an agent `forward`.
pub fn detect_kind(path: &Path) -> Result<Kind, ConfigError> {
    let raw = read(path)?;
    // A file that does not parse is reported by the loader, with its position.
    let top: toml::Table = toml::from_str(&raw).unwrap_or_default();
    Ok(
        if top.contains_key("listen") && !top.contains_key("forward") {
            Kind::Sink
        } else {
            Kind::Agent
        },
    )
}

/// Reads, parses and validates an agent config; relative paths become relative to the file.
pub fn load_agent(path: &Path) -> Result<AgentConfig, ConfigError> {
    let raw = read(path)?;
    let mut doc = Doc::parse(path, &raw)?;
    let cfg = doc.read::<AgentConfig>(AGENT_TAGGED);
    let Some(mut cfg) = cfg else {
        return Err(doc.error());
    };
    let base = base_dir(path);
    cfg.data_dir = base.join(&cfg.data_dir);
    cfg.log.file = cfg.log.file.as_ref().map(|f| base.join(f));
    resolve_tls(&mut cfg.forward.tls, &base);
    for p in &mut cfg.pipelines {
        for t in &mut p.transforms {
            t.module = base.join(&t.module);
            for d in t.wasi.iter_mut().flat_map(|w| w.dirs.iter_mut()) {
                d.host = base.join(&d.host);
            }
        }
        for s in &mut p.sources {
            if let SourceConfig::Mqtt(m) = s
                && let Some(t) = &mut m.tls
            {
                t.ca = base.join(&t.ca);
                t.cert = t.cert.as_ref().map(|c| base.join(c));
                t.key = t.key.as_ref().map(|k| base.join(k));
            }
            let SourceConfig::File(f) = s else { continue };
            for g in f.include.iter_mut().chain(f.exclude.iter_mut()) {
                if Path::new(g.as_str()).is_relative() {
                    *g = base.join(&*g).to_string_lossy().into_owned();
                }
            }
        }
    }
    if let Err(found) = cfg.validate() {
        doc.add(found);
    }
    doc.finish(cfg)
}

/// Reads, parses and validates a sink config; relative paths become relative to the file.
pub fn load_sink(path: &Path) -> Result<SinkConfig, ConfigError> {
    let raw = read(path)?;
    let mut doc = Doc::parse(path, &raw)?;
    let Some(mut cfg) = doc.read::<SinkConfig>(SINK_TAGGED) else {
        return Err(doc.error());
    };
    let base = base_dir(path);
    cfg.data_dir = base.join(&cfg.data_dir);
    cfg.log.file = cfg.log.file.as_ref().map(|f| base.join(f));
    resolve_tls(&mut cfg.tls, &base);
    for out in &mut cfg.outputs {
        if let OutputConfig::Jsonl(j) = out {
            j.dir = base.join(&j.dir);
        }
    }
    if let Err(found) = cfg.validate() {
        doc.add(found);
    }
    doc.finish(cfg)
}

/// Parses TOML into `T`, reporting every problem with its key path and position.
pub fn parse<T: DeserializeOwned>(path: &Path, raw: &str) -> Result<T, ConfigError> {
    let mut doc = Doc::parse(path, raw)?;
    match doc.read::<T>(&[]) {
        Some(v) => doc.finish(v),
        None => Err(doc.error()),
    }
}

/// Reads one table as `T`, the problem (if any) with its path inside that table.
type Check = fn(toml::Deserializer<'_>) -> Result<(), serde_path_to_error::Error<toml::de::Error>>;

fn check_as<T: DeserializeOwned>(
    de: toml::Deserializer<'_>,
) -> Result<(), serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize::<_, T>(de).map(drop)
}

/// Tables whose type their `type` key picks: where they are (`[]` = every element) and
/// the type each tag names.
pub(super) struct Tagged {
    /// Key path of the tables, e.g. `pipelines[].sources[]`.
    pub(super) at: &'static str,
    /// The check for a tag; `None` for a tag serde will refuse by itself.
    pub(super) pick: fn(&str) -> Option<Check>,
    /// A table of a type without required keys, put in place of one that cannot be read
    /// (an unknown type, a required key missing), so the rest of the file is still read and
    /// the elements after it keep their numbers.
    pub(super) stand_in: &'static str,
}

pub(super) const AGENT_TAGGED: &[Tagged] = &[Tagged {
    at: "pipelines[].sources[]",
    pick: source_check,
    stand_in: "type = \"stdin\"\nname = \"(stand-in)\"",
}];

pub(super) const SINK_TAGGED: &[Tagged] = &[Tagged {
    at: "outputs[]",
    pick: output_check,
    stand_in: "type = \"stdout\"",
}];

pub(super) fn source_check(tag: &str) -> Option<Check> {
    Some(match tag {
        "file" => check_as::<FileSourceConfig>,
        "tcp" | "udp" => check_as::<NetSourceConfig>,
        "stdin" => check_as::<StdinSourceConfig>,
        "http" => check_as::<HttpSourceConfig>,
        "host_metrics" => check_as::<HostMetricsConfig>,
        "mqtt" => check_as::<MqttSourceConfig>,
        _ => return None,
    })
}

pub(super) fn output_check(tag: &str) -> Option<Check> {
    Some(match tag {
        "jsonl" => check_as::<JsonlOutputConfig>,
        "stdout" => check_as::<StdoutOutputConfig>,
        _ => return None,
    })
}

/// A config file being read: its text, its parsed form, and the problems found so far.
struct Doc<'a> {
    file: &'a Path,
    raw: &'a str,
    /// The document as written, to place problems in.
    original: DeTable<'a>,
    /// The document with offending keys taken out, to read again.
    work: DeTable<'a>,
    span: Range<usize>,
    problems: Vec<Problem>,
    /// The tagged tables of the config being read.
    tagged: &'static [Tagged],
    /// Keys taken out or reported: a later problem about one of them follows from the
    /// first and is not reported again.
    seen: Vec<String>,
}

/// Most problems reported for one file.
const MAX_PROBLEMS: usize = 50;

impl<'a> Doc<'a> {
    /// Parses the text; syntax errors (all the parser can find) end the reading here.
    fn parse(file: &'a Path, raw: &'a str) -> Result<Self, ConfigError> {
        let (root, errors) = DeTable::parse_recoverable(raw);
        if !errors.is_empty() {
            let mut problems: Vec<Problem> = errors
                .iter()
                .take(MAX_PROBLEMS)
                .map(|e| Problem {
                    file: file.into(),
                    line: e.span().map(|s| line_col(raw, s.start)),
                    key: "(document)".into(),
                    message: one_line(e.message()),
                })
                .collect();
            problems.dedup();
            return Err(ConfigError { problems });
        }
        let span = root.span();
        let root = root.into_inner();
        Ok(Doc {
            file,
            raw,
            original: root.clone(),
            work: root,
            span,
            problems: Vec::new(),
            tagged: &[],
            seen: Vec::new(),
        })
    }

    /// Reads the document as `T`, recording every problem on the way; `None` when a
    /// problem left no way to finish.
    fn read<T: DeserializeOwned>(&mut self, tagged: &'static [Tagged]) -> Option<T> {
        self.tagged = tagged;
        for t in tagged {
            for (at, check) in checks(&self.work, t) {
                self.read_unit(&at, |doc| {
                    let mut table = match lookup(&doc.work, &at) {
                        Some(DeValue::Table(table)) => table.clone(),
                        _ => return Ok(()),
                    };
                    table.remove("type");
                    check(toml::Deserializer::from(Spanned::new(
                        doc.span.clone(),
                        table,
                    )))
                });
            }
        }
        let mut out = None;
        self.read_unit("", |doc| {
            let de = toml::Deserializer::from(Spanned::new(doc.span.clone(), doc.work.clone()));
            out = Some(serde_path_to_error::deserialize::<_, T>(de)?);
            Ok(())
        });
        out
    }

    /// Reads one part of the document (at key path `at`) until it reads cleanly or cannot
    /// go on; after each problem the offending key is taken out.
    fn read_unit(
        &mut self,
        at: &str,
        mut attempt: impl FnMut(&Self) -> Result<(), serde_path_to_error::Error<toml::de::Error>>,
    ) {
        while self.problems.len() < MAX_PROBLEMS {
            let Err(e) = attempt(self) else { return };
            let inner = e.inner();
            let message = one_line(inner.message());
            let key = full_key(at, &e.path().to_string(), &message);
            if self
                .seen
                .iter()
                .any(|s| *s == key || key.starts_with(&format!("{s}.")))
            {
                return;
            }
            // Unknown and missing keys are placed by their path: toml points at the
            // table; a bad value by its own position.
            let by_path =
                message.starts_with("unknown field") || message.starts_with("missing field");
            let line = match inner.span() {
                Some(s) if !by_path => Some(line_col(self.raw, s.start)),
                _ => self.place(&key),
            };
            self.problems.push(Problem {
                file: self.file.into(),
                line,
                key: key.clone(),
                message: message.clone(),
            });
            let unreadable =
                message.starts_with("missing field") || message.starts_with("unknown variant");
            if unreadable {
                if self.stand_in(&key) {
                    continue;
                }
                return;
            }
            match take_out(&mut self.work, &key) {
                Some(removed) => {
                    self.seen.push(key);
                    self.seen.push(removed);
                }
                None => return,
            }
        }
    }

    /// Puts a stand-in in place of the tagged table that `key` is in, if it is in one.
    fn stand_in(&mut self, key: &str) -> bool {
        for t in self.tagged {
            for at in expand(&self.work, t.at) {
                let inside = key
                    .strip_prefix(at.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']));
                if !inside {
                    continue;
                }
                let Ok(table) = DeTable::parse(t.stand_in) else {
                    return false;
                };
                let segs = segments(&at);
                let Some((Seg::Key(first), rest)) = segs.split_first() else {
                    return false;
                };
                let Some(slot) = self
                    .work
                    .get_mut(*first)
                    .and_then(|v| value_mut(v.get_mut(), rest))
                else {
                    return false;
                };
                *slot = DeValue::Table(table.into_inner());
                self.seen.push(at);
                return true;
            }
        }
        false
    }

    /// The line and column of `key`, or of its nearest ancestor that the file has.
    fn place(&self, key: &str) -> Option<(usize, usize)> {
        locate(&self.original, key).map(|s| line_col(self.raw, s.start))
    }

    /// Adds validation problems, except those about keys already reported or taken out
    /// (their value is a stand-in default).
    fn add(&mut self, found: Vec<Invalid>) {
        for (key, message) in found {
            if self
                .seen
                .iter()
                .any(|s| *s == key || key.starts_with(&format!("{s}.")))
            {
                continue;
            }
            let line = self.place(&key);
            self.problems.push(Problem {
                file: self.file.into(),
                line,
                key,
                message,
            });
        }
    }

    fn error(mut self) -> ConfigError {
        if self.problems.is_empty() {
            // `read` returns None only after recording a problem; keep the promise anyway.
            self.problems.push(Problem {
                file: self.file.into(),
                line: None,
                key: "(document)".into(),
                message: "could not be read".into(),
            });
        }
        self.problems.truncate(MAX_PROBLEMS);
        // File order; a problem without a line (a missing key at the top) first.
        self.problems.sort_by_key(|p| p.line);
        ConfigError {
            problems: self.problems,
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.error())
        }
    }
}

/// The key path a problem is about: the part's path, serde's path inside it, and the key a
/// message names (serde names an unknown or missing key in the message only).
fn full_key(at: &str, inner: &str, message: &str) -> String {
    let mut key = match (at, inner) {
        (at, "" | ".") => at.to_string(),
        ("", inner) => inner.to_string(),
        (at, inner) => format!("{at}.{inner}"),
    };
    for marker in ["unknown field `", "missing field `"] {
        if let Some(name) = message
            .strip_prefix(marker)
            .and_then(|r| r.split('`').next())
        {
            let already = key == name || key.ends_with(&format!(".{name}"));
            if !already {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
            }
        }
    }
    if key.is_empty() {
        key = "(document)".into();
    }
    key
}

/// One step of a key path.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seg<'k> {
    Key(&'k str),
    Index(usize),
    /// `[]`: every element (only in [`Tagged::at`]).
    Each,
}

fn segments(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    if key.is_empty() || key.starts_with('(') {
        return out;
    }
    for part in key.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            out.push(match &r[..end] {
                "" => Seg::Each,
                n => n.parse().map_or(Seg::Each, Seg::Index),
            });
            rest = r.get(end + 1..).unwrap_or("");
        }
    }
    out
}

fn render(segs: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
            Seg::Each => s.push_str("[]"),
        }
    }
    s
}

/// The span of `key` in the document (of the key itself, or of an array element), or of
/// its deepest ancestor found there.
fn locate(root: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut table = Some(root);
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    let mut best = None;
    for seg in segments(key) {
        let next = match seg {
            Seg::Key(k) => table
                .and_then(|t| t.get_key_value(k))
                .map(|(ks, v)| (ks.span(), v)),
            Seg::Index(i) => array.and_then(|a| a.get(i)).map(|v| (v.span(), v)),
            Seg::Each => None,
        };
        let Some((span, v)) = next else { break };
        best = Some(span);
        (table, array) = match v.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    best
}

/// The value at `key`, if the document has it.
fn lookup<'d, 'a>(root: &'d DeTable<'a>, key: &str) -> Option<&'d DeValue<'a>> {
    let segs = segments(key);
    let (Seg::Key(first), rest) = segs.split_first()? else {
        return None;
    };
    let mut v = root.get(*first)?.get_ref();
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), DeValue::Table(t)) => t.get(*k)?.get_ref(),
            (Seg::Index(i), DeValue::Array(a)) => a.get(*i)?.get_ref(),
            _ => return None,
        };
    }
    Some(v)
}

fn value_mut<'d, 'a>(v: &'d mut DeValue<'a>, segs: &[Seg<'_>]) -> Option<&'d mut DeValue<'a>> {
    let Some((first, rest)) = segs.split_first() else {
        return Some(v);
    };
    let next = match (first, v) {
        (Seg::Key(k), DeValue::Table(t)) => t.get_mut(*k)?.get_mut(),
        (Seg::Index(i), DeValue::Array(a)) => a.get_mut(*i)?.get_mut(),
        _ => return None,
    };
    value_mut(next, rest)
}

/// Takes the key at `key` out of the document and returns the path taken out. A path
/// that ends in an index takes out the whole list (taking out one element would renumber
/// the rest, and later problems would point at the wrong one).
fn take_out(root: &mut DeTable<'_>, key: &str) -> Option<String> {
    let mut segs = segments(key);
    while matches!(segs.last(), Some(Seg::Index(_))) {
        segs.pop();
    }
    let Some(Seg::Key(leaf)) = segs.pop() else {
        return None;
    };
    let parent = match segs.split_first() {
        None => root,
        Some((Seg::Key(first), rest)) => match value_mut(root.get_mut(*first)?.get_mut(), rest)? {
            DeValue::Table(t) => t,
            _ => return None,
        },
        Some(_) => return None,
    };
    parent.remove(leaf)?;
    segs.push(Seg::Key(leaf));
    Some(render(&segs))
}

/// The concrete paths of a [`Tagged`] pattern in the document.
fn expand(root: &DeTable<'_>, pattern: &str) -> Vec<String> {
    let mut paths = vec![String::new()];
    for seg in segments(pattern) {
        let mut next = Vec::new();
        for p in paths {
            match seg {
                Seg::Key(k) if p.is_empty() => next.push(k.to_string()),
                Seg::Key(k) => next.push(format!("{p}.{k}")),
                Seg::Index(i) => next.push(format!("{p}[{i}]")),
                Seg::Each => {
                    if let Some(DeValue::Array(a)) = lookup(root, &p) {
                        next.extend((0..a.len()).map(|i| format!("{p}[{i}]")));
                    }
                }
            }
        }
        paths = next;
    }
    paths
}

/// The tagged tables of the document with the checks their types name.
fn checks(root: &DeTable<'_>, t: &Tagged) -> Vec<(String, Check)> {
    expand(root, t.at)
        .into_iter()
        .filter_map(|p| {
            let Some(DeValue::Table(table)) = lookup(root, &p) else {
                return None;
            };
            let tag = table.get("type")?.get_ref();
            let DeValue::String(tag) = tag else {
                return None;
            };
            Some((p, (t.pick)(tag)?))
        })
        .collect()
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::one(path, "(file)", e.to_string()))
}

fn base_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn resolve_tls(tls: &mut TlsFiles, base: &Path) {
    tls.ca = base.join(&tls.ca);
    tls.cert = base.join(&tls.cert);
    tls.key = base.join(&tls.key);
}

fn line_col(raw: &str, offset: usize) -> (usize, usize) {
    let before = raw.get(..offset.min(raw.len())).unwrap_or(raw);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Problem {
        let e = parse::<AgentConfig>(Path::new("a.toml"), text).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        e.problems[0].clone()
    }

    const OK: &str = r#"
data_dir = "d"
[forward]
sinks = ["127.0.0.1:7400"]
tls = { ca = "ca.pem", cert = "a.pem", key = "a.key" }
[[pipelines]]
name = "p"
[[pipelines.sources]]
type = "file"
include = ["*.log"]
"#;

    #[test]
    fn good_config_parses() {
        let c: AgentConfig = parse(Path::new("a.toml"), OK).unwrap();
        assert_eq!(c.forward.window, 4);
        assert_eq!(c.pipelines[0].sources[0].name(), "file");
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let e = err(&OK.replace("name = \"p\"", "name = \"p\"\ncolour = 1"));
        assert_eq!(e.key, "pipelines[0].colour", "{e}");
        assert_eq!(e.line.map(|l| l.0), Some(8), "{e}");
    }

    #[test]
    fn unknown_key_in_tagged_source_is_named() {
        let e = err(&OK.replace(
            "include = [\"*.log\"]",
            "include = [\"*.log\"]\nfollow = true",
        ));
        assert!(e.key.contains("follow"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err(&OK.replace("[forward]", "[forward]\nwindow = \"x\""));
        assert_eq!(e.key, "forward.window", "{e}");
        assert_eq!(e.line.map(|l| l.0), Some(4), "{e}");
    }

    #[test]
    fn missing_field_names_key() {
        let e = err(&OK.replace("sinks = [\"127.0.0.1:7400\"]\n", ""));
        assert_eq!(e.key, "forward.sinks", "{e}");
    }

    /// Writes `text` as `a.toml` in a fresh directory (with the TLS files it names: a CA
    /// and identities `a` and `b`) and loads it as an agent config.
    fn load(text: &str) -> ConfigError {
        let dir = tempfile::tempdir().unwrap();
        dataweaver_tls::init_ca(dir.path()).unwrap();
        for name in ["a", "b"] {
            dataweaver_tls::issue(dir.path(), name, false, &[], false).unwrap();
        }
        std::fs::write(dir.path().join("not-pem.pem"), "x").unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, text).unwrap();
        load_agent(&p).unwrap_err()
    }

    /// `validate` only checked that the TLS files existed: a CA that is not PEM, or a key
    /// that is not the certificate's, passed and failed at the first connection. It now
    /// loads them with the loader the agent runs, and places the problem at the file's key.
    #[test]
    fn validate_loads_tls_files_and_names_the_bad_one() {
        let cases = [
            (
                r#"ca = "not-pem.pem", cert = "a.pem", key = "a.key""#,
                "forward.tls.ca",
                "no certificate",
            ),
            (
                r#"ca = "ca.pem", cert = "a.pem", key = "b.key""#,
                "forward.tls.key",
                "not the key of",
            ),
        ];
        for (files, key, says) in cases {
            let e = load(&OK.replace(
                r#"tls = { ca = "ca.pem", cert = "a.pem", key = "a.key" }"#,
                &format!("tls = {{ {files} }}\nwindow = 0"),
            ));
            assert_eq!(
                lines(&e),
                [(5, key.into()), (6, "forward.window".into())],
                "{e}"
            );
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    fn lines(e: &ConfigError) -> Vec<(usize, String)> {
        e.problems
            .iter()
            .map(|p| (p.line.map_or(0, |l| l.0), p.key.clone()))
            .collect()
    }

    /// Three problems of three kinds (an unknown key, a wrong type, a bad value): all
    /// three are reported, each at its own line.
    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = OK
            .replace("[forward]", "[forward]\nwindow = \"x\"")
            .replace("name = \"p\"", "name = \"p\"\ncolour = 1")
            .replace(
                "include = [\"*.log\"]",
                "include = [\"*.log\"]\npoll_interval_ms = 0",
            );
        let e = load(&text);
        assert_eq!(
            lines(&e),
            [
                (4, "forward.window".into()),
                (9, "pipelines[0].colour".into()),
                (13, "pipelines[0].sources[0].poll_interval_ms".into()),
            ],
            "{e}"
        );
        assert_eq!(e.to_string().lines().count(), 3, "{e}");
    }

    /// A repeated key is placed at its own occurrence: the second pipeline's duplicate
    /// name points at the second pipeline (it pointed at the first).
    #[test]
    fn duplicate_pipeline_name_points_at_the_second_pipeline() {
        let second = "[[pipelines]]\nname = \"p\"\n[[pipelines.sources]]\ntype = \"stdin\"\n";
        let e = load(&format!("{OK}{second}"));
        assert_eq!(lines(&e), [(12, "pipelines[1].name".into())], "{e}");
    }

    /// A wrong type inside a source (read through serde's tag buffer, which forgets
    /// positions) is still named and placed.
    #[test]
    fn wrong_type_in_a_source_is_named_with_its_line() {
        let e = load(&OK.replace(
            "include = [\"*.log\"]",
            "include = [\"*.log\"]\nmax_line_bytes = \"big\"",
        ));
        assert_eq!(
            lines(&e),
            [(11, "pipelines[0].sources[0].max_line_bytes".into())],
            "{e}"
        );
        assert!(e.problems[0].message.contains("invalid type"), "{e}");
    }

    /// A problem that follows from another is not reported twice: the bad `window` is
    /// taken out and replaced by its default, which raises nothing further.
    #[test]
    fn missing_required_key_after_a_bad_one_is_reported_once() {
        let e = load(&OK.replace("sinks = [\"127.0.0.1:7400\"]", "sinks = 7"));
        assert_eq!(lines(&e), [(4, "forward.sinks".into())], "{e}");
    }

    /// Syntax errors stop the reading, with their position.
    #[test]
    fn syntax_error_is_placed() {
        let e = load(&OK.replace("[forward]", "[forward\n"));
        assert_eq!(e.problems[0].line.map(|l| l.0), Some(3), "{e}");
    }

    /// A source of an unknown type is reported, and the problems after it still are (a
    /// stand-in takes its place, so later sources keep their numbers).
    #[test]
    fn unknown_source_type_does_not_hide_later_problems() {
        let more = "[[pipelines.sources]]\ntype = \"fiel\"\n[[pipelines.sources]]\ntype = \"tcp\"\nlisten = \"127.0.0.1:1\"\nmax_line_bytes = 0\n";
        let e = load(&format!("{OK}{more}"));
        assert_eq!(
            lines(&e),
            [
                (12, "pipelines[0].sources[1].type".into()),
                (16, "pipelines[0].sources[2].max_line_bytes".into()),
            ],
            "{e}"
        );
    }
}
