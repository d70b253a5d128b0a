//! execsnoop end to end: real execs, exact argv, exit codes.

use leakd_test_macros::bpf_test;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, bpf_available, json_lines, of_type, spawn_attached};
use assert_cmd::Command as Cmd;
use serde_json::{json, Value};

fn run_launched(extra: &[&str], cmd: &[&str]) -> Vec<Value> {
    let out =
        Cmd::cargo_bin("execsnoop").unwrap().args(extra).arg("--").args(cmd).output().unwrap();
    assert!(out.status.success(), "execsnoop failed: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

#[bpf_test]
fn launched_command_has_exact_filename_and_argv() {
    let tool = Command::new(bin("execsnoop"))
        .args(["--", "/bin/true", "alpha", "beta gamma", "", "δ"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let execsnoop_pid = tool.id();
    let out = tool.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    let e = execs[0];
    assert_eq!(e["filename"], "/bin/true");
    assert_eq!(e["argv"], json!(["/bin/true", "alpha", "beta gamma", "", "δ"]));
    assert_eq!(e["ret"], 0);
    assert_eq!(e["comm"], "true");
    assert_eq!(e["argv_truncated"], false);
    assert_eq!(e["uid"], 0);
    // The launched command is execsnoop's child.
    assert_eq!(e["ppid"], execsnoop_pid, "{e}");
    assert!(e["ts_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000, "ts_ns is wall clock");
    assert!(of_type(&lines, "lost").is_empty());
}

#[bpf_test]
fn path_lookup_and_children_are_followed() {
    // `sh` is found through PATH; its child's exec is reported too.
    let lines = run_launched(&[], &["sh", "-c", "/bin/true child-arg; exit 0"]);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 2, "{lines:?}");
    assert_eq!(execs[0]["argv"], json!(["sh", "-c", "/bin/true child-arg; exit 0"]));
    assert_eq!(execs[1]["argv"], json!(["/bin/true", "child-arg"]));
    assert_eq!(execs[1]["ppid"], execs[0]["pid"]);
}

#[bpf_test]
fn missing_file_reports_enoent() {
    let lines = run_launched(&[], &["sh", "-c", "/nonexistent/leakd-test x 2>/dev/null; exit 0"]);
    let failed: Vec<_> = of_type(&lines, "exec").into_iter().filter(|e| e["ret"] != 0).collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["ret"], -2);
    assert_eq!(failed[0]["filename"], "/nonexistent/leakd-test");
    assert_eq!(failed[0]["argv"], json!(["/nonexistent/leakd-test", "x"]));
    // --failed keeps only that one.
    let lines = run_launched(
        &["--failed"],
        &["sh", "-c", "/nonexistent/leakd-test y 2>/dev/null; /bin/true; exit 0"],
    );
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["argv"], json!(["/nonexistent/leakd-test", "y"]));
}

#[bpf_test]
fn max_args_truncates_and_reports_length() {
    let lines = run_launched(&["--max-args", "3"], &["/bin/true", "a", "b", "c", "d", "e"]);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1);
    assert_eq!(execs[0]["argv"], json!(["/bin/true", "a", "b"]));
    assert_eq!(execs[0]["argv_truncated"], true);
    // "/bin/true\0a\0b\0c\0d\0e\0"
    assert_eq!(execs[0]["argv_len_bytes"], 20);
}

/// argv longer than the 16 KiB capture: cut, flagged, and the filename
/// still right, for a successful exec and for a failed one (whose argv is
/// walked argument by argument, so the last one read runs past the limit).
#[bpf_test]
fn long_argv_is_cut_without_losing_the_filename() {
    let args: Vec<String> = (0..8).map(|i| format!("{i}{}", "x".repeat(2999))).collect();
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    let check = |e: &Value, filename: &str, first: &str| {
        assert_eq!(e["filename"], filename);
        assert_eq!(e["argv_truncated"], true);
        let argv = e["argv"].as_array().unwrap();
        assert_eq!(argv[0], first);
        assert_eq!(argv[1], args[0].as_str());
        // The first argument and five whole ones fit in 16 KiB, then the
        // part of the sixth that fills the capture exactly.
        assert_eq!(argv.len(), 7, "{} args", argv.len());
        let kept: usize = argv.iter().map(|a| a.as_str().unwrap().len() + 1).sum();
        assert_eq!(kept, 16384, "{kept} bytes kept");
    };
    let mut cmd = vec!["/bin/true"];
    cmd.extend(args.iter().map(String::as_str));
    let lines = run_launched(&[], &cmd);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    check(execs[0], "/bin/true", "/bin/true");
    assert_eq!(execs[0]["argv_len_bytes"], "/bin/true".len() + 1 + total);

    let mut cmd = vec!["sh", "-c", "/nonexistent/leakd-long \"$@\" 2>/dev/null; exit 0", "sh"];
    cmd.extend(args.iter().map(String::as_str));
    let lines = run_launched(&["--failed"], &cmd);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["ret"], -2);
    check(execs[0], "/nonexistent/leakd-long", "/nonexistent/leakd-long");
}

#[bpf_test]
fn storm_of_2000_execs_all_reported_with_argv() {
    let script = "i=0; while [ $i -lt 2000 ]; do /bin/true storm-$i; i=$((i+1)); done";
    let lines = run_launched(&[], &["sh", "-c", script]);
    assert!(of_type(&lines, "lost").is_empty(), "lost events: {:?}", of_type(&lines, "lost"));
    let mut seen = vec![false; 2000];
    for e in of_type(&lines, "exec").into_iter().filter(|e| e["comm"] == "true") {
        let argv = e["argv"].as_array().unwrap();
        assert_eq!(argv.len(), 2, "{e}");
        let n: usize = argv[1].as_str().unwrap().strip_prefix("storm-").unwrap().parse().unwrap();
        assert!(!seen[n], "storm-{n} reported twice");
        seen[n] = true;
    }
    let missing: Vec<_> = (0..2000).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "missing execs: {missing:?}");
}

