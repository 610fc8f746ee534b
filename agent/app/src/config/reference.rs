//! The configuration reference (`docs/config.md`), generated from the config types: their
//! doc comments, serde defaults and the ranges [`check`](super::check) enforces. A test
//! fails when the committed file differs, so the reference cannot drift from the code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

use super::check::Bounded as _;

use super::*;

/// The reference in Markdown: every key of the agent's and the sink's config, with its
/// type, default, range and meaning (`dataweaver config-reference` prints it).
pub fn reference() -> String {
    let mut out = String::from(HEADER);
    section(
        &mut out,
        "Agent",
        "`dataweaver agent --config agent.toml`",
        &schemars::schema_for!(AgentConfig).to_value(),
        &agent_ranges(),
    );
    section(
        &mut out,
        "Sink",
        "`dataweaver sink --config sink.toml`",
        &schemars::schema_for!(SinkConfig).to_value(),
        &sink_ranges(),
    );
    out
}

const HEADER: &str = "# Configuration reference

Generated from the config types (each in its component's crate, read by `agent/app/src/config/`) by `dataweaver config-reference`; a
test fails when this file is out of date (regenerate it with
`cargo run -- config-reference > docs/config.md`). `dataweaver validate --config FILE`
checks a file and reports every problem with its line, column and key.

Keys are TOML dotted paths; `[]` is every element of a list of tables (`[[pipelines]]`).
Relative paths are relative to the config file. *Required* keys have no default; a
*range* is enforced by `validate` (values outside it are refused, not clamped).
";

/// Ranges by `(variant, key with [] for indices)`; variant is the `type` of the source or
/// output the key belongs to, empty for the rest.
type Ranges = BTreeMap<(String, String), (u64, u64)>;

/// One of every source and a transform, so that [`AgentConfig::bounds`] names every
/// bounded key once.
const AGENT_SAMPLE: &str = r#"
data_dir = "d"
[forward]
sinks = ["127.0.0.1:7400"]
tls = { ca = "c", cert = "c", key = "k" }
[[pipelines]]
name = "p"
[[pipelines.transforms]]
module = "m.wasm"
[[pipelines.sources]]
type = "file"
include = ["*"]
[[pipelines.sources]]
type = "tcp"
listen = "127.0.0.1:1"
[[pipelines.sources]]
type = "udp"
listen = "127.0.0.1:1"
[[pipelines.sources]]
type = "stdin"
[[pipelines.sources]]
type = "http"
listen = "127.0.0.1:1"
[[pipelines.sources]]
type = "host_metrics"
[[pipelines.sources]]
type = "mqtt"
broker = "b:1"
client_id = "c"
topics = [{ filter = "t" }]
"#;

const SINK_SAMPLE: &str = r#"
listen = "127.0.0.1:1"
data_dir = "d"
tls = { ca = "c", cert = "c", key = "k" }
[[outputs]]
type = "jsonl"
dir = "o"
[[outputs]]
type = "stdout"
"#;

fn agent_ranges() -> Ranges {
    match parse::<AgentConfig>(Path::new("sample.toml"), AGENT_SAMPLE) {
        Ok(c) => {
            let tags = c.pipelines[0].sources.iter().map(|s| s.kind()).collect();
            ranges(c.bounds(), tags, "pipelines[0].sources")
        }
        Err(e) => panic!("the reference's agent sample must parse: {e}"),
    }
}

fn sink_ranges() -> Ranges {
    match parse::<SinkConfig>(Path::new("sample.toml"), SINK_SAMPLE) {
        Ok(c) => {
            let tags = c.outputs.iter().map(|o| o.kind()).collect();
            ranges(c.bounds(), tags, "outputs")
        }
        Err(e) => panic!("the reference's sink sample must parse: {e}"),
    }
}

/// The bounds of a sample, keyed as the reference shows them; `tags` are the `type`s of
/// the list of tagged tables at `tagged`, in order.
fn ranges(bounds: Vec<check::Bound>, tags: Vec<&'static str>, tagged: &str) -> Ranges {
    let mut out = Ranges::new();
    for (key, _, min, max) in bounds {
        let variant = key
            .strip_prefix(&format!("{tagged}["))
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| tags.get(n))
            .map_or_else(String::new, |t| t.to_string());
        out.insert((variant, unindexed(&key)), (min, max));
    }
    out
}

