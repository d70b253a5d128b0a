//! Helpers shared by the integration tests (each tests/<tool>.rs includes
//! this with `mod support;`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether BPF tests can run here. Outside CI a non-root run skips them with a
/// note; in CI (CI=true) a missing privilege is a failure, never a skip.
pub fn bpf_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("BPF tests must run as root in CI (CI=true), refusing to skip");
    }
    eprintln!("note: skipping BPF test: not root");
    false
}

/// The leaker built with frame pointers.
pub const LEAKER: &str = env!("LEAKER_FP");
/// The leaker built without frame pointers.
pub const LEAKER_NOFP: &str = env!("LEAKER_NOFP");

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin(name)
}

/// Parse stdout as JSON lines; every line must be a JSON object with "type".
pub fn json_lines(stdout: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(stdout).expect("stdout is UTF-8");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.get("type").and_then(Value::as_str).is_some(), "line without \"type\": {l}");
            v
        })
        .collect()
}

/// Lines of a given "type".
pub fn of_type<'a>(lines: &'a [Value], ty: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == ty).collect()
}

/// Start a tool in the background with `-v` and wait until it reports on
/// stderr that its probes are attached. Returns the child and its stderr
/// reader (keep reading it, or the tool may block on a full pipe).
pub fn spawn_attached(tool: &str, args: &[&str]) -> (Child, BufReader<ChildStderr>) {
    let (child, err, _log) = spawn_attached_with_log(tool, args);
    (child, err)
}

/// As [`spawn_attached`], also returning what the tool printed to stderr up
/// to and including its "attached" line.
pub fn spawn_attached_with_log(tool: &str, args: &[&str]) -> (Child, BufReader<ChildStderr>, String) {
    let mut child = Command::new(bin(tool))
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {tool}: {e}"));
    let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("reading tool stderr");
        assert!(n > 0, "{tool} exited before attaching: {log}");
        log.push_str(&line);
        if line.contains("attached") {
            break;
        }
        assert!(Instant::now() < deadline, "{tool} did not attach in time");
    }
    (child, err, log)
}

/// Send SIGINT to a child (the way a user stops a tool).
pub fn interrupt(child: &Child) {
    // SAFETY: kill with a valid pid and signal number has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}
