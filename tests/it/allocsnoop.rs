//! allocsnoop against the leaker, whose calls are known exactly.

use leakd_test_macros::bpf_test;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::{bpf_available, json_lines, of_type, spawn_attached, LEAKER, LEAKER_NOFP};
use assert_cmd::Command as Cmd;
use serde_json::Value;

fn launched(args: &[&str], leaker: &str, scenario: &[&str]) -> (Vec<Value>, Value) {
    let out = Cmd::cargo_bin("allocsnoop")
        .unwrap()
        .args(args)
        .arg("--")
        .arg(leaker)
        .args(scenario)
        .output()
        .unwrap();
    assert!(out.status.success(), "allocsnoop failed: {}", String::from_utf8_lossy(&out.stderr));
    (json_lines(&out.stdout), crate::support::leaker_summary(&out.stderr))
}

fn hexnum(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Replay events with libc's semantics; returns live blocks (addr -> size).
fn live_blocks(events: &[&Value]) -> HashMap<u64, u64> {
    let mut live = HashMap::new();
    for e in events {
        let addr = hexnum(&e["addr"]);
        match e["op"].as_str().unwrap() {
            "free" => {
                assert!(live.remove(&addr).is_some(), "free of unknown block {e}");
            }
            "realloc" | "reallocarray" => {
                let old = hexnum(&e["old_addr"]);
                let size = e["size_bytes"].as_u64().unwrap();
                if old != 0 && (addr != 0 || size == 0) {
                    assert!(live.remove(&old).is_some(), "realloc of unknown block {e}");
                }
                if addr != 0 {
                    live.insert(addr, size);
                }
            }
            _ => {
                if e.get("failed").is_none() {
                    live.insert(addr, e["size_bytes"].as_u64().unwrap());
                }
            }
        }
    }
    live
}

fn assert_ten_nine(lines: &[Value]) {
    let events = of_type(lines, "alloc");
    assert!(
        events.iter().all(|e| e["comm"] != "allocsnoop"),
        "launcher allocated between fork and exec"
    );
    let mallocs: Vec<_> = events.iter().filter(|e| e["op"] == "malloc").collect();
    let frees: Vec<_> = events.iter().filter(|e| e["op"] == "free").collect();
    assert_eq!(mallocs.len(), 10, "{events:?}");
    assert_eq!(frees.len(), 9, "{events:?}");
    assert_eq!(events.len(), 19, "{events:?}");
    assert!(mallocs.iter().all(|m| m["size_bytes"] == 8));
    let live = live_blocks(&events);
    assert_eq!(live.values().copied().collect::<Vec<_>>(), vec![8]);
    assert!(of_type(lines, "lost").is_empty());
}

/// Let a ten-nine leaker held by --wait-signal run to its end under an
/// attached allocsnoop, and check what allocsnoop saw.
fn release_ten_nine(mut leaker: crate::support::KillOnDrop, pid: u32, tool: std::process::Child) {
    crate::support::signal(pid, libc::SIGUSR1);
    leaker.0.wait().unwrap();
    let out = tool.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_ten_nine(&json_lines(&out.stdout));
}

#[bpf_test]
fn ten_nine_launched_exact() {
    for leaker in [LEAKER, LEAKER_NOFP] {
        let (lines, _) = launched(&[], leaker, &["ten-nine"]);
        assert_ten_nine(&lines);
    }
}

#[bpf_test]
fn ten_nine_by_pid_exact() {
    let (leaker, pid, _err) = crate::support::start_leaker(&["ten-nine", "--wait-signal"]);
    let (tool, _tool_err) = spawn_attached("allocsnoop", &["-p", &pid.to_string()]);
    release_ten_nine(leaker, pid, tool);
}

#[bpf_test]
fn mixed_every_api_with_exact_sizes() {
    let (lines, sum) = launched(&[], LEAKER, &["mixed"]);
    let events = of_type(&lines, "alloc");
    // One event per call the leaker made; glibc's aligned_alloc is memalign,
    // and nested calls inside libc (realloc(NULL, n) -> malloc) are not
    // reported twice.
    let mut by_op: HashMap<&str, u64> = HashMap::new();
    for e in &events {
        *by_op.entry(e["op"].as_str().unwrap()).or_default() += 1;
    }
    let calls = &sum["calls"];
    let all_calls: u64 = calls.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(events.len() as u64, all_calls, "no event beyond the leaker's calls: {by_op:?}");
    for op in [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "valloc",
        "pvalloc",
        "free",
    ] {
        assert_eq!(
            by_op.get(op).copied().unwrap_or(0),
            calls[op].as_u64().unwrap(),
            "{op}: {by_op:?}"
        );
    }
    assert_eq!(
        by_op.get("memalign").copied().unwrap_or(0),
        calls["memalign"].as_u64().unwrap() + calls["aligned_alloc"].as_u64().unwrap()
    );
    // Alignments as passed.
    for (size, align) in [(640, 64), (1280, 128), (2560, 256)] {
        assert!(
            events.iter().any(|e| e["size_bytes"] == size && e["align_bytes"] == align),
            "{size}/{align}"
        );
    }
    // What stays live is exactly what the leaker says it leaked.
    let mut live: Vec<u64> = live_blocks(&events).into_values().collect();
    live.sort();
    let mut leaked: Vec<u64> = sum["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size_bytes"].as_u64().unwrap())
        .collect();
    leaked.sort();
    assert_eq!(live, leaked);
}

