//! syscount end to end: a workload makes known numbers of syscalls and every
//! count must come out exact.

use leakd_test_macros::bpf_test;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{json_lines, of_type, spawn_attached};
use assert_cmd::Command as Cmd;
use serde_json::Value;

/// The workload (tests/workloads/syscount_work.c), compiled once per run,
/// plus a copy under another name for --comm.
fn workload() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("leakd-syscount-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("syscount_work");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/syscount_work.c");
        let st = Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(src)
            .status()
            .expect("running gcc");
        assert!(st.success(), "gcc failed on {src}");
        std::fs::copy(&bin, dir.join("other_work")).unwrap();
        bin
    })
}

fn other_workload() -> PathBuf {
    workload().with_file_name("other_work")
}

fn w() -> &'static str {
    workload().to_str().unwrap()
}

fn run(args: &[&str], cmd: &[&str]) -> Vec<Value> {
    let out = Cmd::cargo_bin("syscount").unwrap().args(args).arg("--").args(cmd).output().unwrap();
    assert!(out.status.success(), "syscount failed: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn rows<'a>(lines: &'a [Value], ty: &str, syscall: &str) -> Vec<&'a Value> {
    of_type(lines, ty).into_iter().filter(|r| r["syscall"] == syscall).collect()
}

fn one<'a>(lines: &'a [Value], ty: &str, syscall: &str) -> &'a Value {
    let r = rows(lines, ty, syscall);
    assert_eq!(r.len(), 1, "expected one {ty} row for {syscall}: {lines:?}");
    r[0]
}

