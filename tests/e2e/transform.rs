//! WASM transforms: the same example in every language (through `transform test` and
//! through a running agent), hostile modules contained, bad modules refused, hot reload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const LANGS: [&str; 4] = ["rust", "c", "python", "js"];
const HOST: &str = "edge-7";
const N: usize = 10_000;

/// Deterministic input mixing every case the example handles.
fn input_lines(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(4);
    let services = ["api", "db", "auth", "queue"];
    let levels = ["info", "warn", "error", "debug", "DEBUG"];
    (0..n)
        .map(|i| {
            let svc = services[rng.usize(..services.len())];
            let lvl = levels[rng.usize(..levels.len())];
            match i % 10 {
                0..=3 => format!(
                    r#"{{"service":"{svc}","level":"{lvl}","msg":"request {i}","n":{},"f":{}.{},"ok":{}}}"#,
                    rng.i64(-1_000_000_000_000..1_000_000_000_000),
                    rng.u32(..1000),
                    rng.u32(1..100),
                    rng.bool()
                ),
                4 => format!(
                    r#"{{"service":"{svc}","level":"{lvl}","batch":[{{"k":{i}}},{},"s{i}",{{"host":"old","deep":{{"a":[1,2,{{"b":null}}]}}}}]}}"#,
                    rng.u32(..100)
                ),
                5 => format!(r#"{{"level":"{lvl}","batch":[],"i":{i}}}"#),
                6 => format!(
                    r#"{{"msg":"caf\u00e9 \"quoted\" \\ tab\t {i} \ud83d\ude00 ü","host":"old","e":1e3,"z":-0.5}}"#
                ),
                7 => match i % 30 {
                    7 => format!(r#"{{"service":{i},"level":"info","batch":"not a list","x":[]}}"#),
                    // An escaped key is the same key; `__proto__` is just a key.
                    17 => format!(r#"{{"level":"debug","i":{i}}}"#),
                    _ => format!(r#"{{"__proto__":{{"x":1}},"service":"p","i":{i}}}"#),
                },
                8 => match i % 40 {
                    8 => format!("{{bad json {i}"),
                    18 => format!("not json at all {i}"),
                    28 => format!(r#"{{"a":1}} trailing {i}"#),
                    _ => format!(r#"{{"a":{i},}}"#),
                },
                _ => match i % 30 {
                    9 => format!("[{i},2]"),
                    19 => format!("{i}"),
                    _ => format!(r#""just a string {i}""#),
                },
            }
        })
        .collect()
}

/// What the example must make of one payload: `(topic, payload)` records or an error.
fn reference(line: &str, topic: &str) -> Result<Vec<(String, Value)>, &'static str> {
    let doc: Value = serde_json::from_str(line).map_err(|_| "malformed JSON")?;
    let Value::Object(obj) = &doc else {
        return Err("payload is not a JSON object");
    };
    if obj.get("level") == Some(&Value::String("debug".into())) {
        return Ok(Vec::new());
    }
    let topic = match obj.get("service") {
        Some(Value::String(s)) => s.clone(),
        _ => topic.to_string(),
    };
    let with_host = |v: &Value| match v {
        Value::Object(m) => {
            let mut m = m.clone();
            m.insert("host".into(), Value::String(HOST.into()));
            Value::Object(m)
        }
        other => serde_json::json!({"value": other, "host": HOST}),
    };
    Ok(match obj.get("batch") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| (topic.clone(), with_host(x)))
            .collect(),
        _ => vec![(topic, with_host(&doc))],
    })
}

/// Numbers as f64, so `1e3`, `1000` and `1000.0` (each language writes its own) compare
/// equal; objects compare without order.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => serde_json::Number::from_f64(n.as_f64().unwrap_or(f64::NAN))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

fn parse_payload(p: &str) -> Value {
    normalize(
        serde_json::from_str(p).unwrap_or_else(|e| panic!("output payload not JSON: {e}: {p}")),
    )
}

/// The reason without the `name@version: ` prefix the host adds.
fn bare_reason(r: &str) -> String {
    r.split_once(": ").map(|(_, b)| b).unwrap_or(r).to_string()
}

/// Expected records `(topic, payload)` and errors `(input payload, reason)`.
/// A record at the sink: topic, sorted headers, normalised payload.
type SinkRecord = (String, Vec<(String, String)>, Value);

type Expected = (Vec<(String, Value)>, Vec<(String, String)>);

fn expected(lines: &[String], topic: &str) -> Expected {
    let mut recs = Vec::new();
    let mut errs = Vec::new();
    for l in lines {
        match reference(l, topic) {
            Ok(r) => recs.extend(r.into_iter().map(|(t, v)| (t, normalize(v)))),
            Err(e) => errs.push((l.clone(), e.to_string())),
        }
    }
    (recs, errs)
}

fn write_config(dir: &Path) -> PathBuf {
    let p = dir.join("example.json");
    std::fs::write(&p, format!(r#"{{"host":"{HOST}"}}"#)).unwrap();
    p
}

#[test]
fn every_language_gives_the_same_output_through_transform_test() {
    let dir = tempfile::tempdir().unwrap();
    let lines = input_lines(N);
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let cfg = write_config(dir.path());
    let (want_recs, want_errs) = expected(&lines, "test");
    // The reference itself must exercise every case, or agreement would prove little.
    assert!(
        want_recs.len() > 8000 && want_errs.len() > 1500,
        "{} {}",
        want_recs.len(),
        want_errs.len()
    );
    assert!(want_errs.iter().any(|e| e.1 == "malformed JSON"));
    assert!(
        want_errs
            .iter()
            .any(|e| e.1 == "payload is not a JSON object")
    );
    let mut ran = 0;
    for lang in LANGS {
        let Some(module) = guest(&format!("example_{lang}")) else {
            continue;
        };
        let out = dw(&[
            "transform",
            "test",
            "--module",
            module.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ]);
        let mut recs = Vec::new();
        let mut errs = Vec::new();
        for l in out.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            if let Some(reason) = v["error"].as_str() {
                errs.push((
                    v["input"]["payload"].as_str().unwrap().to_string(),
                    bare_reason(reason),
                ));
            } else {
                recs.push((
                    v["topic"].as_str().unwrap().to_string(),
                    parse_payload(v["payload"].as_str().unwrap()),
                ));
            }
        }
        assert_eq!(recs.len(), want_recs.len(), "{lang}: record count");
        for (i, (got, want)) in recs.iter().zip(&want_recs).enumerate() {
            assert_eq!(got, want, "{lang}: record {i} differs");
        }
        assert_eq!(errs, want_errs, "{lang}: per-record errors");
        ran += 1;
    }
    assert!(
        ran >= 2,
        "at least the prebuilt Rust and C guests run everywhere"
    );
}

#[test]
fn every_language_gives_the_same_output_through_the_agent() {
    let lines = input_lines(N);
    let (want_recs, want_errs) = expected(&lines, "app");
    let mut first: Option<Vec<SinkRecord>> = None;
    for lang in LANGS {
        let Some(module) = guest(&format!("example_{lang}")) else {
            continue;
        };
        let w = World::new();
        let mut sink = w.sink();
        std::fs::create_dir_all(w.path("input")).unwrap();
        let transform = format!(
            "[[pipelines.transforms]]\nmodule = \"{}\"\nconfig = {{ host = \"{HOST}\" }}\n",
            module.display()
        );
        w.agent_config_with("", &transform, &[w.port]);
        let mut agent = w.agent_as_configured();
        std::fs::write(w.path("input/a.log"), lines.join("\n") + "\n").unwrap();
        let out = wait_for_output(&w.output_dir(), want_recs.len(), Duration::from_secs(120));
        let mut out: Vec<&OutLine> = out.iter().collect();
        out.sort_by_key(|l| l.seq);
        assert_eq!(out.len(), want_recs.len(), "{lang}: records at the sink");
        let got: Vec<SinkRecord> = out
            .iter()
            .map(|l| {
                // The `file` header names a path in this test's own directory.
                let mut h: Vec<(String, String)> = l
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let v = if k == "file" {
                            v.rsplit('/').next().unwrap_or(v)
                        } else {
                            v
                        };
                        (k.clone(), v.to_string())
                    })
                    .collect();
                h.sort();
                (l.topic.clone(), h, parse_payload(&l.payload))
            })
            .collect();
        for (i, ((topic, headers, payload), want)) in got.iter().zip(&want_recs).enumerate() {
            assert_eq!((topic, payload), (&want.0, &want.1), "{lang}: record {i}");
            assert!(
                headers.iter().any(|(k, _)| k == "file"),
                "{lang}: headers kept: {headers:?}"
            );
        }
        sigterm(&mut agent);
        let mut dead: Vec<(String, String)> = dead_letters(&w)
            .iter()
            .map(|d| {
                (
                    d["payload"].as_str().unwrap().to_string(),
                    bare_reason(d["dead_letter_reason"].as_str().unwrap()),
                )
            })
            .collect();
        let mut want_dead = want_errs.clone();
        dead.sort();
        want_dead.sort();
        assert_eq!(dead, want_dead, "{lang}: dead letters");
        // Every language's output, headers included, equals the first one's.
        match &first {
            None => first = Some(got),
            Some(f) => assert!(
                f == &got,
                "{lang}: output differs from the first language's"
            ),
        }
        sigterm(&mut sink);
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_modules_are_contained_while_another_pipeline_delivers() {
    let (Some(lp), Some(bomb), Some(panic)) = (guest("loop"), guest("bomb"), guest("panic_rust"))
    else {
        return;
    };
    let w = World::new();
    let mut sink = w.sink();
    for d in ["good", "looping", "bomb", "panicky"] {
        std::fs::create_dir_all(w.path(&format!("input/{d}"))).unwrap();
    }
    let pipeline = |name: &str, transform: String| {
        format!(
            "[[pipelines]]\nname = \"{name}\"\n{transform}\n[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/{name}/*.log\"]\npoll_interval_ms = 50\n\n"
        )
    };
    let cfg = [
        pipeline("good", String::new()),
        pipeline(
            "looping",
            format!(
                "[[pipelines.transforms]]\nmodule = \"{}\"\ndeadline_ms = 100\n",
                lp.display()
            ),
        ),
        pipeline(
            "bomb",
            format!(
                "[[pipelines.transforms]]\nmodule = \"{}\"\nmemory_max_bytes = 16777216\n",
                bomb.display()
            ),
        ),
        pipeline(
            "panicky",
            format!(
                "[[pipelines.transforms]]\nmodule = \"{}\"\nbatch_max_records = 10\n",
                panic.display()
            ),
        ),
    ]
    .concat();
    agent_config_pipelines(&w, &cfg);
    let mut agent = w.agent_as_configured();
    let hostile = 300;
    let write = |dir: &str, n: usize, f: &dyn Fn(usize) -> String| {
        let text: String = (0..n).map(|i| f(i) + "\n").collect();
        std::fs::write(w.path(&format!("input/{dir}/a.log")), text).unwrap();
    };
    write("looping", hostile, &|i| format!("loop {i}"));
    write("bomb", hostile, &|i| format!("bomb {i}"));
    write("panicky", hostile, &|i| {
        if i % 50 == 7 {
            format!("p{i:04} boom")
        } else {
            format!("p{i:04} fine")
        }
    });
    // The good pipeline delivers while the others trap: in three rounds, so it has to keep
    // working, not just once.
    let good = 3000;
    for round in 0..3 {
        let text: String = (round * 1000..(round + 1) * 1000)
            .map(|i| format!("line-{i:08}-good\n"))
            .collect();
        std::fs::write(w.path(&format!("input/good/{round}.log")), text).unwrap();
        let _ = wait_for_output(&w.output_dir(), (round + 1) * 1000, Duration::from_secs(60));
    }
    // Wait for the hostile pipelines to work through their input.
    // (until its output stops growing for 2 s).
    let start = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let p = read_output(&w.output_dir())
            .iter()
            .filter(|l| l.topic == "panicky")
            .count();
        if p != last {
            (last, since) = (p, Instant::now());
        }
        if p > 0 && since.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "panicky pipeline delivered {p}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let hwm = vm_hwm_kib(agent.pid());
    sigterm(&mut agent);
    let out = read_output(&w.output_dir());
    let good_lines: Vec<&OutLine> = out.iter().filter(|l| l.topic == "good").collect();
    assert_eq!(
        good_lines.len(),
        good,
        "the good pipeline delivered everything once"
    );
    assert!(
        out.iter()
            .all(|l| l.topic != "looping" && l.topic != "bomb"),
        "nothing got past the loop or the bomb"
    );

    let dead = dead_letters(&w);
    let reasons = |topic: &str| -> Vec<String> {
        dead.iter()
            .filter(|d| d["topic"] == topic)
            .map(|d| d["dead_letter_reason"].as_str().unwrap().to_string())
            .collect()
    };
    let looping = reasons("looping");
    assert_eq!(looping.len(), hostile, "every looping record dead-lettered");
    assert!(
        looping
            .iter()
            .all(|r| r.contains("time limit of 100 ms exceeded") && r.starts_with("loop@")),
        "{:?}",
        looping.first()
    );
    let bombed = reasons("bomb");
    assert_eq!(bombed.len(), hostile);
    assert!(
        bombed
            .iter()
            .all(|r| r.contains("memory limit of 16777216 bytes reached")),
        "{:?}",
        bombed.first()
    );
    // Panics fail their batch (10 records); the rest pass; none is lost or doubled.
    let panicked: Vec<&Value> = dead.iter().filter(|d| d["topic"] == "panicky").collect();
    assert!(panicked.iter().all(|d| {
        d["dead_letter_reason"]
            .as_str()
            .unwrap()
            .contains("trapped")
    }));
    let mut seen: Vec<String> = panicked
        .iter()
        .map(|d| d["payload"].as_str().unwrap().to_string())
        .collect();
    seen.extend(
        out.iter()
            .filter(|l| l.topic == "panicky")
            .map(|l| l.payload.clone()),
    );
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(
        (before, seen.len()),
        (hostile, hostile),
        "each panicky record delivered or dead-lettered, once"
    );
    for i in (0..hostile).filter(|i| i % 50 == 7) {
        assert!(
            panicked
                .iter()
                .any(|d| d["payload"] == format!("p{i:04} boom"))
        );
    }
    let log = w.path("agent.log");
    assert!(counter_in_log(&log, "looping.transform.loop.deadline") >= 1);
    assert!(counter_in_log(&log, "bomb.transform.bomb.memory") >= 1);
    assert!(counter_in_log(&log, "panicky.transform.panic_rust.trap") >= 6);
    // Instances are dropped after each trap, so memory stays bounded.
    assert!(hwm > 0 && hwm < 300 * 1024, "agent peak RSS {hwm} KiB");
    eprintln!("agent peak RSS with hostile modules: {} MiB", hwm / 1024);
    sigterm(&mut sink);
}

/// Starts an agent that should refuse its config; returns its stderr.
fn refused(w: &World, transform: &str) -> String {
    w.agent_config_with("", transform, &[w.port]);
    let out = Command::new(bin())
        .args(["agent", "--config", w.path("agent.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "agent started with {transform}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_modules_are_refused_at_load_and_the_file_opener_gets_no_file() {
    let (Some(secrets), Some(wrong), Some(opener)) = (
        guest("needs_secrets"),
        guest("wrong_world"),
        guest("openfile_c"),
    ) else {
        return;
    };
    let w = World::new();
    let t = |m: &Path, extra: &str| {
        format!(
            "[[pipelines.transforms]]\nmodule = \"{}\"\n{extra}",
            m.display()
        )
    };
    let e = refused(&w, &t(&secrets, ""));
    assert!(
        e.contains("`dataweaver:hostile/secrets@0.1.0`") && e.contains("refused"),
        "{e}"
    );
    let e = refused(&w, &t(&wrong, ""));
    assert!(
        e.contains("does not implement the world dataweaver:transform/transform@0.1.0"),
        "{e}"
    );
    // A module whose init never returns is stopped by the time limit and refused.
    if let Some(init_loop) = guest("init_loop") {
        let e = refused(&w, &t(&init_loop, "deadline_ms = 200\n"));
        assert!(e.contains("time limit of 200 ms exceeded"), "{e}");
    }
    let e = refused(&w, &t(&opener, ""));
    assert!(e.contains("wasi:") && e.contains("does not grant"), "{e}");

    // Granted WASI without directories: it runs, and gets no file.
    let mut sink = w.sink();
    std::fs::create_dir_all(w.path("secret")).unwrap();
    std::fs::write(w.path("secret/secret.txt"), "s3cret").unwrap();
    w.agent_config_with("", &t(&opener, "[pipelines.transforms.wasi]\n"), &[w.port]);
    let mut agent = w.agent_as_configured();
    std::fs::write(w.path("input/a.log"), "one\n").unwrap();
    let out = wait_for_output(&w.output_dir(), 1, Duration::from_secs(30));
    assert!(
        out[0].payload.contains("/etc/passwd:") && !out[0].payload.contains("OPENED"),
        "{}",
        out[0].payload
    );
    sigterm(&mut agent);
    // Positive control: a granted directory is readable, so "no file" above means no access.
    std::fs::remove_dir_all(w.path("agent")).unwrap();
    w.agent_config_with(
        "",
        &t(
            &opener,
            "[pipelines.transforms.wasi]\ndirs = [{ host = \"secret\", guest = \"/\" }]\n",
        ),
        &[w.port],
    );
    let mut agent = w.agent_as_configured();
    // (a new queue, so the input is read again: a second line arrives)
    let out = wait_for_output(&w.output_dir(), 2, Duration::from_secs(30));
    assert!(
        out[1].payload.contains("/secret.txt: OPENED"),
        "{}",
        out[0].payload
    );
    sigterm(&mut agent);
    sigterm(&mut sink);
}

#[test]
fn replacing_the_module_file_swaps_at_a_batch_boundary() {
    let (Some(v1), Some(v2)) = (guest("example_rust"), guest("example_c")) else {
        return;
    };
    let w = World::new();
    let mut sink = w.sink();
    let module = w.path("enrich.wasm");
    std::fs::copy(&v1, &module).unwrap();
    let transform = format!(
        "[[pipelines.transforms]]\nmodule = \"enrich.wasm\"\nversion_header = \"x-transform\"\nconfig = {{ host = \"{HOST}\" }}\n"
    );
    w.agent_config_with("", &transform, &[w.port]);
    let mut agent = w.agent_as_configured();
    // The first half streams in under v1; the second half is written only after v2 was
    // offered, so the boundary falls inside the run without depending on timing.
    let n = 6000;
    let writer = spawn_json_stream(w.path("input/a.log"), n / 2);
    wait_for_output(&w.output_dir(), 1, Duration::from_secs(30));
    // A broken replacement is refused and the running version stays.
    if let Some(bad) = guest("wrong_world") {
        let tmp = w.path("enrich.wasm.tmp");
        std::fs::copy(&bad, &tmp).unwrap();
        std::fs::rename(&tmp, &module).unwrap();
        w.wait_log("agent.log", "changed transform file refused");
    }
    // Replace by rename, as deployment tools do: the watcher never sees half a file.
    let tmp = w.path("enrich.wasm.tmp");
    std::fs::copy(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &module).unwrap();
    w.wait_log("agent.log", "new version offered");
    writer.join().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(w.path("input/a.log"))
        .unwrap();
    for i in n / 2..n {
        writeln!(f, r#"{{"service":"svc","level":"info","i":{i}}}"#).unwrap();
    }
    drop(f);
    let mut out = wait_for_output(&w.output_dir(), n, Duration::from_secs(60));
    out.sort_by_key(|l| l.seq);
    assert_eq!(out.len(), n, "none lost or duplicated");
    let mut versions: Vec<String> = Vec::new();
    for (i, l) in out.iter().enumerate() {
        let v: Value = serde_json::from_str(&l.payload).unwrap();
        assert_eq!(v["i"], i, "in order, once each");
        assert_eq!(v["host"], HOST);
        let tag = l
            .headers
            .get("x-transform")
            .expect("every record tagged with its version");
        if versions.last() != Some(tag) {
            versions.push(tag.clone());
        }
    }
    assert_eq!(versions.len(), 2, "v1 then v2, never back: {versions:?}");
    assert!(versions.iter().all(|v| v.starts_with("enrich@")));
    sigterm(&mut agent);
    assert_eq!(
        counter_in_log(&w.path("agent.log"), "app.transform.enrich.swaps"),
        1
    );
    sigterm(&mut sink);
}

#[test]
fn a_module_config_error_is_refused_with_the_modules_message() {
    let Some(m) = guest("example_rust") else {
        return;
    };
    let w = World::new();
    let e = refused(
        &w,
        &format!(
            "[[pipelines.transforms]]\nmodule = \"{}\"\nconfig = {{ hots = \"typo\" }}\n",
            m.display()
        ),
    );
    assert!(
        e.contains("refused its config: config: `host` (a string) is required"),
        "{e}"
    );
}