#[bpf_test]
fn attach_by_pid_sees_exec_and_ends_with_target() {
    let mut target = Command::new("sh")
        .args(["-c", "read x; exec /bin/true by-pid"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id().to_string();
    let (tool, _err) = spawn_attached("execsnoop", &["-p", &pid]);
    writeln!(target.stdin.take().unwrap(), "go").unwrap();
    target.wait().unwrap();
    let out = tool.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["argv"], json!(["/bin/true", "by-pid"]));
    assert_eq!(execs[0]["pid"].to_string(), pid);
}

#[bpf_test]
fn closed_stdout_exits_zero_promptly() {
    // The command execs once, then sleeps: no further event will come, so the
    // tool must notice the closed pipe by itself.
    let mut tool = Command::new(bin("execsnoop"))
        .args(["--", "sh", "-c", "sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(tool.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let v: Value = serde_json::from_str(&first).unwrap();
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = tool.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "execsnoop kept running after its reader went away");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The launched sleeper is not ours to keep.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(v["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn non_root_gets_a_clear_error() {
    let as_user = |args: &[&str]| {
        let mut cmd = if crate::support::is_root() {
            let mut c = Cmd::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(bin("execsnoop"));
            c
        } else {
            Cmd::new(bin("execsnoop"))
        };
        let out = cmd.args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = as_user(&[]);
    assert!(err.starts_with("execsnoop: error: permission denied"), "{err}");
    assert!(err.contains("root"), "{err}");
    // A mistyped PID is the first thing to hear about, privileges or not.
    assert_eq!(as_user(&["-p", "4000000000"]), "execsnoop: error: no such process: 4000000000\n");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let out = Cmd::cargo_bin("execsnoop").unwrap().args(["-p", "4000000000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "execsnoop: error: no such process: 4000000000\n"
    );
    if bpf_available() {
        let out = Cmd::cargo_bin("execsnoop")
            .unwrap()
            .args(["--", "no-such-command-leakd"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
        // kthreadd (pid 2, outside PID namespaces) has no user space.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            let out =
                Cmd::cargo_bin("execsnoop").unwrap().args(["-p", "2", "-d", "1"]).output().unwrap();
            assert_eq!(out.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&out.stderr).contains("process 2 is a kernel thread"));
        }
    }
    // A thread's ID (this test's own thread, alive meanwhile) names its process.
    let me = std::process::id();
    let tid = std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let out =
            Cmd::cargo_bin("execsnoop").unwrap().args(["-p", &tid.to_string()]).output().unwrap();
        (tid, out)
    });
    let (tid, out) = tid.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "execsnoop: error: {tid} is a thread of process {me}: give the process ID (-p {me})\n"
        )
    );
    let out = Cmd::cargo_bin("execsnoop").unwrap().args(["--comm", "("]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad regex is a usage error");
}

#[bpf_test]
fn sigint_and_duration_end_cleanly() {
    let (tool, _err) = spawn_attached("execsnoop", &["--comm", "^leakd-no-such$"]);
    crate::support::interrupt(&tool);
    let out = tool.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "SIGINT");
    let (tool, _err) = spawn_attached("execsnoop", &["--comm", "^leakd-no-such$"]);
    crate::support::signal(tool.id(), libc::SIGHUP);
    let out = tool.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "SIGHUP (a closed terminal) ends the run cleanly");
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["-d", "0.5", "--comm", "^leakd-no-such$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "--duration: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[bpf_test]
fn launched_command_is_stopped_when_the_run_ends_first() {
    let start = Instant::now();
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["-d", "1", "--", "sh", "-c", "exec sleep 60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(start.elapsed() < Duration::from_secs(30), "execsnoop waited for its command");
    let lines = json_lines(&out.stdout);
    let sleep = of_type(&lines, "exec")
        .into_iter()
        .find(|e| e["comm"] == "sleep")
        .unwrap_or_else(|| panic!("{lines:?}"));
    let pid = sleep["pid"].as_u64().unwrap();
    // SIGTERM ends it; its parent (execsnoop) is gone, so it is reaped by
    // init, or seen as a zombie until then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => break,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                break
            }
            Ok(stat) => {
                assert!(Instant::now() < deadline, "the launched command still runs: {stat}")
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs /bin/true through execveat(2) from a C program.
const EXECVEAT_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    char *argv[] = { "true", "via-execveat", 0 };
    char *envp[] = { 0 };
    syscall(SYS_execveat, AT_FDCWD, "/bin/true", argv, envp, 0);
    return 1;
}
"#;

#[bpf_test]
fn execveat_is_traced() {
    let dir = crate::support::build_c(
        "execveat",
        &[("execveat.c", EXECVEAT_C)],
        &[&["gcc", "-o", "execveat", "execveat.c"]],
    );
    let exe = dir.join("execveat");
    let lines = run_launched(&[], &[exe.to_str().unwrap()]);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 2, "{lines:?}");
    assert_eq!(execs[1]["filename"], "/bin/true");
    assert_eq!(execs[1]["argv"], json!(["true", "via-execveat"]));
    assert_eq!(execs[1]["pid"], execs[0]["pid"], "same process, new program");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The main thread exits first (pthread_exit); another thread then forks
/// and execs a child.
const LEADER_EXITS_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Whether the main thread has exited (it stays a zombie thread). */
static int leader_gone(void)
{
	char path[64], stat[256];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)getpid());
	FILE *f = fopen(path, "r");
	if (!f)
		return 1;
	int n = fread(stat, 1, sizeof stat - 1, f);
	fclose(f);
	stat[n > 0 ? n : 0] = 0;
	char *s = strrchr(stat, ')');
	return s && (s[2] == 'Z' || s[2] == 'X');
}

static void *later(void *arg)
{
	(void)arg;
	for (int i = 0; i < 5000 && !leader_gone(); i++)
		usleep(1000);
	if (!leader_gone())
		_exit(2);
	pid_t c = fork();
	if (c == 0) {
		execl("/bin/true", "true", "after-leader-exit", (char *)0);
		_exit(127);
	}
	waitpid(c, NULL, 0);
	return NULL;
}

int main(void)
{
	pthread_t t;
	pthread_create(&t, NULL, later, NULL);
	pthread_exit(NULL);
}
"#;

/// A launched command whose main thread exits before its other threads is
/// still followed: the child one of them forks later is traced.
#[bpf_test]
fn children_followed_after_the_main_thread_exits() {
    let dir = crate::support::build_c(
        "leader-exits",
        &[("leader.c", LEADER_EXITS_C)],
        &[&["gcc", "-pthread", "-o", "leader", "leader.c"]],
    );
    let exe = dir.join("leader");
    let lines = run_launched(&[], &[exe.to_str().unwrap()]);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 2, "{lines:?}");
    assert_eq!(execs[1]["argv"], json!(["true", "after-leader-exit"]), "{lines:?}");
    assert_eq!(execs[1]["ppid"], execs[0]["pid"], "{lines:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[bpf_test]
fn uid_filter() {
    let lines = run_launched(
        &["--uid", "65534"],
        &["sh", "-c", "/bin/true as-root; setpriv --reuid 65534 --regid 65534 --clear-groups /bin/true as-nobody"],
    );
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["argv"], json!(["/bin/true", "as-nobody"]));
    assert_eq!(execs[0]["uid"], 65534);
}

#[bpf_test]
fn cgroup_filter() {
    let cgroup = crate::support::TestCgroup::new("execsnoop");
    let cg = &cgroup.0;
    let script = format!("/bin/true outside; echo $$ > {cg}/cgroup.procs; /bin/true inside");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(cg).unwrap());
    let lines = run_launched(&["--cgroup", cg], &["sh", "-c", &script]);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["argv"], json!(["/bin/true", "inside"]));
    assert_eq!(execs[0]["cgroup_id"], ino);
}

