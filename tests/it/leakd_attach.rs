//! leakd-attach end to end against the leaker: exact outstanding totals,
//! the exit status, attaching by PID with a SIGUSR1-triggered workload,
//! growth detection on a steady leak (and none once it plateaus), the age
//! and size filters, cumulative allocs/frees per stack, --combined agreeing
//! with the default mode, --sample-bytes estimates, --symbolize, and idle
//! stack ids being deleted.

use leakd_test_macros::bpf_test;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output};
use std::time::Duration;

use crate::support::{
    final_report, json_lines, of_type, spawn_attached, start_leaker, KillOnDrop, LEAKER,
    LEAKER_NOFP,
};
use assert_cmd::Command as Cmd;
use serde_json::Value;

fn launched(args: &[&str], cmd: &[&str]) -> Output {
    Cmd::cargo_bin("leakd-attach")
        .unwrap()
        .args(args)
        .arg("--")
        .args(cmd)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

/// Function containing a return address, by addr2line (None when it cannot run).
fn addr2line_functions(module: &str, offset: &str) -> Option<String> {
    let off = u64::from_str_radix(offset.trim_start_matches("0x"), 16).ok()?;
    // A return address points after the call: look up the call itself. For
    // the leaker (a PIE whose text is mapped at its file offset) the file
    // offset is the address addr2line wants.
    let out = Command::new("addr2line")
        .args(["-f", "-i", "-e", module])
        .arg(format!("{:#x}", off - 1))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_ten_nine_with(leaker: &str, args: &[&str]) -> Value {
    check_ten_nine(leaker, args, &[])
}

/// `leaker ten-nine` under leakd-attach with `args`, the leaker given
/// `leaker_args` too.
fn check_ten_nine(leaker: &str, args: &[&str], leaker_args: &[&str]) -> Value {
    let mut cmd = vec![leaker, "ten-nine"];
    cmd.extend_from_slice(leaker_args);
    let out = launched(args, &cmd);
    assert_eq!(
        out.status.code(),
        Some(3),
        "leaks found => exit 3; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    // Ten malloc(8) from the same stack, nine of them freed.
    assert_eq!(s["allocs"], 10, "{s}");
    assert_eq!(s["frees"], 9, "{s}");
    let frame = &s["stack"][0];
    let module =
        frame["module"].as_str().unwrap_or_else(|| panic!("first frame has a module: {s}"));
    assert_eq!(std::fs::canonicalize(module).unwrap(), std::fs::canonicalize(leaker).unwrap());
    let func = addr2line_functions(module, frame["offset"].as_str().unwrap())
        .expect("addr2line (binutils) names the first frame");
    assert!(func.contains("leak_ten_nine_alloc"), "first frame is in leak_ten_nine_alloc: {func}");
    s.clone()
}

#[bpf_test]
fn ten_nine_leaves_one_block_fp() {
    // The linger gives the leaked block an age to check.
    let s = check_ten_nine(LEAKER, &[], &["--linger", "0.3"]);
    // The leaked block was made before the leaker's 0.3 s linger.
    assert!(s["oldest_age_ms"].as_u64().is_some_and(|a| a >= 250), "{s}");
}

#[bpf_test]
fn ten_nine_leaves_one_block_nofp() {
    let s = check_ten_nine_with(LEAKER_NOFP, &[]);
    // Past the leaking function, through DWARF unwinding (the default):
    // its caller in the leaker, and on to libc's start code.
    let stack = s["stack"].as_array().unwrap();
    assert!(stack.len() >= 3, "{s}");
    let m1 = stack[1]["module"].as_str().unwrap_or_else(|| panic!("no module: {s}"));
    assert_eq!(std::fs::canonicalize(m1).unwrap(), std::fs::canonicalize(LEAKER_NOFP).unwrap());
    // With --unwind fp the walk stops after the leaking function.
    let fp = check_ten_nine_with(LEAKER_NOFP, &["--unwind", "fp"]);
    assert!(fp["stack"].as_array().unwrap().len() < stack.len(), "{fp}");
}

#[bpf_test]
fn no_leak_exits_zero() {
    let out = launched(&[], &[LEAKER, "none"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 0, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 0);
    assert!(stacks.is_empty());
    // Nothing left, yet every block was seen: one per allocating call but
    // realloc(p, 0), which only frees (libc allocates nothing else here).
    let calls = &crate::support::leaker_summary(&out.stderr)["calls"];
    let made = calls
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "free")
        .map(|(_, v)| v.as_u64().unwrap())
        .sum::<u64>()
        - 1;
    assert_eq!(r["allocs"], made, "{lines:?}");
    assert_eq!(r["frees"], made, "{lines:?}");
}

/// Start a test program that prints "ready PID" once set up (killed when
/// dropped); the rest of its output.
fn start_ready(mut cmd: Command) -> (KillOnDrop, u32, BufReader<std::process::ChildStdout>) {
    let (prog, out, ready) = crate::support::spawn_first_line(&mut cmd);
    let prog = KillOnDrop(prog);
    let pid = prog.0.id();
    assert_eq!(ready.trim(), format!("ready {pid}"));
    (prog, pid, out)
}

fn wait_output(mut child: Child) -> (Option<i32>, Vec<u8>) {
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    (status.code(), stdout)
}

#[bpf_test]
fn attach_by_pid() {
    let (mut leaker, pid, mut err) = start_leaker(&["ten-nine", "--wait-signal", "--linger", "1"]);
    let pid_s = pid.to_string();
    let (tool, tool_err) = spawn_attached("leakd-attach", &["-p", &pid_s]);
    // Keep draining the tool's stderr so it never blocks on it.
    crate::support::discard(tool_err);
    crate::support::signal(pid, libc::SIGUSR1);
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

/// Every frame of every stack line names its module, offset and build id.
fn assert_frames_named(stacks: &[Value], what: &str) {
    for s in stacks {
        for f in s["stack"].as_array().unwrap_or_else(|| panic!("{what}: no stack: {s}")) {
            assert!(f["module"].is_string(), "{what}: a frame without its module: {s}");
            assert!(f["offset"].is_string(), "{what}: a frame without its offset: {s}");
            assert_eq!(f["build_id"].as_str().map(str::len), Some(40), "{what}: {s}");
        }
    }
}

#[bpf_test]
fn frames_of_a_command_that_exited_keep_their_modules() {
    // The leaker exits right after leaking, before the final report is
    // made, and a zombie's maps read empty: each frame is placed by what
    // BPF recorded of the mappings when its stack was first taken. Before
    // that, about half of such runs printed bare addresses; twenty runs,
    // both stack walks (the kernel's and the DWARF one).
    for i in 0..20 {
        let unwind = if i % 2 == 0 { "fp" } else { "auto" };
        let what = format!("run {i}, --unwind {unwind}");
        let out = launched(&["--top", "0", "--unwind", unwind], &[LEAKER, "mixed"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let lines = json_lines(&out.stdout);
        let (_, stacks) = final_report(&lines);
        assert_eq!(stacks.len(), 11, "{what}: one line per leaking function: {lines:?}");
        assert_frames_named(&stacks, &what);
    }
}

#[bpf_test]
fn mixed_matches_leaker_summary() {
    let out = launched(&["--top", "0"], &[LEAKER, "mixed"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = crate::support::leaker_summary(&out.stderr);
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], summary["leaked_count"], "{lines:?}\n{summary}");
    assert_eq!(r["outstanding_bytes"], summary["leaked_bytes"], "{lines:?}\n{summary}");
    assert_eq!(stacks.len() as u64, r["stacks"].as_u64().unwrap());
    // One stack per leaking function, each with its own block: sites are
    // not merged (the totals alone would not show it).
    let leaks = summary["leaks"].as_array().unwrap();
    let mut want: Vec<(u64, u64)> = leaks
        .iter()
        .map(|l| (l["count"].as_u64().unwrap(), l["size_bytes"].as_u64().unwrap()))
        .collect();
    let mut got: Vec<(u64, u64)> = stacks
        .iter()
        .map(|s| {
            (s["outstanding_count"].as_u64().unwrap(), s["outstanding_bytes"].as_u64().unwrap())
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{lines:?}\n{summary}");
}

#[bpf_test]
fn older_than_leaves_out_young_blocks() {
    // The leaked block is about 0.3 s old when the leaker exits.
    for (older_than, count, code) in [("5000", 0, 0), ("100", 1, 3)] {
        let out = launched(&["--older-than", older_than], &[LEAKER, "ten-nine", "--linger", "0.3"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "--older-than {older_than}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(&out.stdout);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["outstanding_count"], count, "{lines:?}");
        assert_eq!(r["outstanding_bytes"], 8 * count, "{lines:?}");
        assert_eq!(stacks.len() as u64, count);
        // Cumulative counts ignore age.
        assert_eq!((r["allocs"].as_u64(), r["frees"].as_u64()), (Some(10), Some(9)), "{r}");
    }
}

#[bpf_test]
fn size_range_keeps_only_blocks_within_it() {
    // mixed leaks blocks of 40 to 5000 bytes; 1280 and 2560 are in range.
    let out =
        launched(&["--top", "0", "--min-size", "1000", "--max-size", "3000"], &[LEAKER, "mixed"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 2, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 1280 + 2560, "{lines:?}");
    let mut sizes: Vec<u64> =
        stacks.iter().map(|s| s["outstanding_bytes"].as_u64().unwrap()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1280, 2560]);
}

#[bpf_test]
fn threads_leaker_part_matches_summary() {
    let out = launched(&["--top", "0"], &[LEAKER, "threads", "--threads", "3", "--count", "2"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary = crate::support::leaker_summary(&out.stderr);
    let lines = json_lines(&out.stdout);
    let (_, stacks) = final_report(&lines);
    let leaker = std::fs::canonicalize(LEAKER).unwrap();
    let in_leaker = |s: &Value| {
        s["stack"][0]["module"]
            .as_str()
            .is_some_and(|m| std::fs::canonicalize(m).is_ok_and(|m| m == leaker))
    };
    let sum = |f: &str, mine: bool| -> u64 {
        stacks.iter().filter(|s| in_leaker(s) == mine).map(|s| s[f].as_u64().unwrap()).sum()
    };
    assert_eq!(
        sum("outstanding_bytes", true),
        summary["leaked_bytes"].as_u64().unwrap(),
        "{lines:?}"
    );
    assert_eq!(
        sum("outstanding_count", true),
        summary["leaked_count"].as_u64().unwrap(),
        "{lines:?}"
    );
    // glibc's per-thread DTV: calloc(17, 16) for each thread, not the leaker's.
    assert_eq!(sum("outstanding_bytes", false), 3 * 272, "{lines:?}");
}

#[bpf_test]
fn steady_leak_is_growing() {
    let (leaker, pid, err) =
        start_leaker(&["steady", "--size", "16384", "--interval", "0.05", "--max", "100000000"]);
    crate::support::discard(err);
    let pid = pid.to_string();
    // Reports at 0.5, 1.0, 1.5, 2.0 and 2.5 s, then the final one.
    let (tool, tool_err) = spawn_attached("leakd-attach", &["-p", &pid, "-i", "0.5", "-d", "2.8"]);
    crate::support::discard(tool_err);
    let (code, stdout) = wait_output(tool);
    drop(leaker);
    assert_eq!(code, Some(3));
    let lines = json_lines(&stdout);
    let reports = of_type(&lines, "report");
    assert!(reports.len() >= 5, "{lines:?}");
    // The last periodic report: its trend window is exactly 3 intervals
    // (the final one's last interval is cut short by -d).
    let i = lines
        .iter()
        .rposition(|v| v["type"] == "report" && v["final"] == false)
        .expect("a periodic report");
    let top = &lines[i + 1];
    assert_eq!(top["type"], "stack", "{lines:?}");
    assert_eq!(top["growing"], true, "{lines:?}");
    // The final report agrees that it grows.
    let (_, stacks) = final_report(&lines);
    assert_eq!(stacks[0]["growing"], true, "{lines:?}");
    // Read while the leak runs, every line still adds up: never more
    // outstanding than allocated.
    for s in of_type(&lines, "stack") {
        assert!(s["outstanding_count"].as_u64().unwrap() <= s["allocs"].as_u64().unwrap(), "{s}");
    }
    let rate = top["growth_bytes_per_s"].as_f64().unwrap();
    // A 1.5 s window holds 30 leaks, give or take one (3%).
    let want = 16384.0 / 0.05;
    assert!((rate - want).abs() <= want * 0.1, "growth {rate} B/s, want {want} ± 10%");
}

#[bpf_test]
fn plateaued_leak_is_not_growing() {
    // Four 64 KiB leaks within 0.2 s of the signal, then a plateau: the
    // leaker stays up, leaking nothing more.
    let (leaker, pid, err) = start_leaker(&[
        "steady",
        "--size",
        "65536",
        "--interval",
        "0.05",
        "--max",
        "262144",
        "--wait-signal",
    ]);
    crate::support::discard(err);
    // Reports at 0.5, 1.0, 1.5, 2.0 and 2.5 s, then the final one: the
    // last periodic report's three-interval trend window is all plateau.
    let (tool, tool_err) =
        spawn_attached("leakd-attach", &["-p", &pid.to_string(), "-i", "0.5", "-d", "2.8"]);
    crate::support::discard(tool_err);
    crate::support::signal(pid, libc::SIGUSR1);
    let (code, stdout) = wait_output(tool);
    drop(leaker);
    assert_eq!(code, Some(3), "leaks found => exit 3");
    let lines = json_lines(&stdout);
    let i = lines
        .iter()
        .rposition(|v| v["type"] == "report" && v["final"] == false)
        .expect("a periodic report");
    let (_, stacks) = final_report(&lines);
    for s in [&lines[i + 1], &stacks[0]] {
        assert_eq!(s["type"], "stack", "{lines:?}");
        assert_eq!(s["outstanding_count"], 4, "{s}");
        assert_eq!(s["outstanding_bytes"], 262144, "{s}");
        assert_eq!(s["allocs"], 4, "{s}");
        assert_eq!(s["frees"], 0, "{s}");
        assert_eq!(s["growing"], false, "{s}");
        assert_eq!(s["growth_bytes_per_s"], 0.0, "{s}");
    }
    assert_eq!(stacks.len(), 1, "{lines:?}");
}

#[bpf_test]
fn combined_ten_nine_same_as_default() {
    let s = check_ten_nine_with(LEAKER, &["--combined"]);
    // The kernel keeps no per-block times in this mode.
    assert!(s.get("oldest_age_ms").is_none(), "{s}");
}

/// Stack lines keyed by where their first frame is (addresses change from
/// run to run), with the numbers --combined must reproduce.
fn by_site(stacks: &[Value]) -> std::collections::BTreeMap<String, [u64; 4]> {
    let sites: std::collections::BTreeMap<_, _> = stacks
        .iter()
        .map(|s| {
            let f = &s["stack"][0];
            let field =
                |k: &str| f[k].as_str().unwrap_or_else(|| panic!("first frame's {k} in {s}"));
            let k = format!("{}+{}", field("module"), field("offset"));
            let n = |f: &str| s[f].as_u64().unwrap_or_else(|| panic!("{f} in {s}"));
            (k, [n("outstanding_bytes"), n("outstanding_count"), n("allocs"), n("frees")])
        })
        .collect();
    assert_eq!(sites.len(), stacks.len(), "one stack per site: {stacks:?}");
    sites
}

#[bpf_test]
fn combined_mixed_same_as_default() {
    let mut sites = Vec::new();
    for args in [&["--top", "0"][..], &["--top", "0", "--combined"][..]] {
        let out = launched(args, &[LEAKER, "mixed"]);
        assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let summary = crate::support::leaker_summary(&out.stderr);
        let lines = json_lines(&out.stdout);
        let (r, stacks) = final_report(&lines);
        assert_eq!(
            r["outstanding_count"], summary["leaked_count"],
            "{args:?} {lines:?}\n{summary}"
        );
        assert_eq!(
            r["outstanding_bytes"], summary["leaked_bytes"],
            "{args:?} {lines:?}\n{summary}"
        );
        assert_eq!(stacks.len() as u64, r["stacks"].as_u64().unwrap());
        sites.push(by_site(&stacks));
    }
    assert_eq!(sites[0], sites[1], "default vs --combined");
}

/// --sample-bytes cannot be checked exactly: which blocks are tracked is
/// random by design. With 20000 blocks of 1024 bytes and N = 4096, each is
/// tracked with p = 1-exp(-1/4) = 0.221, so ~4424 are, with a standard
/// deviation of ~59 (1.3%); the scaled-up estimate is checked to ±20% of
/// the truth, over 15 standard deviations: a failure means a bug, not bad
/// luck. Both modes are checked (they scale up differently: per block in
/// user space, with the kernel's fixed-point table in --combined).
#[bpf_test]
fn sample_bytes_estimates_are_close() {
    let (size, count) = (1024u64, 20_000u64);
    let max = (size * count).to_string();
    let size_s = size.to_string();
    for mode in [&[][..], &["--combined"][..]] {
        let mut args = vec!["--top", "0", "--sample-bytes", "4096"];
        args.extend_from_slice(mode);
        let out = launched(
            &args,
            &[
                LEAKER,
                "steady",
                "--size",
                &size_s,
                "--interval",
                "0",
                "--max",
                &max,
                "--linger",
                "0.3",
            ],
        );
        assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let summary = crate::support::leaker_summary(&out.stderr);
        assert_eq!(summary["leaked_count"], count);
        let lines = json_lines(&out.stdout);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["estimated"], true, "{r}");
        assert_eq!(r["sample_bytes"], 4096, "{r}");
        let steady: Vec<&Value> =
            stacks.iter().filter(|s| s["outstanding_bytes"].as_u64().unwrap() > 100_000).collect();
        assert_eq!(steady.len(), 1, "{mode:?} {lines:?}");
        let s = steady[0];
        assert_eq!(s["estimated"], true, "{s}");
        let within = |got: u64, want: u64| (got as f64 - want as f64).abs() <= 0.2 * want as f64;
        assert!(within(s["outstanding_bytes"].as_u64().unwrap(), size * count), "{mode:?} {s}");
        assert!(within(s["outstanding_count"].as_u64().unwrap(), count), "{mode:?} {s}");
        assert!(within(s["allocs"].as_u64().unwrap(), count), "{mode:?} {s}");
        assert_eq!(s["frees"], 0, "{mode:?} {s}");
    }
}

#[bpf_test]
fn symbolize_names_the_leaking_function() {
    let out = launched(&["--symbolize"], &[LEAKER, "ten-nine"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let (_, stacks) = final_report(&lines);
    assert_eq!(stacks.len(), 1, "{lines:?}");
    assert_eq!(stacks[0]["stack"][0]["sym"], "leak_ten_nine_alloc", "{lines:?}");
    assert_eq!(stacks[0]["allocs"], 10);
}

/// Stacks whose blocks were all freed, idle for a whole interval, have
/// their stack ids deleted (bounded stack map); the run still ends with
/// nothing outstanding. The tool is stopped once it said so (-vv), so no
/// timing is assumed (-d only bounds a failing run).
#[bpf_test]
fn idle_stacks_are_deleted() {
    let (leaker, pid, err) = start_leaker(&["none", "--wait-signal", "--linger", "inf"]);
    crate::support::discard(err);
    let pid_s = pid.to_string();
    let (tool, mut tool_err) =
        spawn_attached("leakd-attach", &["-v", "-p", &pid_s, "-i", "0.2", "-d", "120"]);
    crate::support::signal(pid, libc::SIGUSR1);
    crate::support::wait_for_log(
        &mut tool_err,
        "idle stack(s)",
        "leakd-attach ended before deleting a stack",
    );
    crate::support::discard(tool_err);
    crate::support::interrupt(&tool);
    let (code, stdout) = wait_output(tool);
    drop(leaker);
    assert_eq!(code, Some(0));
    let lines = json_lines(&stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 0, "{lines:?}");
    assert!(stacks.is_empty());
}

/// A program that allocates and frees 5 blocks from one stack at the first
/// SIGUSR1, and leaks one more from the same stack at the second, then exits.
const REVIVE_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) void *site(void) { void *volatile p = malloc(100); return p; }
static void wait_usr1(sigset_t *s) { int sig; sigwait(s, &sig); }
int main(void) {
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigprocmask(SIG_BLOCK, &s, NULL);
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (volatile int i = 0; i < 6; i++) {
		if (i == 0 || i == 5)
			wait_usr1(&s);
		void *p = site();
		if (i < 5)
			free(p);
	}
	return 0;
}
"#;

/// A stack id deleted while idle keeps its cumulative counts: when the same
/// stack allocates again (new stack id), its line still counts every alloc
/// and free since the start. Steps are driven by the tool's own -vv log, so
/// no timing is assumed.
#[bpf_test]
fn deleted_stack_keeps_its_counts() {
    let dir = crate::support::build_c(
        "attach-revive",
        &[("revive.c", REVIVE_C)],
        &[&["cc", "-O0", "-fno-omit-frame-pointer", "-o", "revive", "revive.c"]],
    );
    let (prog, pid, _out) = start_ready(Command::new(dir.join("revive")));
    let pid_s = pid.to_string();
    let (tool, mut tool_err) =
        spawn_attached("leakd-attach", &["-v", "-p", &pid_s, "-i", "0.2", "-d", "120"]);
    crate::support::signal(pid, libc::SIGUSR1);
    crate::support::wait_for_log(
        &mut tool_err,
        "idle stack(s)",
        "leakd-attach ended before deleting a stack",
    );
    crate::support::discard(tool_err);
    crate::support::signal(pid, libc::SIGUSR1);
    let (code, stdout) = wait_output(tool);
    drop(prog);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(3));
    let lines = json_lines(&stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 1, "{lines:?}");
    assert_eq!(stacks.len(), 1, "{lines:?}");
    assert_eq!(stacks[0]["allocs"], 6, "{lines:?}");
    assert_eq!(stacks[0]["frees"], 5, "{lines:?}");
}

/// Allocates and frees in a loop from the start, so leakd-attach attaches
/// to a process in the middle of malloc/free pairs; on SIGUSR1, makes 1000
/// more pairs (all under the probes by then), stops and says so.
const CHURN_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_usr1(int sig) { (void)sig; stop = 1; }

/* Two live at once, freed in turn: addresses are reused. */
static void pair(void)
{
	char *volatile a = malloc(64), *volatile b = malloc(100);
	a[0] = b[0] = 1;
	free(a);
	free(b);
}

int main(void)
{
	signal(SIGUSR1, on_usr1);
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (!stop)
		pair();
	for (int i = 0; i < 1000; i++)
		pair();
	printf("stopped\n");
	fflush(stdout);
	pause();
	return 0;
}
"#;

/// Attached to a process in the middle of its malloc/free pairs, nothing
/// is outstanding once it stops: no block whose free came before the free
/// probe was attached is reported as a leak, and the totals add up
/// (allocs minus frees is what is outstanding) in both modes. Free probes
/// go first, which probes' unit test checks; an address the loop gets
/// again would also clear such a block.
#[bpf_test]
fn attached_mid_churn_reports_no_phantom_leaks() {
    let dir = crate::support::build_c(
        "attach-churn",
        &[("churn.c", CHURN_C)],
        &[&["cc", "-O1", "-fno-builtin", "-o", "churn", "churn.c"]],
    );
    for mode in [&[][..], &["--combined"][..]] {
        let (prog, pid, mut out) = start_ready(Command::new(dir.join("churn")));
        let pid_s = pid.to_string();
        let mut args = vec!["-p", &pid_s];
        args.extend_from_slice(mode);
        let (tool, tool_err) = spawn_attached("leakd-attach", &args);
        crate::support::discard(tool_err);
        crate::support::signal(pid, libc::SIGUSR1);
        let mut stopped = String::new();
        out.read_line(&mut stopped).unwrap();
        assert_eq!(stopped, "stopped\n");
        crate::support::interrupt(&tool);
        let (code, stdout) = wait_output(tool);
        drop(prog);
        let lines = json_lines(&stdout);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["outstanding_count"], 0, "{mode:?}: {lines:?}");
        assert!(stacks.is_empty(), "{mode:?}: {stacks:?}");
        assert!(r["allocs"].as_u64().unwrap() >= 2000, "the last 1000 pairs: {mode:?}: {r}");
        assert_eq!(r["allocs"], r["frees"], "{mode:?}: {r}");
        assert_eq!(code, Some(0), "{mode:?}: {lines:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-block allocator whose block can also be given back without its
/// free: a free no probe sees, as through an allocator path leakd-attach
/// does not know.
const SLOT_LIB_C: &str = r#"
#include <stddef.h>
static char slot[256] __attribute__((aligned(16)));
static int used;
void *slot_malloc(size_t n) { if (used || n > sizeof slot) return NULL; used = 1; return slot; }
void slot_free(void *p) { if (p == slot) used = 0; }
void slot_release(void *p) { if (p == (void *)slot) used = 0; }
"#;

const SLOT_PROG_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
void *slot_malloc(size_t n);
void slot_free(void *p);
void slot_release(void *p);

/* prog FIRST SECOND [keep]: the sizes of the two blocks; with keep, the
 * second is not freed. */
int main(int argc, char **argv)
{
	char line[16];
	if (argc != 3 && argc != 4)
		return 2;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 1;
	void *p = slot_malloc(atoi(argv[1]));
	slot_release(p);
	void *q = slot_malloc(atoi(argv[2]));
	if (argc == 3)
		slot_free(q);
	printf("done %d\n", p == q);
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {}
	return 0;
}
"#;

/// An address handed out again while still tracked (its free went unseen)
/// counts the old block as freed: the totals still add up. So it does when
/// the new block is not kept (below --min-size, and left live: no free of
/// it clears the old one either).
#[bpf_test]
fn block_freed_unseen_counts_as_freed_when_its_address_returns() {
    let dir = crate::support::build_c(
        "attach-slot",
        &[("slot.c", SLOT_LIB_C), ("prog.c", SLOT_PROG_C)],
        &[
            &["cc", "-O0", "-fPIC", "-shared", "-o", "libslot.so", "slot.c"],
            &["cc", "-O0", "-o", "prog", "prog.c", "-L.", "-lslot", "-Wl,-rpath,$ORIGIN"],
        ],
    );
    let lib = dir.join("libslot.so");
    // Sizes of the two blocks, extra options, allocs and frees counted.
    for (sizes, extra, counted) in [
        (&["64", "64"][..], &[][..], 2),
        (&["200", "64", "keep"][..], &["--min-size", "100"][..], 1),
    ] {
        let mut cmd = Command::new(dir.join("prog"));
        cmd.args(sizes);
        let (mut prog, pid, mut out) = start_ready(cmd);
        let mut stdin = prog.0.stdin.take().unwrap();
        let pid_s = pid.to_string();
        let mut args = vec!["-p", &pid_s, "--lib", lib.to_str().unwrap(), "--prefix", "slot_"];
        args.extend_from_slice(extra);
        let (tool, tool_err) = spawn_attached("leakd-attach", &args);
        crate::support::discard(tool_err);
        std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
        let mut done = String::new();
        out.read_line(&mut done).unwrap();
        assert_eq!(done.trim(), "done 1", "the address must come back");
        crate::support::interrupt(&tool);
        let (code, stdout) = wait_output(tool);
        drop(stdin);
        drop(prog);
        let lines = json_lines(&stdout);
        let (r, stacks) = final_report(&lines);
        assert_eq!(r["allocs"], counted, "{extra:?}: {lines:?}");
        assert_eq!(r["frees"], counted, "{extra:?}: {lines:?}");
        assert_eq!(r["outstanding_count"], 0, "{extra:?}: {lines:?}");
        assert!(stacks.is_empty(), "{extra:?}: {stacks:?}");
        assert_eq!(code, Some(0), "{extra:?}: {lines:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Leaks a block, then forks a child that frees its copy of it.
const FORK_FREE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	char line[16];
	char *p = malloc(4099);
	p[0] = 1;
	pid_t c = fork();
	if (c == 0) {
		free(p);
		_exit(0);
	}
	waitpid(c, NULL, 0);
	printf("done\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {}
	return 0;
}
"#;

/// Traced by cgroup (every process of it), a forked child freeing its copy
/// of a block leaves the parent's block outstanding: the same address in
/// two processes is two blocks.
#[bpf_test]
fn a_childs_free_leaves_its_parents_block() {
    let dir = crate::support::build_c(
        "attach-fork",
        &[("fork.c", FORK_FREE_C)],
        &[&["cc", "-O0", "-o", "fork", "fork.c"]],
    );
    let cgroup = crate::support::TestCgroup::new("attach-fork");
    let cg = &cgroup.0;
    // Only blocks of this size: the shell that execs the program allocates too.
    let (tool, tool_err) = spawn_attached(
        "leakd-attach",
        &["--cgroup", cg, "--min-size", "4099", "--max-size", "4099"],
    );
    crate::support::discard(tool_err);
    let prog = dir.join("fork");
    let (mut child, _, done) = crate::support::spawn_first_line(
        Command::new("sh")
            .args(["-c", &format!("echo $$ > {cg}/cgroup.procs && exec {}", prog.display())]),
    );
    assert_eq!(done.trim(), "done");
    crate::support::interrupt(&tool);
    let (code, stdout) = wait_output(tool);
    drop(child.stdin.take());
    child.wait().unwrap();
    drop(cgroup);
    let _ = std::fs::remove_dir_all(&dir);
    let lines = json_lines(&stdout);
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 1, "{lines:?}");
    assert_eq!(r["outstanding_bytes"], 4099, "{lines:?}");
    assert_eq!(r["allocs"], 1, "{lines:?}");
    assert_eq!(r["frees"], 0, "{lines:?}");
    assert_eq!(stacks.len(), 1, "{lines:?}");
    assert_eq!(stacks[0]["pid"], child.id(), "{lines:?}");
    assert_eq!(code, Some(3), "{lines:?}");
}

#[test]
fn usage_errors_exit_2() {
    crate::support::assert_usage_errors(
        "leakd-attach",
        &[
            (&["--trend", "0"], "must be at least 1"),
            (&["--max-allocs", "0"], "0 is not in 1.."),
            (&["--sample-bytes", "0"], "0 is not in 1.."),
            (&["--top", "x"], "invalid value"),
            (&["-i", "0.01"], "-i must be at least that"),
            (&["--min-size", "10", "--max-size", "5"], "--min-size 10 is larger than --max-size 5"),
        ],
    );
}

/// A map too small to hold every live block: events are lost, and the exit
/// status must not claim "no leak" (0) when it may simply have missed one.
/// ten-nine with room for one block: the first is tracked (and freed), the
/// other nine, the leaked one among them, are lost.
#[bpf_test]
fn lost_events_make_a_clean_result_incomplete() {
    let out = launched(
        &["--max-allocs", "1", "--min-size", "8", "--max-size", "8"],
        &[LEAKER, "ten-nine"],
    );
    let lines = json_lines(&out.stdout);
    let lost: u64 = of_type(&lines, "lost")
        .iter()
        .filter(|l| l["reason"] == "map_full")
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, 9, "{lines:?}");
    let (r, _) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 0, "{lines:?}");
    assert_eq!(out.status.code(), Some(4), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not certain"));
}

/// A process that leaks 50 blocks and then execs a clean program: the old
/// image's blocks end with it (counted as freed, said in an exec line), and
/// the run ends with nothing outstanding.
#[bpf_test]
fn exec_ends_the_old_images_blocks() {
    let out = launched(
        &[],
        &[
            LEAKER,
            "steady",
            "--size",
            "64",
            "--max",
            "3200",
            "--interval",
            "0",
            "--linger",
            "0",
            "--exec",
            "none",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "nothing outstanding => exit 0; stderr: {err}");
    let lines = json_lines(&out.stdout);
    let execs = of_type(&lines, "exec");
    assert_eq!(execs.len(), 1, "{lines:?}");
    assert_eq!(execs[0]["freed_count"], 50, "{lines:?}");
    assert_eq!(execs[0]["freed_bytes"], 3200, "{lines:?}");
    let (r, stacks) = final_report(&lines);
    assert_eq!(r["outstanding_count"], 0, "{lines:?}");
    assert!(stacks.is_empty(), "{stacks:?}");
    // The new image was traced too (its own allocs, all freed).
    assert!(r["allocs"].as_u64().unwrap() > 50, "{r}");
    assert_eq!(r["allocs"], r["frees"], "{r}");
}

/// A --max-allocs whose preallocated map would not fit in the machine's
/// memory is refused before anything is loaded (it used to allocate ~120
/// bytes of kernel memory per block first). u32::MAX blocks is ~512 GiB.
#[test]
fn max_allocs_beyond_memory_is_refused() {
    let out = Cmd::cargo_bin("leakd-attach")
        .unwrap()
        .args(["--max-allocs", &u32::MAX.to_string(), "-p", "1"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("would take ~512.0 GiB of kernel memory"), "{err}");
    assert!(err.contains("use at most"), "{err}");
}

/// Where `path`'s file offset `off` is mapped in process `pid`.
fn mapped_address(pid: u32, path: &str, off: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (range, map_off, file) = (f.first()?, f.get(2)?, f.get(5)?);
        let (start, end) = range.split_once('-')?;
        let (start, end) =
            (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let map_off = u64::from_str_radix(map_off, 16).ok()?;
        (*file == path && off >= map_off && off - map_off < end - start)
            .then(|| start + (off - map_off))
    })
}

/// The byte at `addr` in process `pid`'s memory.
fn byte_at(pid: u32, addr: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8];
    mem.read_exact_at(&mut b, addr).unwrap();
    b[0]
}

/// Whether any process is left in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so after ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(|g| g == pgid.to_string()))
            .unwrap_or(false)
    })
}

/// leakd-attach exits once its last line is out and leaves detaching its
/// uprobes (the kernel does it one at a time, ~0.1 s each) to a child that
/// outlives it (common's detach.rs). The probes must still go: the
/// breakpoint the kernel writes into the target's code (int3, 0xcc) is there
/// while the tool runs and gone once the tool and that child have exited.
/// The target is a static binary, its malloc its own: no other test's
/// probes can be in it.
#[bpf_test]
fn probes_are_detached_after_the_tool_exits() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let dir = crate::support::build_c(
        "detach-target",
        &[("t.c", "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")],
        &[&["gcc", "-O2", "-static", "-o", "t", "t.c"]],
    );
    let target = KillOnDrop(Command::new(dir.join("t")).spawn().unwrap());
    let tpid = target.0.id();
    let exe = std::fs::read_link(format!("/proc/{tpid}/exe")).unwrap();
    // A pipe the tool inherits as fd 3, as a caller waiting for its end
    // would pass it: its end-of-file must come with the tool's exit, not
    // with the detaching child's.
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, owned from here.
    let (watch, held) = unsafe {
        assert_eq!(libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1]))
    };
    let held_fd = held.as_raw_fd();
    let mut cmd = Command::new(crate::support::bin("leakd-attach"));
    cmd.args(["-v", "-p", &tpid.to_string(), "-d", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: dup2 is async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(held_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut tool = cmd.spawn().unwrap();
    drop(held);
    let group = tool.id();
    let mut err = BufReader::new(tool.stderr.take().unwrap());
    // "probe malloc+N at PATH+0xOFF (...)": where malloc's breakpoint is.
    let mut addr = None;
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "exited before attaching: {log}");
        log.push_str(&line);
        if let Some(rest) = line.split_once("probe malloc+").map(|(_, r)| r) {
            let (_, at) = rest.split_once(" at ").unwrap();
            let (path, off) = at.split_whitespace().next().unwrap().rsplit_once("+0x").unwrap();
            assert_eq!(std::path::Path::new(path), exe, "{line}");
            let off = u64::from_str_radix(off, 16).unwrap();
            addr = mapped_address(tpid, &exe.to_string_lossy(), off);
        }
        if line.contains("attached") {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no malloc probe in the target: {log}"));
    assert_eq!(byte_at(tpid, addr), 0xcc, "no breakpoint while attached");
    let mut out = String::new();
    tool.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = tool.wait().unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert!(out.contains("\"final\":true"), "{out}");
    // Nobody holds the pipe once the tool is gone: end-of-file, not EAGAIN.
    let mut byte = 0u8;
    // SAFETY: a read into a local byte.
    let n = unsafe { libc::read(watch.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    assert_eq!(n, 0, "fd 3 outlived the tool: {}", std::io::Error::last_os_error());
    // The child detaching, then nothing: within a minute, however loaded.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while group_alive(group) {
        assert!(std::time::Instant::now() < deadline, "the detaching child never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(byte_at(tpid, addr), 0xcc, "the breakpoint outlived the tool");
    let _ = std::fs::remove_dir_all(&dir);
}