/// `a[3].b[0].c` → `a[].b[].c`.
fn unindexed(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// One row of a table in the reference.
struct Row {
    key: String,
    kind: String,
    default: String,
    range: String,
    meaning: String,
}

fn section(out: &mut String, title: &str, how: &str, schema: &Value, ranges: &Ranges) {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let walker = Walker {
        defs: &defs,
        ranges,
    };
    let mut rows = Vec::new();
    let mut variants = Vec::new();
    walker.object(schema, "", "", &mut rows, &mut variants);
    let _ = writeln!(out, "\n## {title}\n\n{how}\n");
    table(out, &rows);
    for (at, tag, meaning, rows) in variants {
        let _ = writeln!(out, "\n### `{at}` with `type = \"{tag}\"`\n\n{meaning}\n");
        table(out, &rows);
    }
}

fn table(out: &mut String, rows: &[Row]) {
    if rows.is_empty() {
        out.push_str("No keys.\n");
        return;
    }
    out.push_str("| Key | Type | Default | Range | Meaning |\n|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            r.key, r.kind, r.default, r.range, r.meaning
        );
    }
}

/// A variant section: where, its tag, its meaning, its rows.
type Variant = (String, String, String, Vec<Row>);

struct Walker<'s> {
    defs: &'s Map<String, Value>,
    ranges: &'s Ranges,
}

impl Walker<'_> {
    /// `schema` with a `$ref` followed.
    fn resolve<'v>(&'v self, schema: &'v Value) -> &'v Value {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            Some(name) => self.defs.get(name).unwrap_or(schema),
            None => schema,
        }
    }

    /// The properties of an object schema, with those of `$ref` and `allOf` parts.
    fn properties(&self, schema: &Value) -> (Map<String, Value>, Vec<String>) {
        let mut props = Map::new();
        let mut required = Vec::new();
        let mut parts = vec![schema];
        if schema.get("$ref").is_some() {
            parts.push(self.resolve(schema));
        }
        for p in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            parts.push(self.resolve(p));
        }
        for part in parts {
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                props.extend(p.clone());
            }
            for r in part
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                required.extend(r.as_str().map(String::from));
            }
        }
        (props, required)
    }

    /// Rows for every key of an object schema at `prefix`; tagged variants go to `variants`.
    fn object(
        &self,
        schema: &Value,
        prefix: &str,
        variant: &str,
        rows: &mut Vec<Row>,
        variants: &mut Vec<Variant>,
    ) {
        let (props, required) = self.properties(schema);
        for (name, field) in &props {
            if name == "type" && !variant.is_empty() {
                continue;
            }
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let (inner, optional) = self.unwrap_option(field);
            let inner = self.resolve(inner);
            let list_of = (inner.get("type").and_then(Value::as_str) == Some("array"))
                .then(|| inner.get("items").map(|i| self.resolve(i)))
                .flatten();
            let element = list_of.unwrap_or(inner);
            let tagged = element.get("oneOf").and_then(Value::as_array).filter(|v| {
                v.iter().all(|v| {
                    self.properties(v)
                        .0
                        .get("type")
                        .is_some_and(|t| t.get("const").is_some())
                })
            });
            let is_table = element.get("properties").is_some() || tagged.is_some();
            let kind = if is_table {
                if list_of.is_some() {
                    "list of tables".into()
                } else {
                    "table".into()
                }
            } else {
                self.kind(inner)
            };
            let default = match field.get("default") {
                _ if required.contains(name) => "required".into(),
                Some(Value::Object(_)) => String::new(),
                Some(d) => format!("`{d}`"),
                None if optional => "unset".into(),
                None => String::new(),
            };
            let range = self
                .ranges
                .get(&(variant.to_string(), key.clone()))
                .map(|(min, max)| format!("{min} – {max}"))
                .unwrap_or_default();
            rows.push(Row {
                key: key.clone(),
                kind,
                default,
                range,
                meaning: meaning(field).unwrap_or_else(|| meaning(inner).unwrap_or_default()),
            });
            let at = if list_of.is_some() {
                format!("{key}[]")
            } else {
                key
            };
            if let Some(tagged) = tagged {
                for v in tagged {
                    let (props, _) = self.properties(v);
                    let tag = props
                        .get("type")
                        .and_then(|t| t.get("const"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let mut vrows = Vec::new();
                    self.object(v, &at, &tag, &mut vrows, variants);
                    variants.push((at.clone(), tag, meaning(v).unwrap_or_default(), vrows));
                }
            } else if is_table {
                self.object(element, &at, variant, rows, variants);
            }
        }
    }

    /// `Option<T>` is `T` or null: returns `T`'s schema and whether it was optional.
    fn unwrap_option<'v>(&'v self, field: &'v Value) -> (&'v Value, bool) {
        if let Some(any) = field.get("anyOf").and_then(Value::as_array)
            && any.len() == 2
            && let Some(null) = any
                .iter()
                .position(|v| v.get("type").and_then(Value::as_str) == Some("null"))
        {
            return (&any[1 - null], true);
        }
        let optional = field
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "null"));
        (field, optional)
    }

    /// A short name for a leaf's type.
    fn kind(&self, schema: &Value) -> String {
        let schema = self.resolve(schema);
        let values: Vec<String> = schema
            .get("enum")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("`\"{s}\"`"))
                    .collect()
            })
            .or_else(|| {
                schema.get("oneOf").and_then(Value::as_array).map(|o| {
                    o.iter()
                        .filter_map(|v| v.get("const").and_then(Value::as_str))
                        .map(|s| format!("`\"{s}\"`"))
                        .collect()
                })
            })
            .unwrap_or_default();
        if !values.is_empty() {
            return values.join(" \\| ");
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(t)) => t
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => vec![],
        };
        match types.first().copied() {
            Some("array") => match schema.get("items") {
                Some(items) => format!("list of {}", self.kind(items)),
                None => "list".into(),
            },
            Some("object") => "table".into(),
            Some("number") => "float".into(),
            Some(t) => t.into(),
            None => "any".into(),
        }
    }
}

