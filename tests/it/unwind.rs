//! Whole stacks without frame pointers: leakd-attach and allocsnoop --stack
//! walking programs built with -O2 -fomit-frame-pointer (C), a Rust release
//! build and a library dlopen'ed after attach, each leaking a known number
//! of blocks three calls below main; and frame-pointer programs giving the
//! same stacks with --unwind fp and with the default (DWARF where there is
//! CFI).

use leakd_test_macros::bpf_test;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{bin, build_c, json_lines, TempDir, LEAKER};
use assert_cmd::Command as Cmd;
use serde_json::Value;

fn run_tool(tool: &str, args: &[&str], cmd: &[&str]) -> Output {
    Cmd::cargo_bin(tool)
        .unwrap()
        .args(args)
        .arg("--")
        .args(cmd)
        .timeout(Duration::from_secs(90))
        .output()
        .unwrap()
}

/// The stack lines of leakd-attach's final report.
fn final_stacks(out: &Output) -> Vec<Value> {
    let lines = json_lines(&out.stdout);
    let i = lines.iter().rposition(|v| v["type"] == "report").expect("a report line");
    assert_eq!(lines[i]["final"], true);
    lines[i + 1..].iter().filter(|v| v["type"] == "stack").cloned().collect()
}

/// Function names of a symbolized stack, without symbol versions.
fn syms(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .expect("a stack array")
        .iter()
        .map(|f| {
            let s = f["sym"].as_str().unwrap_or("?");
            s.split("@@").next().unwrap_or(s).to_string()
        })
        .collect()
}

/// The stack line whose first frame is in a function named `first`.
fn stack_from<'a>(stacks: &'a [Value], first: &str) -> &'a Value {
    stacks
        .iter()
        .find(|s| syms(&s["stack"]).first().is_some_and(|f| f.contains(first)))
        .unwrap_or_else(|| panic!("no stack starting in {first}: {stacks:#?}"))
}

/// `names` appear in `syms`, in this order, one right after the other
/// (each name a substring of its frame's function).
fn assert_chain(syms: &[String], names: &[&str]) {
    let start = syms.iter().position(|s| s.contains(names[0]));
    let ok = start.is_some_and(|i| {
        names.iter().enumerate().all(|(k, n)| syms.get(i + k).is_some_and(|s| s.contains(n)))
    });
    assert!(ok, "expected the chain {names:?} in {syms:?}");
}