/// A launched command's standard output goes to the tool's standard error
/// (or --command-output), never into the JSON stream on standard output.
#[bpf_test]
fn launched_commands_stdout_stays_out_of_the_json() {
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["--", "sh", "-c", "echo hello; /bin/true"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Every line parses (json_lines panics on one that does not).
    let lines = json_lines(&out.stdout);
    assert!(of_type(&lines, "exec").iter().any(|e| e["comm"] == "true"), "{lines:?}");
    assert!(err.lines().any(|l| l == "hello"), "{err}");

    let file = std::env::temp_dir().join(format!("leakd-cmd-out-{}", std::process::id()));
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .arg("--command-output")
        .arg(&file)
        .args(["--", "sh", "-c", "echo hello; /bin/true"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let written = std::fs::read_to_string(&file);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout);
    assert_eq!(written.unwrap(), "hello\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hello"));
}

/// `--user` runs the command with that user's uid, gid and groups.
#[bpf_test]
fn user_runs_the_command_as_that_user() {
    let id = |args: &[&str]| {
        let o = Command::new("id").args(args).output().unwrap();
        assert!(o.status.success(), "id {args:?}");
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let uid: u64 = id(&["-u", "nobody"]).parse().unwrap();
    let groups = id(&["-G", "nobody"]);
    let file = std::env::temp_dir().join(format!("leakd-user-{}", std::process::id()));
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["--user", "nobody", "--command-output"])
        .arg(&file)
        .args(["--", "sh", "-c", "id -u; id -G; /bin/true"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let written = std::fs::read_to_string(&file);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 4, "sh, id, id, true: {lines:?}");
    assert!(execs.iter().all(|e| e["uid"] == uid), "{lines:?}");
    assert_eq!(written.unwrap(), format!("{uid}\n{groups}\n"));

    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["--user", "no-such-user-leakd", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
}

/// SIGUSR1 (leakd-attach's "report now") must not kill execsnoop.
#[bpf_test]
fn sigusr1_is_ignored() {
    let (mut tool, _err) = spawn_attached("execsnoop", &["--", "sleep", "2"]);
    crate::support::signal(tool.id(), libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(tool.try_wait().unwrap().is_none(), "SIGUSR1 ended execsnoop");
    let status = tool.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A launched command that ignores SIGTERM is killed after the grace.
#[bpf_test]
fn launched_command_ignoring_sigterm_gets_sigkill() {
    let start = Instant::now();
    let out = Cmd::cargo_bin("execsnoop")
        .unwrap()
        .args(["-d", "0.5", "--", "sh", "-c", "trap '' TERM; exec sleep 60"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let sleep = of_type(&lines, "exec")
        .into_iter()
        .find(|e| e["comm"] == "sleep")
        .unwrap_or_else(|| panic!("{lines:?}"));
    let pid = sleep["pid"].as_u64().unwrap();
    let deadline = start + Duration::from_secs(15);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => break,
            Ok(stat)
                if stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                break
            }
            Ok(stat) => assert!(Instant::now() < deadline, "still runs after SIGTERM: {stat}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run with standard output closed (`>&-`): an error, not a silent exit 0.
#[test]
fn closed_stdout_is_an_error() {
    let out = Command::new("sh")
        .args(["-c", "exec \"$0\" -d 0.1 >&-"])
        .arg(bin("execsnoop"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("execsnoop: error: standard output is closed"), "{err}");
}

/// A read-write /dev/null on stdout (Python's subprocess.DEVNULL, `1<>`)
/// is an open stdout like any other, not taken for a closed one.
#[test]
fn read_write_dev_null_stdout_is_open() {
    let out = Command::new("sh")
        .args(["-c", "exec \"$0\" </dev/null 1<>/dev/null"])
        .arg(bin("symres"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}