#[bpf_test]
fn size_and_op_filters() {
    let (lines, _) = launched(&["--min-size", "1000", "--max-size", "1010"], LEAKER, &["mixed"]);
    let allocs: Vec<_> =
        of_type(&lines, "alloc").into_iter().filter(|e| e["op"] != "free").collect();
    // The matched blocks of sizes 1001..=1008 in leaker.c's mixed scenario.
    let mut sizes: Vec<u64> = allocs.iter().map(|e| e["size_bytes"].as_u64().unwrap()).collect();
    sizes.sort();
    assert_eq!(sizes, (1001..=1008).collect::<Vec<u64>>());
    assert!(
        allocs.iter().all(|e| (1000..=1010).contains(&e["size_bytes"].as_u64().unwrap())),
        "{allocs:?}"
    );
    let (lines, _) = launched(&["--op", "free"], LEAKER, &["ten-nine"]);
    let events = of_type(&lines, "alloc");
    assert_eq!(events.len(), 9);
    assert!(events.iter().all(|e| e["op"] == "free"));
}

/// The function symbol containing `offset` in `module` (for these non-PIE
/// offsets == addresses in the leaker's text).
fn function_containing(module: &str, offset: u64) -> String {
    let out = Command::new("nm").args(["--defined-only", module]).output().expect("nm (binutils)");
    let mut best: Option<(u64, String)> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(t), Some(name)) = (it.next(), it.next(), it.next()) else { continue };
        if !matches!(t, "t" | "T") {
            continue;
        }
        let a = u64::from_str_radix(a, 16).unwrap();
        if a <= offset && best.as_ref().is_none_or(|(b, _)| a > *b) {
            best = Some((a, name.to_string()));
        }
    }
    best.unwrap().1
}

#[bpf_test]
fn stack_first_frame_is_the_calling_function_without_frame_pointers() {
    for leaker in [LEAKER, LEAKER_NOFP] {
        let (lines, _) = launched(&["--stack"], leaker, &["ten-nine"]);
        let events = of_type(&lines, "alloc");
        assert_eq!(events.len(), 19);
        for e in &events {
            let f0 = &e["stack"][0];
            let module = f0["module"].as_str().unwrap_or_else(|| panic!("no module: {e}"));
            assert_eq!(
                std::fs::canonicalize(module).unwrap(),
                std::fs::canonicalize(leaker).unwrap()
            );
            assert_eq!(f0["build_id"].as_str().map(str::len), Some(40));
            let func = function_containing(module, hexnum(&f0["offset"]));
            let want = if e["op"] == "malloc" { "leak_ten_nine_alloc" } else { "ten_nine_free" };
            assert_eq!(func, want, "for {e}");
        }
        // The walk continues into the caller's caller: with frame pointers,
        // and without them through DWARF unwinding (the default).
        for e in &events {
            let f1 = &e["stack"][1];
            let module = f1["module"].as_str().unwrap_or_else(|| panic!("no 2nd frame: {e}"));
            assert_eq!(
                std::fs::canonicalize(module).unwrap(),
                std::fs::canonicalize(leaker).unwrap(),
                "{e}"
            );
        }
    }
}