/// A C program leaking LEAKS blocks of 100 bytes through leaf <- mid <-
/// top <- main, each with a frame of its own, none with frame pointers.
const LEAKY_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define LEAKS 7
void *volatile sink;
__attribute__((noinline)) void *leaky_leaf(size_t n) {
    char pad[40];
    memset(pad, (int)n, sizeof pad);
    __asm__ volatile("" : : "r"(pad) : "memory");
    void *p = malloc(n + (size_t)(pad[5] & 0));
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
__attribute__((noinline)) void *leaky_mid(size_t n) {
    void *p = leaky_leaf(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
__attribute__((noinline)) void *leaky_top(size_t n) {
    long pad[9];
    for (int i = 0; i < 9; i++) pad[i] = (long)n * i;
    __asm__ volatile("" : : "r"(pad) : "memory");
    void *p = leaky_mid(n + (size_t)(pad[3] & 0));
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
int main(void) {
    for (int i = 0; i < LEAKS; i++) sink = leaky_top(100);
    sink = malloc(5);
    free(sink); /* a block freed by main: not outstanding */
    usleep(400 * 1000); /* keep the maps readable for the report */
    return 0;
}
"#;

fn leaky_c(flags: &str) -> PathBuf {
    let name = format!("unwind-c{}", flags.replace(' ', ""));
    let dir = build_c(
        &name,
        &[("leaky.c", LEAKY_C)],
        &[&["sh", "-c", &format!("gcc -g {flags} -o leaky leaky.c")]],
    );
    dir.join("leaky")
}

fn check_leaky_c_attach(bin: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--symbolize"];
    all.extend_from_slice(args);
    let out = run_tool("leakd-attach", &all, &[bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stacks = final_stacks(&out);
    let s = stack_from(&stacks, "leaky_leaf");
    assert_eq!(s["outstanding_count"], 7, "{s}");
    assert_eq!(s["outstanding_bytes"], 700, "{s}");
    assert_eq!(s["allocs"], 7, "{s}");
    assert_eq!(s["frees"], 0, "{s}");
    syms(&s["stack"])
}

#[bpf_test]
fn c_without_frame_pointers_gives_every_caller() {
    let bin = leaky_c("-O2 -fomit-frame-pointer");
    let syms = check_leaky_c_attach(&bin, &[]);
    assert_chain(&syms, &["leaky_leaf", "leaky_mid", "leaky_top", "main"]);
    // The same with --unwind dwarf (rows only).
    let syms = check_leaky_c_attach(&bin, &["--unwind", "dwarf"]);
    assert_chain(&syms, &["leaky_leaf", "leaky_mid", "leaky_top", "main"]);
    // The frame-pointer walk loses them: that is what DWARF is for.
    let syms = check_leaky_c_attach(&bin, &["--unwind", "fp"]);
    assert!(!syms.iter().any(|s| s.contains("leaky_top")), "{syms:?}");
}

#[bpf_test]
fn allocsnoop_stack_without_frame_pointers() {
    let bin = leaky_c("-O2 -fomit-frame-pointer");
    let out = run_tool("allocsnoop", &["--stack", "--op", "malloc,free"], &[bin.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let symres = Cmd::cargo_bin("symres").unwrap().write_stdin(out.stdout).output().unwrap();
    let lines = json_lines(&symres.stdout);
    let leaks: Vec<&Value> = lines
        .iter()
        .filter(|v| v["op"] == "malloc" && v["size_bytes"] == 100)
        .filter(|v| syms(&v["stack"]).first().is_some_and(|f| f == "leaky_leaf"))
        .collect();
    assert_eq!(leaks.len(), 7, "{lines:#?}");
    for e in leaks {
        assert_chain(&syms(&e["stack"]), &["leaky_leaf", "leaky_mid", "leaky_top", "main"]);
    }
    // A free's stack starts at its caller too.
    let free = lines
        .iter()
        .find(|v| v["op"] == "free" && syms(&v["stack"]).first().is_some_and(|f| f == "main"))
        .unwrap_or_else(|| panic!("main's free: {lines:#?}"));
    assert!(syms(&free["stack"]).iter().any(|s| s.contains("__libc_start")), "{free}");
}

#[bpf_test]
fn frame_pointer_programs_give_the_same_stacks() {
    let bin = leaky_c("-O1 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer");
    let fp = check_leaky_c_attach(&bin, &["--unwind", "fp"]);
    let auto = check_leaky_c_attach(&bin, &[]);
    assert_chain(&fp, &["leaky_leaf", "leaky_mid", "leaky_top", "main"]);
    // The same frames; DWARF goes on below main, through libc's
    // __libc_start_call_main (no frame pointer) to _start.
    assert_eq!(fp[..], auto[..fp.len()], "{auto:?}");
    assert_eq!(auto.last().map(String::as_str), Some("_start"));
    // The leaker (frame pointers) too: its ten-nine stack, both ways.
    let leaker = |args: &[&str]| {
        let mut all = vec!["--symbolize"];
        all.extend_from_slice(args);
        let out = run_tool("leakd-attach", &all, &[LEAKER, "ten-nine", "--linger", "0.3"]);
        assert_eq!(out.status.code(), Some(3));
        let stacks = final_stacks(&out);
        assert_eq!(stacks.len(), 1, "{stacks:?}");
        syms(&stacks[0]["stack"])
    };
    let fp = leaker(&["--unwind", "fp"]);
    assert_eq!(fp.first().map(String::as_str), Some("leak_ten_nine_alloc"));
    let auto = leaker(&[]);
    assert!(fp.len() >= 3, "{fp:?}");
    assert_eq!(fp[..], auto[..fp.len()], "{auto:?}");
}

const LEAKY_RS: &str = r#"
use std::hint::black_box;
#[inline(never)]
fn leaky_leaf(n: usize) -> usize {
    let v: Vec<u8> = Vec::with_capacity(black_box(n));
    black_box(v.leak().as_ptr() as usize)
}
#[inline(never)]
fn leaky_mid(n: usize) -> usize {
    black_box(leaky_leaf(black_box(n))) + 1
}
#[inline(never)]
fn leaky_top(n: usize) -> usize {
    black_box(leaky_mid(black_box(n))) + 1
}
fn main() {
    // black_box: a loop, not seven unrolled call sites.
    for _ in 0..black_box(7) {
        black_box(leaky_top(black_box(100)));
    }
    std::thread::sleep(std::time::Duration::from_millis(400));
}
"#;

#[bpf_test]
fn rust_release_build_gives_every_caller() {
    let dir = build_c("unwind-rs", &[("leaky.rs", LEAKY_RS)], &[]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args(["-C", "opt-level=2", "-C", "force-frame-pointers=no", "-g", "-o"])
        .arg(dir.join("leaky"))
        .arg(dir.join("leaky.rs"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = run_tool("leakd-attach", &["--symbolize"], &[dir.join("leaky").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stacks = final_stacks(&out);
    let s = stacks
        .iter()
        .find(|s| syms(&s["stack"]).iter().any(|f| f.contains("leaky_leaf")))
        .unwrap_or_else(|| panic!("a stack through leaky_leaf: {stacks:#?}"));
    assert_eq!(s["outstanding_count"], 7, "{s}");
    assert_eq!(s["outstanding_bytes"], 700, "{s}");
    assert_chain(&syms(&s["stack"]), &["leaky_leaf", "leaky_mid", "leaky_top", "leaky::main"]);
}

const DLOPEN_LIB: &str = r#"
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) void *lib_leaf(size_t n) {
    char pad[24];
    memset(pad, (int)n, sizeof pad);
    __asm__ volatile("" : : "r"(pad) : "memory");
    void *p = malloc(n + (size_t)(pad[1] & 0));
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
__attribute__((noinline)) void *lib_mid(size_t n) {
    void *p = lib_leaf(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
void *lib_top(size_t n) {
    void *p = lib_mid(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}
void lib_warmup(void) { free(lib_leaf(1)); }
"#;

const DLOPEN_MAIN: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
void *volatile sink;
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*warmup)(void) = (void (*)(void))dlsym(h, "lib_warmup");
    void *(*top)(size_t) = (void *(*)(size_t))dlsym(h, "lib_top");
    warmup(); /* the walker meets the library: its table gets loaded */
    /* The test creates argv[2] once the tool says the table is in; give
     * up after a minute (the test then fails on the missing line). */
    for (int i = 0; i < 12000 && access(argv[2], F_OK) != 0; i++) usleep(5000);
    for (int i = 0; i < 5; i++) sink = top(64);
    usleep(400 * 1000);
    return 0;
}
"#;

#[bpf_test]
fn library_dlopened_after_attach_is_unwound() {
    let dir = build_c(
        "unwind-dlopen",
        &[("lib.c", DLOPEN_LIB), ("main.c", DLOPEN_MAIN)],
        &[
            &[
                "gcc",
                "-g",
                "-O2",
                "-fomit-frame-pointer",
                "-fPIC",
                "-shared",
                "-o",
                "libleaky.so",
                "lib.c",
            ],
            &["gcc", "-g", "-O2", "-fomit-frame-pointer", "-o", "main", "main.c", "-ldl"],
        ],
    );
    let lib = dir.join("libleaky.so");
    let go = TempDir::new("unwind-dlopen-go");
    let go_file = go.path("go");
    // No fixed sleep: the program waits (after meeting the library) until
    // the tool's -v line says the library's table is loaded, which the
    // tool prints only once the walker can use it.
    let mut child = Command::new(bin("leakd-attach"))
        .args(["--symbolize", "-v", "--"])
        .arg(dir.join("main"))
        .arg(&lib)
        .arg(&go_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in err.lines().map_while(Result::ok) {
            if line.contains("unwind table of") && line.contains("libleaky.so") {
                std::fs::write(&go_file, "").unwrap();
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(go.path("go").exists(), "no unwind table line for libleaky.so: {stderr}");
    let stacks = final_stacks(&out);
    let s = stack_from(&stacks, "lib_leaf");
    assert_eq!(s["outstanding_count"], 5, "{s}");
    assert_eq!(s["outstanding_bytes"], 320, "{s}");
    assert_chain(&syms(&s["stack"]), &["lib_leaf", "lib_mid", "lib_top", "main"]);
}

/// A C++ program built -O2 -fomit-frame-pointer: 4 objects of 40 bytes
/// leaked through new three calls below main; in arrays(), three new[]
/// blocks freed with delete[], then one new[] (40 bytes), one nothrow new
/// (40) and one aligned new (64, alignas(64)) leaked and one new'ed object
/// deleted; in mismatched(), a new[] block freed with delete.
const LEAKY_CXX: &str = r#"
#include <new>
#include <unistd.h>
struct Obj { long v[5]; };
struct alignas(64) Wide { char c[64]; };
void *volatile sink;
__attribute__((noinline)) Obj *cxx_leaf(long n) {
    long pad[6];
    for (int i = 0; i < 6; i++) pad[i] = n * i;
    __asm__ volatile("" : : "r"(pad) : "memory");
    Obj *o = new Obj{{pad[1], 0, 0, 0, 0}};
    __asm__ volatile("" : : "r"(o) : "memory");
    return o;
}
__attribute__((noinline)) Obj *cxx_mid(long n) {
    Obj *o = cxx_leaf(n);
    __asm__ volatile("" : : "r"(o) : "memory");
    return o;
}
__attribute__((noinline)) Obj *cxx_top(long n) {
    Obj *o = cxx_mid(n);
    __asm__ volatile("" : : "r"(o) : "memory");
    return o;
}
__attribute__((noinline)) void arrays() {
    for (int i = 0; i < 3; i++) {
        int *a = new int[25];
        sink = a;
        delete[] static_cast<int *>(sink);
    }
    sink = new int[10];
    sink = new (std::nothrow) Obj;
    sink = new Wide;
    sink = new Obj;
    delete static_cast<Obj *>(sink);
    __asm__ volatile("" : : : "memory");
}
__attribute__((noinline)) void mismatched() {
    sink = new int[4];
    ::operator delete(sink);
    __asm__ volatile("" : : : "memory");
}
int main(int argc, char **) {
    for (int i = 0; i < 4 + (argc > 5); i++) sink = cxx_top(i);
    arrays();
    mismatched();
    usleep(400 * 1000);
    return 0;
}
"#;

/// The C++ runtimes the tests build LEAKY_CXX with.
#[derive(Clone, Copy)]
enum Runtime {
    /// g++, libstdc++ (the operators are in libstdc++.so.6).
    Libstdcxx,
    /// clang++ -stdlib=libc++ (LLVM's libc++; Debian's has the operators
    /// in libc++abi.so.1).
    Libcxx,
}

impl Runtime {
    /// The file the tool must name as the C++ runtime (-v).
    fn library(self) -> &'static str {
        match self {
            Runtime::Libstdcxx => "libstdc++.so",
            Runtime::Libcxx => "libc++abi.so",
        }
    }
}

/// clang++ of the clang scripts/setup installs, with its libc++
/// (`scripts/setup --tests`).
fn clangxx() -> &'static str {
    static FOUND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        let dir = TempDir::new("libcxx-probe");
        std::fs::write(dir.path("t.cc"), "#include <new>\nint main() { delete new int; }\n")
            .unwrap();
        ["clang++-19", "clang++-16", "clang++-14", "clang++"]
            .into_iter()
            .find(|c| {
                Command::new(c)
                    .args(["-stdlib=libc++", "-o"])
                    .arg(dir.path("t"))
                    .arg(dir.path("t.cc"))
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("clang++ with libc++ (scripts/setup --tests installs them)")
    })
}

fn leaky_cxx(rt: Runtime) -> PathBuf {
    let (name, cxx, stdlib) = match rt {
        Runtime::Libstdcxx => ("unwind-cxx", "g++", None),
        Runtime::Libcxx => ("unwind-cxx-libcxx", clangxx(), Some("-stdlib=libc++")),
    };
    let mut cmd = vec![cxx, "-g", "-O2", "-fomit-frame-pointer"];
    cmd.extend(stdlib);
    cmd.extend(["-o", "leaky", "leaky.cc"]);
    let dir = build_c(name, &[("leaky.cc", LEAKY_CXX)], &[&cmd]);
    dir.join("leaky")
}

#[bpf_test]
fn cxx_new_names_its_callers_up_to_main() {
    check_cxx_new(Runtime::Libstdcxx);
}

#[bpf_test]
fn libcxx_new_names_its_callers_up_to_main() {
    check_cxx_new(Runtime::Libcxx);
}

fn check_cxx_new(rt: Runtime) {
    let bin = leaky_cxx(rt);
    let out = run_tool("leakd-attach", &["--symbolize", "-v"], &[bin.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    let runtime = stderr.lines().find(|l| l.contains("C++ runtime: ")).unwrap_or("");
    assert!(runtime.contains(rt.library()), "{stderr}");
    let stacks = final_stacks(&out);
    // The caller of new first, then its callers, in order, up to main.
    let s = stack_from(&stacks, "cxx_leaf");
    assert_eq!(s["outstanding_count"], 4, "{s}");
    assert_eq!(s["outstanding_bytes"], 160, "{s}");
    assert_eq!(s["allocs"], 4, "{s}");
    assert_chain(&syms(&s["stack"]), &["cxx_leaf", "cxx_mid", "cxx_top", "main"]);
    // arrays(): new[] 40, nothrow new 40, aligned new 64 outstanding; the
    // delete[]'d blocks and the deleted object are not.
    let from_arrays: Vec<&Value> = stacks
        .iter()
        .filter(|s| syms(&s["stack"]).first().is_some_and(|f| f.starts_with("arrays")))
        .collect();
    let mut sizes: Vec<u64> =
        from_arrays.iter().map(|s| s["outstanding_bytes"].as_u64().unwrap()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [40, 40, 64], "{from_arrays:#?}");
    for s in &from_arrays {
        assert_eq!(s["outstanding_count"], 1, "{s}");
        assert_chain(&syms(&s["stack"]), &["arrays", "main"]);
    }
    // Nothing from mismatched(): its block was freed (with the wrong operator).
    assert!(!stacks.iter().any(|s| syms(&s["stack"]).iter().any(|f| f.contains("mismatched"))));
}

#[bpf_test]
fn allocsnoop_reports_cxx_operators_and_a_mismatched_delete() {
    check_allocsnoop_cxx(Runtime::Libstdcxx);
}

#[bpf_test]
fn allocsnoop_reports_libcxx_operators_and_a_mismatched_delete() {
    check_allocsnoop_cxx(Runtime::Libcxx);
}

fn check_allocsnoop_cxx(rt: Runtime) {
    let bin = leaky_cxx(rt);
    let out = run_tool("allocsnoop", &["--stack"], &[bin.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let symres = Cmd::cargo_bin("symres").unwrap().write_stdin(out.stdout).output().unwrap();
    let lines = json_lines(&symres.stdout);
    let pid = lines.iter().find(|v| v["comm"] == "leaky").expect("events of leaky")["pid"].clone();
    let ours: Vec<&Value> = lines.iter().filter(|v| v["pid"] == pid).collect();
    let count = |op: &str, size: Option<u64>| {
        ours.iter()
            .filter(|v| v["type"] == "alloc" && v["op"] == op)
            .filter(|v| size.is_none_or(|s| v["size_bytes"] == s))
            .count()
    };
    // Each block once, as the operator (the malloc inside is not reported).
    assert_eq!(count("new", Some(40)), 4 + 2, "{ours:#?}");
    assert_eq!(count("new", Some(64)), 1);
    assert_eq!(count("new[]", Some(100)), 3);
    assert_eq!(count("new[]", Some(40)), 1);
    assert_eq!(count("new[]", Some(16)), 1);
    assert_eq!(count("delete[]", None), 3);
    assert_eq!(count("delete", None), 2);
    let mallocs_of_ours = ours
        .iter()
        .filter(|v| {
            v["op"] == "malloc"
                && [40, 64, 100, 16].contains(&v["size_bytes"].as_u64().unwrap_or(0))
        })
        .count();
    assert_eq!(mallocs_of_ours, 0, "malloc inside new reported: {ours:#?}");
    let frees_of_ours = ours.iter().filter(|v| v["op"] == "free").count();
    assert_eq!(frees_of_ours, 0, "free inside delete reported: {ours:#?}");
    // The aligned new carries its alignment.
    let wide = ours.iter().find(|v| v["op"] == "new" && v["size_bytes"] == 64).unwrap();
    assert_eq!(wide["align_bytes"], 64, "{wide}");
    // new's caller is the first frame, then its callers up to main.
    for e in ours.iter().filter(|v| v["op"] == "new" && v["size_bytes"] == 40) {
        let st = syms(&e["stack"]);
        if st.first().is_some_and(|f| f.starts_with("cxx_leaf")) {
            assert_chain(&st, &["cxx_leaf", "cxx_mid", "cxx_top", "main"]);
        }
    }
    // The new[] block freed with delete, once, with both stacks.
    let mm: Vec<&&Value> = ours.iter().filter(|v| v["type"] == "mismatch").collect();
    assert_eq!(mm.len(), 1, "{ours:#?}");
    let m = mm[0];
    assert_eq!(m["alloc"]["op"], "new[]", "{m}");
    assert_eq!(m["free"]["op"], "delete", "{m}");
    assert_chain(&syms(&m["alloc"]["stack"]), &["mismatched", "main"]);
    assert_chain(&syms(&m["free"]["stack"]), &["mismatched", "main"]);
}

#[bpf_test]
fn cxx_static_binary_has_its_operators_probed_in_the_executable() {
    let dir = build_c(
        "unwind-cxx-static",
        &[("leaky.cc", LEAKY_CXX)],
        &[&["g++", "-g", "-O2", "-fomit-frame-pointer", "-static", "-o", "leaky", "leaky.cc"]],
    );
    let bin = dir.join("leaky");
    let out = run_tool("leakd-attach", &["--symbolize", "-v"], &[bin.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains(&format!("C++ runtime: {}", bin.display())), "{stderr}");
    let stacks = final_stacks(&out);
    let s = stack_from(&stacks, "cxx_leaf");
    assert_eq!(s["outstanding_count"], 4, "{s}");
    assert_eq!(s["outstanding_bytes"], 160, "{s}");
    assert_chain(&syms(&s["stack"]), &["cxx_leaf", "cxx_mid", "cxx_top", "main"]);
}

/// A C++ program built -O2 -fomit-frame-pointer freeing blocks with the
/// wrong operator a known number of times, each in a function of its own:
/// 2 new[] blocks (24 bytes) freed by delete, 3 malloc blocks (32) freed
/// by delete, 1 new block (40) freed by free; then correct pairs (new and
/// delete, new[] and delete[], malloc and free, 4 each), which must give
/// none; and one block leaked, so the exit status says "leaks".
const MISMATCH_CXX: &str = r#"
#include <cstdlib>
#include <new>
#include <unistd.h>
struct Obj { long v[5]; };
void *volatile sink;
__attribute__((noinline)) void array_by_delete() {
    sink = new int[6];
    ::operator delete(sink);
    __asm__ volatile("" : : : "memory");
}
__attribute__((noinline)) void malloc_by_delete() {
    sink = malloc(32);
    ::operator delete(sink);
    __asm__ volatile("" : : : "memory");
}
__attribute__((noinline)) void new_by_free() {
    sink = new Obj;
    free(sink);
    __asm__ volatile("" : : : "memory");
}
__attribute__((noinline)) void correct_pairs() {
    for (int i = 0; i < 4; i++) {
        sink = new Obj;
        delete static_cast<Obj *>(sink);
        sink = new int[6];
        delete[] static_cast<int *>(sink);
        sink = malloc(32);
        free(sink);
    }
    __asm__ volatile("" : : : "memory");
}
int main() {
    for (int i = 0; i < 2; i++) array_by_delete();
    for (int i = 0; i < 3; i++) malloc_by_delete();
    new_by_free();
    correct_pairs();
    sink = malloc(77);
    usleep(300 * 1000);
    return 0;
}
"#;

#[bpf_test]
fn leakd_attach_reports_blocks_freed_with_the_wrong_operator() {
    let dir = build_c(
        "unwind-mismatch",
        &[("mismatch.cc", MISMATCH_CXX)],
        &[&["g++", "-g", "-O2", "-fomit-frame-pointer", "-o", "mismatch", "mismatch.cc"]],
    );
    let bin = dir.join("mismatch");
    for mode in ["auto", "fp"] {
        let out =
            run_tool("leakd-attach", &["--symbolize", "--unwind", mode], &[bin.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let lines = json_lines(&out.stdout);
        let mm: Vec<&Value> = lines.iter().filter(|v| v["type"] == "mismatch").collect();
        // (function, alloc op, free op, size): exactly these, no more.
        let mut got: Vec<(String, String, String, u64)> = mm
            .iter()
            .map(|m| {
                let first = syms(&m["alloc"]["stack"]).first().cloned().unwrap_or_default();
                let f = first.split('(').next().unwrap_or("").to_string();
                let op = |k: &str| m[k]["op"].as_str().unwrap_or("").to_string();
                (f, op("alloc"), op("free"), m["size_bytes"].as_u64().unwrap_or(0))
            })
            .collect();
        got.sort();
        let want = |f: &str, a: &str, fr: &str, n: u64| (f.to_string(), a.into(), fr.into(), n);
        assert_eq!(
            got,
            [
                want("array_by_delete", "new[]", "delete", 24),
                want("array_by_delete", "new[]", "delete", 24),
                want("malloc_by_delete", "malloc", "delete", 32),
                want("malloc_by_delete", "malloc", "delete", 32),
                want("malloc_by_delete", "malloc", "delete", 32),
                want("new_by_free", "new", "free", 40),
            ],
            "{mode}: {mm:#?}"
        );
        for m in &mm {
            assert!(m["pid"].as_u64().is_some_and(|p| p > 0), "{m}");
            assert!(m["addr"].as_str().is_some_and(|a| a.starts_with("0x")), "{m}");
            // Both stacks start at the C++ caller (the free's too).
            let alloc = syms(&m["alloc"]["stack"]);
            let free = syms(&m["free"]["stack"]);
            assert_eq!(alloc.first(), free.first(), "{mode}: {m}");
            if mode == "auto" {
                assert_chain(&alloc, &[&alloc[0], "main"]);
                assert_chain(&free, &[&free[0], "main"]);
            }
        }
    }
}
