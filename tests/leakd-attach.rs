//! leakd-attach end to end against the leaker: exact outstanding totals,
//! the exit status, attaching by PID with a SIGUSR1-triggered workload, and
//! growth detection on a steady leak.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use assert_cmd::Command as Cmd;
use serde_json::Value;
use support::{bpf_available, json_lines, of_type, spawn_attached, LEAKER, LEAKER_NOFP};

fn launched(args: &[&str], cmd: &[&str]) -> Output {
    Cmd::cargo_bin("leakd-attach").unwrap().args(args).arg("--").args(cmd).timeout(Duration::from_secs(60)).output().unwrap()
}

/// The report marker lines, and the stack lines of the final report.
fn final_report(lines: &[Value]) -> (Value, Vec<Value>) {
    let i = lines.iter().rposition(|v| v["type"] == "report").expect("a report line");
    let r = lines[i].clone();
    assert_eq!(r["final"], true, "last report is final: {r}");
    let stacks = lines[i + 1..].iter().filter(|v| v["type"] == "stack").cloned().collect();
    (r, stacks)
}

/// The leaker's summary line from its stderr.
fn leaker_summary(stderr: &[u8]) -> Value {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "leaker_summary")
        .expect("leaker_summary on stderr")
}

/// Function containing a return address, by addr2line (None when it is not installed).
fn function_at(module: &str, offset: &str) -> Option<String> {
    let off = u64::from_str_radix(offset.trim_start_matches("0x"), 16).ok()?;
    // A return address points after the call: look up the call itself. For
    // the leaker (a PIE whose text is mapped at its file offset) the file
    // offset is the address addr2line wants.
    let out = Command::new("addr2line").args(["-f", "-i", "-e", module]).arg(format!("{:#x}", off - 1)).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_ten_nine(leaker: &str) {
    // --linger keeps the leaker's maps readable for a moment after it leaks,
    // so frames resolve to modules even on a loaded machine (a command that
    // exits before its maps are read has bare-address frames).
    let out = launched(&[], &[leaker, "ten-nine", "--linger", "0.3"]);
    assert_eq!(out.status.code(), Some(3), "leaks found => exit 3; stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 1, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 8, "{lines:?}");
    assert_eq!(r["stacks"], 1);
    assert_eq!(stacks.len(), 1);
    let s = &stacks[0];
    assert_eq!(s["outstanding_bytes"], 8);
    assert_eq!(s["outstanding_count"], 1);
    assert_eq!(s["growing"], false);
    let frame = &s["stack"][0];
    let module = frame["module"].as_str().unwrap_or_else(|| panic!("first frame has a module: {s}"));
    assert_eq!(std::fs::canonicalize(module).unwrap(), std::fs::canonicalize(leaker).unwrap());
    if let Some(func) = function_at(module, frame["offset"].as_str().unwrap()) {
        assert!(func.contains("leak_ten_nine_alloc"), "first frame is in leak_ten_nine_alloc: {func}");
    }
}

#[test]
fn ten_nine_leaves_one_block_fp() {
    if !bpf_available() {
        return;
    }
    check_ten_nine(LEAKER);
}

#[test]
fn ten_nine_leaves_one_block_nofp() {
    if !bpf_available() {
        return;
    }
    check_ten_nine(LEAKER_NOFP);
}

#[test]
fn no_leak_exits_zero() {
    if !bpf_available() {
        return;
    }
    let out = launched(&[], &[LEAKER, "none"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 0, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 0);
    assert!(stacks.is_empty());
}

fn wait_output(mut child: Child) -> (Option<i32>, Vec<u8>) {
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    (status.code(), stdout)
}

/// Kills the leaker when a test ends, even by a failed assertion.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the leaker and wait for its ready line (its allocator is mapped
/// then, so -p can find it). Returns it, its pid and its stderr.
fn start_leaker(args: &[&str]) -> (KillOnDrop, u64, BufReader<std::process::ChildStderr>) {
    let mut leaker = Command::new(LEAKER).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(leaker.stderr.take().unwrap());
    let leaker = KillOnDrop(leaker);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "leaker exited before ready");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["type"] == "leaker_ready" {
                return (leaker, v["pid"].as_u64().unwrap(), err);
            }
        }
    }
}

