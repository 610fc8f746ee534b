//! Acceptance 7: `dataweaver up` delivers a line written to its sample file, through its
//! sample transform.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn up_delivers_a_line_from_its_sample_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("dw");
    let mut child = Proc {
        child: Command::new(bin())
            .args(["up", "--dir", work.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let stdout = child.child.stdout.take().unwrap();
    let mut input = None;
    let mut output = None;
    for line in BufReader::new(stdout).lines().take(10) {
        let line = line.unwrap();
        if let Some(p) = line.trim().strip_prefix("write lines to:") {
            input = Some(p.trim().to_string());
        }
        if let Some(p) = line.trim().strip_prefix("JSONL output in:") {
            output = Some(p.trim().to_string());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let input = input.expect("up prints where to write input");
    let output = output.expect("up prints where output appears");
    let start = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    writeln!(f, "not json: dead-lettered by the sample transform").unwrap();
    writeln!(
        f,
        r#"{{"service":"web","level":"info","msg":"hello from the README"}}"#
    )
    .unwrap();
    loop {
        let lines = read_output(std::path::Path::new(&output));
        if let Some(l) = lines
            .iter()
            .find(|l| l.payload.contains("hello from the README"))
        {
            // The example transform ran: topic from `service`, `host` from its config.
            assert_eq!(l.topic, "web");
            assert!(l.payload.contains(r#""host":"local""#), "{}", l.payload);
            assert_eq!(lines.len(), 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "line did not arrive within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("delivered in {:?}", start.elapsed());
}