#[bpf_test]
fn free_is_probed_past_its_first_instruction() {
    let out =
        Cmd::cargo_bin("allocsnoop").unwrap().args(["-v", "--", LEAKER, "none"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("probe free+")).unwrap_or_else(|| panic!("{err}"));
    assert!(!line.contains("probe free+0 "), "free probed at offset 0: {line}");
    // And every free is still seen (realloc(p, 0)'s inner free is reported
    // as that realloc, not twice).
    let sum = crate::support::leaker_summary(&out.stderr);
    let lines = json_lines(&out.stdout);
    let frees = of_type(&lines, "alloc").into_iter().filter(|e| e["op"] == "free").count();
    assert_eq!(frees as u64, sum["calls"]["free"].as_u64().unwrap());
}

#[test]
fn errors_are_clear() {
    let out = Cmd::cargo_bin("allocsnoop").unwrap().args(["--op", "bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'bogus' for '--op"));
    if bpf_available() {
        let out = Cmd::cargo_bin("allocsnoop")
            .unwrap()
            .args(["--lib", "/nonexistent.so", "-p", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
        // A device would be read forever, a FIFO would block: refused.
        let out = Cmd::cargo_bin("allocsnoop")
            .unwrap()
            .args(["--lib", "/dev/zero", "-p", "1"])
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/zero: not a regular file"));
    }
}

#[bpf_test]
fn other_allocator_with_lib_and_prefix() {
    // A stand-in for jemalloc's prefixed API (je_malloc/je_free).
    let lib = r#"#include <stdlib.h>
void *xx_malloc(size_t n) { void *p = malloc(n); __asm__ volatile(""); return p; }
void xx_free(void *p) { free(p); __asm__ volatile(""); }
"#;
    let prog = r#"#include <stddef.h>
void *xx_malloc(size_t); void xx_free(void *);
int main(void) { for (int i = 0; i < 5; i++) { void *volatile p = xx_malloc(4242); if (i) xx_free(p); } return 0; }
"#;
    let dir = crate::support::build_c(
        "xxalloc",
        &[("xx.c", lib), ("prog.c", prog)],
        &[
            &["gcc", "-O1", "-shared", "-fPIC", "-o", "libxx.so", "xx.c"],
            &["gcc", "-O1", "-o", "prog", "prog.c", "-L.", "-lxx", "-Wl,-rpath,$ORIGIN"],
        ],
    );
    let lib_path = dir.join("libxx.so");
    let (lines, _) = {
        let out = Cmd::cargo_bin("allocsnoop")
            .unwrap()
            .args([
                "--lib",
                lib_path.to_str().unwrap(),
                "--prefix",
                "xx_",
                "--op",
                "malloc,free",
                "--",
            ])
            .arg(dir.join("prog"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (json_lines(&out.stdout), ())
    };
    let events = of_type(&lines, "alloc");
    assert_eq!(
        events.iter().filter(|e| e["op"] == "malloc" && e["size_bytes"] == 4242).count(),
        5,
        "{events:?}"
    );
    assert_eq!(events.iter().filter(|e| e["op"] == "free").count(), 4, "{events:?}");
    assert_eq!(events.len(), 9);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// realloc(p, 0) and reallocarray(p, 0, n) free p and return NULL in
/// glibc: not failures.
#[bpf_test]
fn zero_size_realloc_frees_and_is_not_a_failure() {
    let prog = r#"#include <stdlib.h>
#include <stdio.h>
int main(void)
{
	void *volatile p = malloc(5555), *volatile q = malloc(6666);
	void *volatile a = realloc(p, 0), *volatile b = reallocarray(q, 0, 8);
	return a != NULL || b != NULL;
}
"#;
    let dir = crate::support::build_c(
        "realloc0",
        &[("prog.c", prog)],
        &[&["gcc", "-O1", "-fno-builtin", "-o", "prog", "prog.c"]],
    );
    let out =
        Cmd::cargo_bin("allocsnoop").unwrap().arg("--").arg(dir.join("prog")).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let events = of_type(&lines, "alloc");
    let mallocs: Vec<_> = events
        .iter()
        .filter(|e| e["op"] == "malloc" && (e["size_bytes"] == 5555 || e["size_bytes"] == 6666))
        .collect();
    assert_eq!(mallocs.len(), 2, "{events:?}");
    for (op, block) in [("realloc", mallocs[0]), ("reallocarray", mallocs[1])] {
        let e: Vec<_> = events.iter().filter(|e| e["op"] == op).collect();
        assert_eq!(e.len(), 1, "{events:?}");
        assert_eq!(e[0]["old_addr"], block["addr"], "{events:?}");
        assert_eq!(e[0]["addr"], "0x0", "{events:?}");
        assert!(e[0].get("failed").is_none(), "{op}(p, 0) freed p: {events:?}");
    }
}

#[bpf_test]
fn static_binary_is_detected() {
    let prog = r#"#include <stdlib.h>
int main(void) { for (int i = 0; i < 3; i++) { void *volatile p = malloc(3333); free(p); } return 0; }
"#;
    let dir = crate::support::build_c(
        "static",
        &[("prog.c", prog)],
        &[&["gcc", "-O1", "-fno-builtin", "-static", "-o", "prog", "prog.c"]],
    );
    let out = Cmd::cargo_bin("allocsnoop")
        .unwrap()
        .args(["-v", "--"])
        .arg(dir.join("prog"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(static)"), "{err}");
    let lines = json_lines(&out.stdout);
    let events = of_type(&lines, "alloc");
    assert_eq!(
        events.iter().filter(|e| e["op"] == "malloc" && e["size_bytes"] == 3333).count(),
        3,
        "{events:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Line number (1-based) of the first line of leaker.c containing `needle`
/// after the line containing `after`.
fn leaker_line(after: &str, needle: &str) -> u64 {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/leaker/leaker.c")).unwrap();
    let start = src.lines().position(|l| l.contains(after)).unwrap();
    (src.lines().skip(start).position(|l| l.contains(needle)).unwrap() + start + 1) as u64
}

#[bpf_test]
fn stacks_of_a_command_that_exited_keep_their_modules() {
    // The leaker exits right after its last call, usually before its
    // events are formatted, and a zombie's maps read empty: each frame is
    // placed by what BPF recorded of the mappings when its stack was first
    // seen. Before that, most such runs printed bare addresses; twenty
    // runs, both stack walks (the kernel's and the DWARF one).
    for i in 0..20 {
        let unwind = if i % 2 == 0 { "fp" } else { "auto" };
        let what = format!("run {i}, --unwind {unwind}");
        let (lines, summary) = launched(&["--stack", "--unwind", unwind], LEAKER, &["mixed"]);
        let events = of_type(&lines, "alloc");
        let calls: u64 =
            summary["calls"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(events.len() as u64, calls, "{what}: one event per call: {summary}");
        for e in &events {
            let stack = e["stack"].as_array().unwrap_or_else(|| panic!("{what}: no stack: {e}"));
            assert!(!stack.is_empty(), "{what}: {e}");
            for f in stack {
                assert!(f["module"].is_string(), "{what}: a frame without its module: {e}");
                assert!(f["offset"].is_string(), "{what}: a frame without its offset: {e}");
                assert_eq!(f["build_id"].as_str().map(str::len), Some(40), "{what}: {e}");
            }
        }
    }
}

#[bpf_test]
fn pipeline_through_symres_names_the_call_line() {
    for leaker in [LEAKER, LEAKER_NOFP] {
        let out = Cmd::cargo_bin("allocsnoop")
            .unwrap()
            .args(["--stack", "--op", "malloc", "--", leaker, "ten-nine"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let resolved = Cmd::cargo_bin("symres").unwrap().write_stdin(out.stdout).output().unwrap();
        assert!(resolved.status.success(), "{}", String::from_utf8_lossy(&resolved.stderr));
        let lines = json_lines(&resolved.stdout);
        let events = of_type(&lines, "alloc");
        assert_eq!(events.len(), 10);
        let want_line = leaker_line("void *leak_ten_nine_alloc(size_t size)", "malloc(size)");
        for e in events {
            let f0 = &e["stack"][0];
            assert_eq!(f0["return_address"], true);
            assert_eq!(f0["sym"], "leak_ten_nine_alloc", "{e}");
            assert_eq!(f0["line"], want_line, "{e}");
            assert!(f0["file"].as_str().unwrap().ends_with("leaker/leaker.c"));
        }
    }
}

#[bpf_test]
fn jemalloc_in_a_running_process_is_detected() {
    let jemalloc = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|d| d.ok())
        .map(|d| d.path().join("libjemalloc.so.2"))
        .find(|p| p.exists())
        .expect("libjemalloc.so.2 (installed by scripts/setup)");
    let (leaker, pid, _err) = crate::support::start_leaker_env(
        &["ten-nine", "--wait-signal"],
        &[("LD_PRELOAD", jemalloc.as_os_str())],
    );
    let (tool, _tool_err, log) =
        crate::support::spawn_attached_with_log("allocsnoop", &["-p", &pid.to_string()]);
    assert!(log.contains("(jemalloc)"), "{log}");
    release_ten_nine(leaker, pid, tool);
}

#[bpf_test]
fn mmap_and_partial_munmap() {
    let prog = r#"#include <sys/mman.h>
int main(void) {
    char *p = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    munmap(p, 4096);
    munmap(p + 4096, 2 * 4096);
    return 0;
}
"#;
    let dir = crate::support::build_c(
        "mmap",
        &[("prog.c", prog)],
        &[&["gcc", "-O1", "-o", "prog", "prog.c"]],
    );
    let out = Cmd::cargo_bin("allocsnoop")
        .unwrap()
        .args(["--op", "mmap,munmap", "--"])
        .arg(dir.join("prog"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let events = of_type(&lines, "alloc");
    let ops: Vec<(&str, u64)> = events
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["size_bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(ops, vec![("mmap", 12288), ("munmap", 4096), ("munmap", 8192)], "{events:?}");
    let base = hexnum(&events[0]["addr"]);
    assert_eq!(hexnum(&events[1]["addr"]), base);
    assert_eq!(hexnum(&events[2]["addr"]), base + 4096);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[bpf_test]
fn system_wide_without_pid() {
    // Without -p or a command every process is probed. The test still
    // filters by a cgroup of its own: other tracers running in parallel
    // (other tests) would otherwise trace each other's output work.
    let cgroup = crate::support::TestCgroup::new("allocsnoop");
    let cg = &cgroup.0;
    let (tool, _err) = spawn_attached("allocsnoop", &["--cgroup", cg, "-d", "60"]);
    let out = Command::new("sh")
        .args(["-c", &format!("echo $$ > {cg}/cgroup.procs && exec {LEAKER} ten-nine")])
        .output()
        .unwrap();
    let pid =
        serde_json::from_str::<Value>(String::from_utf8_lossy(&out.stderr).lines().next().unwrap())
            .unwrap()["pid"]
            .clone();
    crate::support::interrupt(&tool);
    let out = tool.wait_with_output().unwrap();
    drop(cgroup);
    assert!(out.status.success());
    let lines = json_lines(&out.stdout);
    let events = of_type(&lines, "alloc");
    // Only the leaker's process ran in that cgroup (first as sh, which may
    // allocate before it execs the leaker).
    assert!(events.iter().all(|e| e["pid"] == pid), "{events:?}");
    let events: Vec<_> = events.into_iter().filter(|e| e["comm"] == "leaker").collect();
    assert_eq!(events.iter().filter(|e| e["op"] == "malloc").count(), 10);
    assert_eq!(events.iter().filter(|e| e["op"] == "free").count(), 9);
}

/// -p of a process that has exited but not been reaped: said as such.
#[test]
fn a_zombie_is_said_to_be_exiting() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Not waited for: a zombie once it has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
    {
        assert!(std::time::Instant::now() < deadline, "{pid} never exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out =
        Cmd::cargo_bin("allocsnoop").unwrap().args(["-p", &pid.to_string()]).output().unwrap();
    child.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("process {pid} is exiting")), "{err}");
}