#[test]
fn attach_by_pid() {
    if !bpf_available() {
        return;
    }
    let (mut leaker, pid, mut err) = start_leaker(&["ten-nine", "--wait-signal", "--linger", "1"]);
    let pid_s = pid.to_string();
    let (tool, tool_err) = spawn_attached("leakd-attach", &["-p", &pid_s]);
    // Keep draining the tool's stderr so it never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut tool_err.into_inner(), &mut std::io::sink()));
    // SAFETY: kill with a valid pid and signal number has no memory effects.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(leaker.0.wait().unwrap().success());
    let (code, stdout) = wait_output(tool);
    assert_eq!(code, Some(3));
    let lines = json_lines(&stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["pid"], pid);
    assert_eq!(r["outstanding_count"], 1, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 8);
    assert_eq!(stacks.len(), 1);
}

#[test]
fn mixed_matches_leaker_summary() {
    if !bpf_available() {
        return;
    }
    let out = launched(&["--top", "0"], &[LEAKER, "mixed", "--linger", "0.3"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = leaker_summary(&out.stderr);
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], summary["leaked_count"], "{lines:?}\n{summary}");
    assert_eq!(r["outstanding_bytes"], summary["leaked_bytes"], "{lines:?}\n{summary}");
    assert_eq!(stacks.len() as u64, r["stacks"].as_u64().unwrap());
}

#[test]
fn threads_leaker_part_matches_summary() {
    if !bpf_available() {
        return;
    }
    let out = launched(&["--top", "0"], &[LEAKER, "threads", "--threads", "3", "--count", "2", "--linger", "0.3"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = leaker_summary(&out.stderr);
    let lines = json_lines(&out.stdout);
    let (_, stacks) = final_report(&lines);
    let leaker = std::fs::canonicalize(LEAKER).unwrap();
    let in_leaker = |s: &Value| {
        s["stack"][0]["module"].as_str().is_some_and(|m| std::fs::canonicalize(m).is_ok_and(|m| m == leaker))
    };
    let sum = |f: &str, mine: bool| -> u64 {
        stacks.iter().filter(|s| in_leaker(s) == mine).map(|s| s[f].as_u64().unwrap()).sum()
    };
    assert_eq!(sum("outstanding_bytes", true), summary["leaked_bytes"].as_u64().unwrap(), "{lines:?}");
    assert_eq!(sum("outstanding_count", true), summary["leaked_count"].as_u64().unwrap(), "{lines:?}");
    // glibc's per-thread DTV: calloc(17, 16) for each thread, not the leaker's.
    assert_eq!(sum("outstanding_bytes", false), 3 * 272, "{lines:?}");
}

#[test]
fn steady_leak_is_growing() {
    if !bpf_available() {
        return;
    }
    let (leaker, pid, err) = start_leaker(&["steady", "--size", "65536", "--interval", "0.2", "--max", "100000000"]);
    std::thread::spawn(move || std::io::copy(&mut err.into_inner(), &mut std::io::sink()));
    let pid = pid.to_string();
    // Reports at 0.5, 1.0, 1.5, 2.0 and 2.5 s, then the final one.
    let (tool, tool_err) = spawn_attached("leakd-attach", &["-p", &pid, "-i", "0.5", "-d", "2.8"]);
    std::thread::spawn(move || std::io::copy(&mut tool_err.into_inner(), &mut std::io::sink()));
    let (code, stdout) = wait_output(tool);
    drop(leaker);
    assert_eq!(code, Some(3));
    let lines = json_lines(&stdout);
    let reports = of_type(&lines, "report");
    assert!(reports.len() >= 5, "{lines:?}");
    // The last periodic report: its trend window is exactly 3 intervals
    // (the final one's last interval is cut short by -d).
    let i = lines.iter().rposition(|v| v["type"] == "report" && v["final"] == false).expect("a periodic report");
    let top = &lines[i + 1];
    assert_eq!(top["type"], "stack", "{lines:?}");
    assert_eq!(top["growing"], true, "{lines:?}");
    // The final report agrees that it grows.
    let (_, stacks) = final_report(&lines);
    assert_eq!(stacks[0]["growing"], true, "{lines:?}");
    let rate = top["growth_bytes_per_s"].as_f64().unwrap();
    let want = 65536.0 / 0.2;
    assert!((rate - want).abs() <= want * 0.1, "growth {rate} B/s, want {want} ± 10%");
}
