//! Helpers shared by the integration tests' modules.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Whether BPF tests can run here (see `root_available`).
pub fn bpf_available() -> bool {
    root_available("BPF")
}

/// Whether tests of `what` that need root can run here. Outside CI a
/// non-root run skips them with a note; in CI (CI set to anything but "",
/// "0" or "false") a missing privilege is a failure, never a skip.
pub fn root_available(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{what} tests must run as root in CI (CI is set), refusing to skip");
    }
    eprintln!("note: skipping {what} test: not root");
    false
}

/// Whether the tests run in CI (CI set to anything but "", "0" or "false"),
/// where a missing privilege or program fails a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The last report of a run (it must be the final one) and the stack lines
/// that follow it.
pub fn final_report(lines: &[Value]) -> (Value, Vec<Value>) {
    let i = lines.iter().rposition(|v| v["type"] == "report").expect("a report line");
    let r = lines[i].clone();
    assert_eq!(r["final"], true, "last report is final: {r}");
    let stacks = lines[i + 1..].iter().filter(|v| v["type"] == "stack").cloned().collect();
    (r, stacks)
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
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
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
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
pub fn spawn_attached_with_log(
    tool: &str,
    args: &[&str],
) -> (Child, BufReader<ChildStderr>, String) {
    let mut child = Command::new(bin(tool))
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {tool}: {e}"));
    let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
    // A tool that hangs silently would block read_line forever: a watchdog
    // kills it after a minute, which ends the read and fails the test.
    let (attached, watchdog) = std::sync::mpsc::channel::<()>();
    let pid = child.id();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(60))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            signal(pid, libc::SIGKILL);
        }
    });
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("reading tool stderr");
        assert!(n > 0, "{tool} exited (or was killed after 60 s) before attaching: {log}");
        log.push_str(&line);
        if line.contains("attached") {
            break;
        }
    }
    let _ = attached.send(());
    (child, err, log)
}

/// Send SIGINT to a child (the way a user stops a tool).
pub fn interrupt(child: &Child) {
    signal(child.id(), libc::SIGINT);
}

/// Send `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with a pid and a signal number has no memory effects.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Kills a process when a test ends, even by a failed assertion.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the leaker (with extra environment) and wait for its ready line:
/// its allocator is mapped then, so -p can find it. Returns it, its pid and
/// its stderr.
pub fn start_leaker_env(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (KillOnDrop, u32, BufReader<ChildStderr>) {
    let mut cmd = Command::new(LEAKER);
    cmd.args(args).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut leaker = cmd.spawn().unwrap();
    let mut err = BufReader::new(leaker.stderr.take().unwrap());
    let leaker = KillOnDrop(leaker);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "leaker exited before ready");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["type"] == "leaker_ready" {
                let pid =
                    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("leaker pid");
                return (leaker, pid, err);
            }
        }
    }
}

/// [`start_leaker_env`] without extra environment.
pub fn start_leaker(args: &[&str]) -> (KillOnDrop, u32, BufReader<ChildStderr>) {
    start_leaker_env(args, &[])
}

/// Read a tool's stderr until a line contains `needle`; fails with
/// `if_ended` if the tool ends first.
pub fn wait_for_log(err: &mut BufReader<ChildStderr>, needle: &str, if_ended: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "{if_ended}");
        if line.contains(needle) {
            return;
        }
    }
}

/// Each `args` must be refused as bad usage (exit 2) with `msg` on stderr.
pub fn assert_usage_errors(tool: &str, cases: &[(&[&str], &str)]) {
    for (args, msg) in cases {
        let out = Command::new(bin(tool)).args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// The leaker's own account of what it did (its leaker_summary line on
/// stderr).
pub fn leaker_summary(stderr: &[u8]) -> Value {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "leaker_summary")
        .expect("leaker_summary on stderr")
}

/// Keep reading a tool's stderr in the background and throw it away, so
/// the tool never blocks on a full pipe.
pub fn discard(err: BufReader<ChildStderr>) {
    std::thread::spawn(move || std::io::copy(&mut err.into_inner(), &mut std::io::sink()));
}

/// Write C sources into a fresh temp dir and run the build commands there;
/// returns the dir.
pub fn build_c(name: &str, files: &[(&str, &str)], cmds: &[&[&str]]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leakd-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    for cmd in cmds {
        let st = Command::new(cmd[0]).args(&cmd[1..]).current_dir(&dir).status().unwrap();
        assert!(st.success(), "{cmd:?}");
    }
    dir
}

/// Start `cmd` with its standard input and output piped, and read the first
/// line it writes (a test program saying it is set up): the child, the rest
/// of its output, and that line ("" when it wrote none).
pub fn spawn_first_line(
    cmd: &mut Command,
) -> (Child, BufReader<std::process::ChildStdout>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading the child's output");
    (child, out, line)
}

/// A cgroup v2 of the test's own (`tag` names it), removed when dropped
/// (rmdir: the processes moved into it must have exited by then).
pub struct TestCgroup(pub String);

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| f[1].to_string())
            .expect("a cgroup2 mount");
        let cg = format!("{root}/leakd-{tag}-{}", std::process::id());
        std::fs::create_dir(&cg).unwrap_or_else(|e| panic!("creating {cg}: {e}"));
        TestCgroup(cg)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Busy while a process is left in it: a tool's leakd-detach child
        // outlives the tool by the seconds its uprobes take to detach.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = std::fs::remove_dir(&self.0) {
            if e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A directory of one test's own, removed when dropped. Tests run in
/// parallel threads of one process: a counter keeps their directories
/// apart.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("leakd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