/// A schema's description as one table cell.
fn meaning(schema: &Value) -> Option<String> {
    let d = schema.get("description")?.as_str()?;
    Some(
        d.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed reference is what the types say now.
    #[test]
    fn config_reference_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let now = reference();
        if std::env::var_os("DATAWEAVER_BLESS").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/config.md is out of date: run `cargo run -- config-reference > docs/config.md` \
             (or DATAWEAVER_BLESS=1 cargo test config_reference)"
        );
    }

    /// Every bounded key appears in the reference with its range (none is keyed wrongly).
    #[test]
    fn every_range_is_shown() {
        let text = reference();
        for ranges in [agent_ranges(), sink_ranges()] {
            for ((variant, key), (min, max)) in ranges {
                let shown = text.lines().any(|l| {
                    l.starts_with(&format!("| `{key}` |"))
                        && l.contains(&format!("| {min} – {max} |"))
                });
                assert!(
                    shown,
                    "{variant} {key}: range {min}–{max} not in the reference"
                );
            }
        }
    }

    /// Every `type` the schema knows for sources and outputs is read on its own by the
    /// loader (else its problems would lose their lines).
    #[test]
    fn every_tagged_type_has_a_check() {
        let text = reference();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("### `") else {
                continue;
            };
            let tag = rest
                .split("type = \"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .unwrap();
            let ok = if rest.starts_with("outputs[]") {
                load::output_check(tag).is_some()
            } else {
                load::source_check(tag).is_some()
            };
            assert!(ok, "no check for {rest}");
        }
        assert!(
            text.contains("with `type = \"mqtt\"`") && text.contains("with `type = \"jsonl\"`")
        );
    }
}