fn read_pids(path: &Path) -> (u64, u64) {
    let s = std::fs::read_to_string(path).unwrap();
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn pidfile(name: &str) -> PathBuf {
    workload().with_file_name(format!("{name}.pids"))
}

#[bpf_test]
fn launched_command_counts_are_exact() {
    let lines = run(&[], &[w(), "12345", "0"]);
    let r = one(&lines, "syscall", "getppid");
    assert_eq!(r["count"], 12345, "{lines:?}");
    assert_eq!(r["nr"], libc::SYS_getppid);
    // Rows are sorted by count: getppid is by far the most frequent.
    assert_eq!(lines[0]["syscall"], "getppid");
    let markers = of_type(&lines, "interval");
    assert_eq!(markers.len(), 1, "{lines:?}");
    assert_eq!(lines.last().unwrap()["type"], "interval");
    assert!(markers[0]["count"].as_u64().unwrap() > 12345, "startup syscalls are counted too");
    assert!(of_type(&lines, "lost").is_empty());
}

/// Counting starts at the command's execve: nothing the launcher does
/// after the release is counted (the command, a C program doing nothing,
/// sets no signal handler).
#[bpf_test]
fn launched_command_counts_start_at_its_exec() {
    let dir = crate::support::build_c(
        "syscount-nothing",
        &[("nothing.c", "int main(void) { return 0; }\n")],
        &[&["gcc", "-o", "nothing", "nothing.c"]],
    );
    let lines = run(&["-T", "0"], &[dir.join("nothing").to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(one(&lines, "syscall", "execve")["count"], 1, "{lines:?}");
    assert_eq!(one(&lines, "syscall", "exit_group")["count"], 1, "{lines:?}");
    assert!(rows(&lines, "syscall", "rt_sigaction").is_empty(), "{lines:?}");
}

/// A long run over short-lived processes keeps room for new ones: the
/// rows of a process that has exited are dropped once reported. The
/// workload runs /bin/true once per line it reads, and gets a line after
/// each interval marker, so at most three of them are ever in the table
/// (one is dropped at the second report after it ran); the twelve of them
/// together (about 18 rows each) would not fit in it.
#[bpf_test]
fn rows_of_exited_processes_make_room() {
    let fifo = std::env::temp_dir().join(format!("leakd-syscount-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: path is a valid NUL-terminated string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let script = format!("exec 3<{}; while read -r _ <&3; do /bin/true; done", fifo.display());
    let mut tool = Command::new(crate::support::bin("syscount"))
        .args(["-M", "-T", "0", "-i", "0.1", "--max-rows", "150", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Non-blocking, so that a shell that never comes fails the test instead
    // of hanging it.
    let t0 = std::time::Instant::now();
    let mut feed = loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
            Ok(f) => break Some(f),
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && t0.elapsed() < Duration::from_secs(60) =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the workload never opened its FIFO: {e}"),
        }
    };
    let _ = std::fs::remove_file(&fifo);
    let mut lines = Vec::new();
    let mut fed = 0;
    for line in BufReader::new(tool.stdout.take().unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if let (true, Some(f)) = (v["type"] == "interval", &mut feed) {
            f.write_all(b"x\n").unwrap();
            fed += 1;
            if fed == 12 {
                // The shell reads the end of its input and exits, and so does syscount.
                feed = None;
            }
        }
        lines.push(v);
    }
    assert!(tool.wait().unwrap().success());
    assert!(of_type(&lines, "lost").is_empty(), "{lines:?}");
    // Every exec counted once: the shell's and the twelve /bin/true's (a
    // report between a fork and its exec names the child "sh": by pid).
    let mut execs = std::collections::BTreeMap::new();
    for r in of_type(&lines, "process_syscall").into_iter().filter(|r| r["syscall"] == "execve") {
        *execs.entry(r["pid"].as_u64().unwrap()).or_insert(0) += r["count"].as_u64().unwrap();
    }
    assert_eq!(execs.len(), 13, "{lines:?}");
    assert!(execs.values().all(|&n| n == 1), "{execs:?}");
}

#[bpf_test]
fn syscall_filter_and_top() {
    let lines = run(&["-s", "getppid,close", "-T", "0"], &[w(), "500", "7"]);
    let syscalls: Vec<_> = of_type(&lines, "syscall");
    assert_eq!(syscalls.len(), 2, "{lines:?}");
    assert_eq!(one(&lines, "syscall", "getppid")["count"], 500);
    // close(-1) 7 times, plus whatever closes the loader makes.
    assert!(one(&lines, "syscall", "close")["count"].as_u64().unwrap() >= 7);
    // With every row printed, the marker adds up exactly.
    let sum: u64 = syscalls.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(of_type(&lines, "interval")[0]["count"], sum);
    assert_eq!(of_type(&lines, "interval")[0]["rows"], 2);

    let lines = run(&["-T", "1"], &[w(), "500", "0"]);
    let syscalls = of_type(&lines, "syscall");
    assert_eq!(syscalls.len(), 1, "{lines:?}");
    assert_eq!(syscalls[0]["syscall"], "getppid");
    assert_eq!(syscalls[0]["count"], 500);
    assert!(of_type(&lines, "interval")[0]["rows"].as_u64().unwrap() > 1);
}

#[bpf_test]
fn failed_syscalls_by_errno() {
    let lines = run(&["-x", "-T", "0"], &[w(), "100", "7"]);
    let close: Vec<_> = rows(&lines, "syscall", "close");
    assert_eq!(close.len(), 1, "{lines:?}");
    assert_eq!(close[0]["count"], 7);
    assert_eq!(close[0]["errno"], "EBADF");
    assert_eq!(close[0]["errno_nr"], libc::EBADF);
    // getppid never fails, and every row is a failure.
    assert!(rows(&lines, "syscall", "getppid").is_empty());
    assert!(of_type(&lines, "syscall").iter().all(|r| r["errno_nr"].as_u64().unwrap() > 0));

    let lines = run(&["-e", "EBADF", "-T", "0"], &[w(), "100", "9"]);
    let all = of_type(&lines, "syscall");
    assert_eq!(all.len(), 1, "{lines:?}");
    assert_eq!(all[0]["syscall"], "close");
    assert_eq!(all[0]["count"], 9);

    // Another errno: close's EBADF is not counted.
    let lines = run(&["-e", "EPERM", "-s", "close"], &[w(), "0", "9"]);
    assert!(of_type(&lines, "syscall").is_empty(), "{lines:?}");
}

#[bpf_test]
fn per_process_rows_name_pid_and_comm() {
    let pf = pidfile("per_process");
    let lines = run(&["-P", "-s", "getppid"], &[w(), "300", "0", "200", pf.to_str().unwrap()]);
    let (parent, child) = read_pids(&pf);
    let procs = of_type(&lines, "process");
    assert_eq!(procs.len(), 2, "{lines:?}");
    assert_eq!(procs[0]["pid"], parent);
    assert_eq!(procs[0]["count"], 300);
    assert_eq!(procs[1]["pid"], child);
    assert_eq!(procs[1]["count"], 200);
    for p in &procs {
        // Named after the program it runs, not after syscount that forked it.
        assert_eq!(p["comm"], "syscount_work");
        assert!(p.get("syscall").is_none());
    }
}

#[bpf_test]
fn process_by_syscall_matrix() {
    let pf = pidfile("matrix");
    let lines = run(&["-M", "-T", "0"], &[w(), "300", "4", "200", pf.to_str().unwrap()]);
    let (parent, child) = read_pids(&pf);
    let cell = |pid: u64, sc: &str| -> Vec<&Value> {
        of_type(&lines, "process_syscall")
            .into_iter()
            .filter(|r| r["pid"] == pid && r["syscall"] == sc)
            .collect()
    };
    let pp = cell(parent, "getppid");
    let cp = cell(child, "getppid");
    assert_eq!(pp.len(), 1, "{lines:?}");
    assert_eq!(cp.len(), 1, "{lines:?}");
    assert_eq!(pp[0]["count"], 300);
    assert_eq!(cp[0]["count"], 200);
    assert_eq!(pp[0]["comm"], "syscount_work");
    // The child never calls close.
    assert!(cell(child, "close").is_empty(), "{lines:?}");
    assert!(cell(parent, "close")[0]["count"].as_u64().unwrap() >= 4);

    // -P with -x: per process and errno.
    let lines = run(&["-P", "-x"], &[w(), "10", "6"]);
    let procs = of_type(&lines, "process");
    let ebadf: Vec<_> = procs.iter().filter(|p| p["errno"] == "EBADF").collect();
    assert_eq!(ebadf.len(), 1, "{lines:?}");
    assert_eq!(ebadf[0]["count"], 6);
}

#[bpf_test]
fn latency_and_histogram_cover_every_call() {
    let lines = run(&["-L", "--hist", "-s", "getppid"], &[w(), "2000", "0"]);
    let r = one(&lines, "syscall", "getppid");
    assert_eq!(r["count"], 2000);
    let total = r["lat_ns_total"].as_u64().unwrap();
    let avg = r["lat_ns_avg"].as_u64().unwrap();
    assert!(total > 0 && avg > 0, "{r}");
    assert_eq!(avg, total / 2000, "every call returned, so avg = total / count");
    let h = one(&lines, "hist", "getppid");
    let buckets = h["buckets"].as_array().unwrap();
    let sum: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, 2000);
    assert_eq!(h["count"], 2000);
    for b in buckets {
        let lo = b["lat_ns_min"].as_u64().unwrap();
        let hi = b["lat_ns_max"].as_u64().unwrap();
        assert!(lo == 0 || lo.is_power_of_two(), "{b}");
        assert_eq!(hi + 1, (lo.max(1)) * 2, "{b}");
    }
    // Without -L, no latency fields.
    let lines = run(&["--hist", "-s", "getppid"], &[w(), "10", "0"]);
    assert!(one(&lines, "syscall", "getppid").get("lat_ns_total").is_none());
}

#[bpf_test]
fn comm_filter_is_exact() {
    let script = format!("{} 100 0; {} 50 0", w(), other_workload().display());
    let lines = run(&["--comm", "other_work", "-s", "getppid"], &["sh", "-c", &script]);
    assert_eq!(one(&lines, "syscall", "getppid")["count"], 50, "{lines:?}");
    // Children are followed (sh itself calls getppid for $PPID, so look by name).
    let lines = run(&["-P", "-T", "0", "-s", "getppid"], &["sh", "-c", &script]);
    let by = |comm: &str| -> Vec<u64> {
        of_type(&lines, "process")
            .iter()
            .filter(|p| p["comm"] == comm)
            .map(|p| p["count"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(by("syscount_work"), vec![100], "{lines:?}");
    assert_eq!(by("other_work"), vec![50], "{lines:?}");
}

#[bpf_test]
fn attached_by_pid() {
    let mut work = Command::new(w())
        .args(["4321", "3", "0", "-", "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = work.id().to_string();
    let (mut tool, _err) = spawn_attached("syscount", &["-p", &pid, "-s", "getppid"]);
    work.stdin.take().unwrap().write_all(b"x").unwrap();
    assert!(work.wait().unwrap().success());
    // syscount ends by itself when the target exits.
    let status = tool.wait().unwrap();
    assert!(status.success());
    let mut out = Vec::new();
    tool.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let lines = json_lines(&out);
    assert_eq!(one(&lines, "syscall", "getppid")["count"], 4321, "{lines:?}");
}

#[bpf_test]
fn intervals_partition_the_counts() {
    let script = format!("{w} 100 0; sleep 0.3; {w} 100 0; sleep 0.3; {w} 100 0", w = w());
    // --comm: sh calls getppid too.
    let lines = run(
        &["-i", "0.1", "-T", "0", "-s", "getppid", "--comm", "syscount_work"],
        &["sh", "-c", &script],
    );
    let markers = of_type(&lines, "interval");
    assert!(markers.len() >= 2, "the run spans several intervals: {lines:?}");
    // Markers are numbered 1, 2, 3... and each closes its own rows.
    let mut seq = 1;
    let mut pending: u64 = 0;
    let mut rows_seen = 0;
    let mut total = 0;
    for l in &lines {
        match l["type"].as_str().unwrap() {
            "syscall" => {
                assert_eq!(l["syscall"], "getppid");
                pending += l["count"].as_u64().unwrap();
                rows_seen += 1;
            }
            "interval" => {
                assert_eq!(l["seq"], seq, "{lines:?}");
                assert_eq!(l["count"], pending, "marker counts its interval's rows");
                assert_eq!(l["rows"], rows_seen);
                assert!(l["interval_ns"].as_u64().unwrap() > 0);
                total += pending;
                seq += 1;
                pending = 0;
                rows_seen = 0;
            }
            other => panic!("unexpected line type {other}: {l}"),
        }
    }
    assert_eq!(pending, 0, "rows after the last marker: {lines:?}");
    assert_eq!(total, 300, "intervals add up to the exact total");
    // Three bursts 0.3 s apart land in three intervals (a burst that
    // straddles a tick may split, but no interval holds two bursts).
    let busy: Vec<u64> =
        markers.iter().map(|m| m["count"].as_u64().unwrap()).filter(|&c| c > 0).collect();
    assert!(busy.len() >= 3 && busy.iter().all(|&c| c <= 100), "{busy:?}: {lines:?}");
}

#[bpf_test]
fn text_table() {
    let out = Cmd::cargo_bin("syscount")
        .unwrap()
        .args(["--text", "-L", "-s", "getppid", "--", w(), "77", "0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("SYSCALL"), "{text}");
    let row = text.lines().find(|l| l.starts_with("getppid")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.split_whitespace().nth(1), Some("77"), "{text}");
}

#[test]
fn usage_errors() {
    crate::support::assert_usage_errors(
        "syscount",
        &[
            (&["-s", "no_such_syscall"], "unknown syscall"),
            (&["-e", "ENOTANERRNO"], "unknown errno"),
            (&["-T", "x"], "invalid value"),
            (&["--comm", ""], "not a process name"),
        ],
    );
    let out = Cmd::cargo_bin("syscount").unwrap().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:") && help.contains("syscount -M -- make"), "{help}");
}

/// SIGUSR1 prints a report now (the counts so far), and the run goes on.
#[bpf_test]
fn sigusr1_prints_a_report_now() {
    let (mut tool, _err) = spawn_attached("syscount", &["--", "sleep", "3"]);
    crate::support::signal(tool.id(), libc::SIGUSR1);
    let mut out = BufReader::new(tool.stdout.take().unwrap());
    // A report is its rows, then its "interval" line.
    let v = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "syscount ended after SIGUSR1");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if v["type"] == "interval" {
            break v;
        }
    };
    assert_eq!(v["seq"], 1, "{v}");
    assert!(tool.try_wait().unwrap().is_none(), "syscount ended after SIGUSR1");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(tool.wait().unwrap().code(), Some(0));
    // The final report follows, numbered after it.
    let lines = json_lines(rest.as_bytes());
    let last = of_type(&lines, "interval");
    assert_eq!(last.last().unwrap()["seq"], 2, "{lines:?}");
}
