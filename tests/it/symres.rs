//! symres end to end: test programs are built with gcc and rustc at test time
//! (PIE, non-PIE, stripped with a separate debug file, a shared library, a
//! Rust binary), run, and the frames they print about themselves are
//! resolved — after they exited (module + offset) and while they are alive
//! (addr + pid). Expected names and line numbers are exact; lines are found
//! through @markers in the fixture sources.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::json_lines;
use crate::support::TempDir;
use assert_cmd::Command as Cmd;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/symres").join(name)
}

/// Line number of the line containing `@marker` in a fixture.
fn marker(file: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let tag = format!("@{marker}");
    let i = text
        .lines()
        .position(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("{tag} not in {file}"));
    i as u64 + 1
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// gcc -g -O1 prog.c <flags> -o dir/name
fn build_prog(dir: &TempDir, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.path(name);
    // Flags after the source, so that -l finds what the source needs.
    sh(Command::new("gcc")
        .args(["-g", "-O1", "-Wl,--build-id"])
        .arg(fixture("prog.c"))
        .args(flags)
        .arg("-o")
        .arg(&out));
    out
}

/// Run a test program to completion; its one line of output.
fn run_prog(path: &Path) -> String {
    let out = Command::new(path).output().unwrap();
    assert!(out.status.success(), "{} failed", path.display());
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.lines().count(), 1, "{s}");
    s
}

struct Run {
    lines: Vec<Value>,
    stdout: String,
    stderr: String,
    code: i32,
}

/// Where symres keeps its cache of answers in these tests (not the
/// user's home), unless a test says otherwise.
fn test_cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("symres-cache-{}", std::process::id()))
}

fn symres(args: &[&str], input: &str) -> Run {
    symres_in(&test_cache_home(), args, input)
}

/// `symres` with its cache home ($XDG_CACHE_HOME) at `cache_home`. Its
/// cache is written after it exits, by a child that keeps stderr only
/// under -v: with -v, this returns once that child is done too (the end of
/// stderr); without, use `symres_fg` when the cache must be there after.
fn symres_in(cache_home: &Path, args: &[&str], input: &str) -> Run {
    symres_env(cache_home, &[], args, input)
}

/// `symres_in` writing its cache before it exits
/// (LEAKD_SYMRES_CACHE_FOREGROUND).
fn symres_fg(cache_home: &Path, args: &[&str], input: &str) -> Run {
    symres_env(cache_home, &[(FOREGROUND, "1")], args, input)
}

const FOREGROUND: &str = "LEAKD_SYMRES_CACHE_FOREGROUND";

/// `symres_in` with more environment variables.
fn symres_env(cache_home: &Path, env: &[(&str, &str)], args: &[&str], input: &str) -> Run {
    let out = Cmd::cargo_bin("symres")
        .unwrap()
        .env("XDG_CACHE_HOME", cache_home)
        .envs(env.iter().copied())
        .args(args)
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Blank input lines come out blank; the JSON ones are checked here.
    let nonblank: String =
        stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect();
    Run {
        lines: json_lines(nonblank.as_bytes()),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// Resolve one line; exit status must be 0 and exactly one line come out.
fn resolve(args: &[&str], input: &str) -> Value {
    let r = symres(args, input);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.lines.len(), 1, "{}", r.stdout);
    r.lines.into_iter().next().unwrap()
}

fn build_id(path: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in {}", path.display()))
        .to_string()
}

/// The three facts every build of prog.c must resolve to: target_function
/// at its first line, and outer_function with inner_helper inlined.
fn assert_prog_frames(frames: &Value, module: &Path) {
    let f0 = &frames[0];
    assert_eq!(f0["module"], module.to_str().unwrap(), "{frames}");
    assert_eq!(f0["sym"], "target_function", "{frames}");
    assert_eq!(f0["sym_offset"], "0x0");
    assert_eq!(f0["file"], fixture("prog.c").to_str().unwrap());
    assert_eq!(f0["line"], marker("prog.c", "target"));
    assert!(f0.get("reason").is_none());
    assert!(f0.get("inlined").is_none(), "{f0}");

    let f1 = &frames[1];
    assert_eq!(f1["sym"], "outer_function", "{frames}");
    assert_eq!(f1["line"], marker("prog.c", "outer_call"), "{f1}");
    assert_eq!(
        f1["inlined"],
        json!([{"sym": "inner_helper", "file": fixture("prog.c").to_str().unwrap(), "line": marker("prog.c", "inner_call")}])
    );
}

#[test]
fn pie_binary_resolved_after_exit_from_module_and_offset() {
    let dir = TempDir::new("pie");
    let prog = build_prog(&dir, "pie", &["-fPIE", "-pie"]);
    let line = run_prog(&prog);
    let out = resolve(&[], &line);
    assert_prog_frames(&out["stack"], &prog);
    // The process is gone: bare addresses (addr + pid) cannot be resolved,
    // and say why.
    assert_eq!(
        out["live"]["frames"][0],
        json!({"addr": out["stack"][0]["addr"], "reason": "no_process"})
    );
}

/// A module whose name is not UTF-8 comes in written by our tools' rule
/// (each bad byte as \xHH), and is read back by it; the frame keeps the
/// name as it came.
#[test]
fn non_utf8_module_name_read_back_by_the_rule() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("nonutf8");
    let prog = build_prog(&dir, "prog", &[]);
    let mut line: Value = serde_json::from_str(&run_prog(&prog)).unwrap();
    let odd = dir.path("x").with_file_name(std::ffi::OsStr::from_bytes(b"prog\xff"));
    std::fs::copy(&prog, &odd).unwrap();
    let written = format!("{}/prog\\xff", dir.0.to_str().unwrap());
    for f in line["stack"].as_array_mut().unwrap() {
        f["module"] = json!(written);
    }
    let out = resolve(&[], &line.to_string());
    let f0 = &out["stack"][0];
    assert_eq!(
        (&f0["module"], &f0["sym"], &f0["line"]),
        (&json!(written), &json!("target_function"), &json!(marker("prog.c", "target"))),
        "{f0}"
    );
    assert_eq!(out["stack"][1]["sym"], "outer_function", "{out}");
    // The name read as it is names no file.
    std::fs::rename(&odd, dir.path("moved")).unwrap();
    std::fs::copy(&prog, Path::new(&written)).unwrap();
    let out = resolve(&[], &line.to_string());
    assert_eq!(out["stack"][0]["reason"], "file_missing", "{out}");
}

/// A symbol whose name is not UTF-8 is named by the same rule (each bad
/// byte as \xHH), not left out.
#[test]
fn non_utf8_symbol_name_written_by_the_rule() {
    let dir = TempDir::new("weird");
    let src = dir.path("weird.c");
    std::fs::write(&src, "void weird(void) __asm__(\"weird\\377\");\nvoid weird(void) {}\nint main(void) { weird(); return 0; }\n").unwrap();
    let bin = dir.path("weird");
    sh(Command::new("gcc").args(["-g0", "-O0", "-fPIE", "-pie"]).arg(&src).arg("-o").arg(&bin));
    let nm = Command::new("nm").arg(&bin).output().unwrap().stdout;
    let addr = nm
        .split(|&b| b == b'\n')
        .find(|l| l.ends_with(b" T weird\xff"))
        .map(|l| u64::from_str_radix(std::str::from_utf8(&l[..16]).unwrap(), 16).unwrap())
        .unwrap_or_else(|| panic!("no weird\\xff in {}", String::from_utf8_lossy(&nm)));
    // A PIE's code lies at its file offset (checked on .text).
    let [text_addr, text_off, _] = section_header(&bin, ".text");
    assert_eq!(text_addr, text_off);
    let line = json!({"type": "t", "stack": [{"module": bin.to_str().unwrap(), "offset": format!("{:#x}", addr + 1)}]});
    let out = resolve(&[], &line.to_string());
    assert_eq!(
        (&out["stack"][0]["sym"], &out["stack"][0]["sym_offset"]),
        (&json!("weird\\xff"), &json!("0x1")),
        "{out}"
    );
}

/// A C++ name in a traced binary whose readable form would have no end
/// (substitutions doubling it: symres used to exhaust its memory and
/// abort) comes out as it is, beside a normal name, demangled.
#[test]
fn cpp_name_printing_without_end_stays_mangled() {
    let crafted = leakd_llvm_demangle::crafted::doubling(41);
    let dir = TempDir::new("crafted");
    let src = dir.path("crafted.c");
    let c = format!(
        "void crafted(void) __asm__(\"{crafted}\");\nvoid crafted(void) {{}}\n\
         int add(int, int) __asm__(\"_Z3addii\");\nint add(int a, int b) {{ return a + b; }}\n\
         int main(void) {{ crafted(); return add(1, 2); }}\n"
    );
    std::fs::write(&src, c).unwrap();
    let bin = dir.path("crafted");
    sh(Command::new("gcc").args(["-g0", "-O0", "-fPIE", "-pie"]).arg(&src).arg("-o").arg(&bin));
    let nm = String::from_utf8(Command::new("nm").arg(&bin).output().unwrap().stdout).unwrap();
    let addr = |sym: &str| {
        nm.lines()
            .find_map(|l| l.strip_suffix(&format!(" T {sym}")))
            .map(|a| u64::from_str_radix(a, 16).unwrap())
            .unwrap_or_else(|| panic!("no {sym} in {nm}"))
    };
    // A PIE's code lies at its file offset (checked on .text).
    let [text_addr, text_off, _] = section_header(&bin, ".text");
    assert_eq!(text_addr, text_off);
    let frame = |sym: &str| json!({"module": bin.to_str().unwrap(), "offset": format!("{:#x}", addr(sym) + 1)});
    let line = json!({"type": "t", "stack": [frame(&crafted), frame("_Z3addii")]});
    let out = resolve(&[], &line.to_string());
    assert_eq!(
        (&out["stack"][0]["sym"], &out["stack"][1]["sym"]),
        (&json!(crafted), &json!("add(int, int)")),
        "{out}"
    );
}

/// A thread that cannot be made (a limit on processes) is an error that
/// says so, not a panic; -j1 needs none.
#[test]
fn threads_that_cannot_start_are_an_error() {
    let dir = TempDir::new("nproc");
    let prog = build_prog(&dir, "prog", &[]);
    let line = run_prog(&prog);
    let run = |j: &str| {
        // Over the limit from the start: root is exempt, so run as nobody.
        let mut cmd = Command::new(if crate::support::is_root() { "setpriv" } else { "prlimit" });
        if crate::support::is_root() {
            cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "prlimit"]);
        }
        let mut child = cmd
            .arg("--nproc=1")
            .arg(crate::support::bin("symres"))
            .env("XDG_CACHE_HOME", test_cache_home())
            .arg(j)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // -j2 may fail and exit before it reads: a broken pipe then.
        if let Err(e) = child.stdin.take().unwrap().write_all(line.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, stdout, stderr) = run("-j2");
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
    assert!(
        stderr.starts_with("symres: error: cannot start the writing thread (-j1 needs none): "),
        "{stderr}"
    );
    let (code, stdout, stderr) = run("-j1");
    assert_eq!(code, Some(0), "{stderr}");
    assert_prog_frames(&serde_json::from_str::<Value>(&stdout).unwrap()["stack"], &prog);
}

#[test]
fn non_pie_binary() {
    let dir = TempDir::new("nopie");
    let prog = build_prog(&dir, "nopie", &["-fno-pie", "-no-pie"]);
    let line = run_prog(&prog);
    let out = resolve(&[], &line);
    assert_prog_frames(&out["stack"], &prog);
    // Non-PIE: the address is the ELF address itself.
    assert_eq!(out["stack"][0]["addr"].as_str().unwrap().len(), "0x401126".len(), "{out}");
}

/// Without .debug_aranges (as clang writes C by default), every unit is
/// found by its own ranges.
#[test]
fn binary_without_aranges() {
    let dir = TempDir::new("noaranges");
    let prog = build_prog(&dir, "noaranges", &[]);
    sh(Command::new("objcopy").arg("--remove-section=.debug_aranges").arg(&prog));
    let sections = Command::new("readelf").arg("-SW").arg(&prog).output().unwrap();
    assert!(!String::from_utf8_lossy(&sections.stdout).contains(".debug_aranges"));
    let line = run_prog(&prog);
    assert_prog_frames(&resolve(&[], &line)["stack"], &prog);
}

/// A set of .debug_aranges that lists only part of the DW_AT_ranges of its
/// unit (all entries but the first emptied), or none of its code (its one
/// entry cut in half): the code left out is still found by the unit's own
/// ranges, as addr2line finds it.
#[test]
fn aranges_set_missing_its_units_code() {
    for (name, cut) in [("short", false), ("cut", true)] {
        let dir = TempDir::new(name);
        // A function per section: the unit has DW_AT_ranges.
        let prog = build_prog(&dir, name, if cut { &[] } else { &["-ffunction-sections"] });
        let raw = dir.path("aranges");
        sh(Command::new("objcopy")
            .arg(format!("--dump-section=.debug_aranges={}", raw.display()))
            .arg(&prog)
            .arg(dir.path("scratch")));
        let mut set = std::fs::read(&raw).unwrap();
        // One 32-bit DWARF set: a 16-byte header (with padding), (address,
        // length) entries of 16 bytes, a 16-byte terminator.
        assert_eq!(
            u32::from_le_bytes(set[..4].try_into().unwrap()) as usize + 4,
            set.len(),
            "one set expected"
        );
        if cut {
            assert_eq!(set.len(), 48, "one entry expected");
            set.truncate(24);
            set[..4].copy_from_slice(&20u32.to_le_bytes());
        } else {
            assert!(set.len() >= 64, "several entries expected");
            let n = set.len();
            set[40..n - 16].chunks_mut(16).for_each(|e| e[8..].fill(0));
        }
        std::fs::write(&raw, &set).unwrap();
        sh(Command::new("objcopy")
            .arg(format!("--update-section=.debug_aranges={}", raw.display()))
            .arg(&prog));
        let line = run_prog(&prog);
        assert_prog_frames(&resolve(&[], &line)["stack"], &prog);
    }
}

/// Without a symbol table, DWARF names the functions (and gives no offset
/// into them).
#[test]
fn names_from_dwarf_without_a_symbol_table() {
    let dir = TempDir::new("nosymtab");
    let full = build_prog(&dir, "full", &[]);
    let prog = dir.path("nosymtab");
    sh(Command::new("strip")
        .args(["--strip-all", "--keep-section=.debug_*", "-o"])
        .arg(&prog)
        .arg(&full));
    let sections = Command::new("readelf").arg("-SW").arg(&prog).output().unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(!sections.contains(".symtab") && sections.contains(".debug_info"), "{sections}");
    let line = run_prog(&prog);
    let out = resolve(&[], &line);
    let frames = &out["stack"];
    assert_eq!(frames[0]["sym"], "target_function", "{frames}");
    assert_eq!(frames[0]["line"], marker("prog.c", "target"));
    assert!(frames[0].get("sym_offset").is_none(), "{frames}");
    assert_eq!(frames[1]["sym"], "outer_function", "{frames}");
    assert_eq!(frames[1]["inlined"][0]["sym"], "inner_helper", "{frames}");
}

/// Compressed debug sections (as Debian's debug files have them), inflated
/// when first read.
#[test]
fn compressed_debug_sections() {
    let dir = TempDir::new("gz");
    let prog = build_prog(&dir, "gz", &["-gz=zlib"]);
    let sections = Command::new("readelf").arg("-SW").arg(&prog).output().unwrap();
    let info = String::from_utf8_lossy(&sections.stdout)
        .lines()
        .find(|l| l.contains(".debug_info"))
        .map(str::to_string);
    assert!(
        info.as_deref().is_some_and(|l| l
            .split_whitespace()
            .rev()
            .nth(3)
            .is_some_and(|f| f.contains('C'))),
        "not compressed: {info:?}"
    );
    let line = run_prog(&prog);
    assert_prog_frames(&resolve(&[], &line)["stack"], &prog);

    // Its .debug_info's compressed data damaged: no file or line, and a
    // word under -v, once.
    let (off, size) = section(&prog, ".debug_info");
    let mut bytes = std::fs::read(&prog).unwrap();
    let data = (off + 24) as usize..(off + size) as usize;
    bytes[data].iter_mut().skip(8).for_each(|b| *b ^= 0x5a);
    std::fs::write(&prog, bytes).unwrap();
    let r = symres(&["-v"], &line);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.lines[0]["stack"][0]["sym"], "target_function", "{}", r.stdout);
    assert!(r.lines[0]["stack"][0].get("file").is_none(), "{}", r.stdout);
    assert_eq!(r.stderr.matches(".debug_info: zlib").count(), 1, "{}", r.stderr);
}

#[test]
fn stripped_binary_with_build_id_debug_file() {
    let dir = TempDir::new("strip");
    let prog = build_prog(&dir, "full", &[]);
    let stripped = dir.path("stripped");
    let id = build_id(&prog);
    let debug_dir = dir.path("debug");
    std::fs::create_dir_all(debug_dir.join(".build-id").join(&id[..2])).unwrap();
    sh(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&prog)
        .arg(debug_dir.join(".build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]))));
    sh(Command::new("strip").arg("--strip-all").arg("-o").arg(&stripped).arg(&prog));
    let line = run_prog(&stripped);

    // Without the debug file: a stripped PIE has no symbol for a local function.
    let out = resolve(&[], &line);
    assert_eq!(out["stack"][0]["reason"], "no_symbols", "{out}");
    assert!(out["stack"][0].get("sym").is_none());

    let out = resolve(&["--debug-dir", debug_dir.to_str().unwrap()], &line);
    assert_prog_frames(&out["stack"], &stripped);

    // The binary gone, frames with its build id: the debug file alone maps
    // the file offsets (its program headers lost them).
    std::fs::remove_file(&stripped).unwrap();
    let mut with_id: Value = serde_json::from_str(&line).unwrap();
    for f in with_id["stack"].as_array_mut().unwrap() {
        f["build_id"] = json!(id);
    }
    let out = resolve(&["--debug-dir", debug_dir.to_str().unwrap()], &with_id.to_string());
    assert_prog_frames(&out["stack"], &stripped);
}

#[test]
fn stripped_binary_with_gnu_debuglink() {
    let dir = TempDir::new("debuglink");
    let prog = build_prog(&dir, "full", &[]);
    let debug = dir.path("linked.debug");
    let stripped = dir.path("linked");
    sh(Command::new("objcopy").arg("--only-keep-debug").arg(&prog).arg(&debug));
    sh(Command::new("strip").arg("--strip-all").arg("-o").arg(&stripped).arg(&prog));
    std::fs::remove_file(&prog).unwrap();
    // objcopy computes the CRC from the file; it records the base name.
    sh(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&stripped)
        .current_dir(&dir.0));
    let line = run_prog(&stripped);
    let out = resolve(&[], &line);
    assert_prog_frames(&out["stack"], &stripped);

    // A debug file whose CRC does not match is not used.
    let mut bytes = std::fs::read(&debug).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&debug, bytes).unwrap();
    let out = resolve(&[], &line);
    assert_eq!(out["stack"][0]["reason"], "no_symbols", "{out}");
}

#[test]
fn shared_library_frames() {
    let dir = TempDir::new("lib");
    let lib = dir.path("libsymrestest.so");
    sh(Command::new("gcc")
        .args(["-g", "-O1", "-shared", "-fPIC"])
        .arg(fixture("lib.c"))
        .arg("-o")
        .arg(&lib));
    let prog = build_prog(
        &dir,
        "withlib",
        &[
            "-DWITH_LIB",
            &format!("-L{}", dir.0.display()),
            "-lsymrestest",
            &format!("-Wl,-rpath,{}", dir.0.display()),
        ],
    );
    let line = run_prog(&prog);
    let out = resolve(&[], &line);
    assert_prog_frames(&out["stack"], &prog);
    let f = &out["stack"][2];
    assert_eq!(f["module"], lib.to_str().unwrap());
    assert_eq!(f["sym"], "lib_function", "{f}");
    assert_eq!(f["file"], fixture("lib.c").to_str().unwrap());
    assert_eq!(f["line"], marker("lib.c", "lib_call"));

    // A line needing two units for the first use (one per module): with
    // threads, parsed at once, and the same answers.
    // (Cold: not from the cache an earlier run left.)
    let one = symres(&["-j", "1", "-vv", "--no-cache"], &line);
    let two = symres(&["-j", "2", "-vv", "--no-cache"], &line);
    assert_eq!(one.stdout, two.stdout);
    assert!(
        two.stderr.contains("symres: parsing 2 DWARF units at once on 2 threads"),
        "{}",
        two.stderr
    );
    assert!(!one.stderr.contains("at once"), "{}", one.stderr);
}

fn rust_prog(dir: &TempDir, mangling: &str) -> String {
    let bin = dir.path(&format!("rust-{mangling}"));
    let mut cmd = Command::new("rustc");
    cmd.args(["--edition", "2021", "-g", "-C", "opt-level=1"]);
    // Legacy is stable Rust's default (naming it needs -Z unstable-options).
    if mangling != "legacy" {
        cmd.arg("-C").arg(format!("symbol-mangling-version={mangling}"));
    }
    sh(cmd.arg(fixture("rustprog.rs")).arg("-o").arg(&bin));
    run_prog(&bin)
}

#[test]
fn rust_names_are_demangled_legacy_and_v0() {
    let dir = TempDir::new("rust");
    for (mangling, want) in
        [("legacy", "rustprog::Leaky<T>::hold_on"), ("v0", "<rustprog::Leaky<u32>>::hold_on")]
    {
        let out = resolve(&[], &rust_prog(&dir, mangling));
        let f = &out["stack"][0];
        assert_eq!(f["sym"], want, "{mangling}: {f}");
        assert_eq!(f["sym_offset"], "0x0");
        assert_eq!(f["file"], fixture("rustprog.rs").to_str().unwrap());
        assert_eq!(f["line"], marker("rustprog.rs", "rust_fn"));
    }
}

/// Start a test program that waits for stdin EOF; its line of output.
fn start_waiting(prog: &Path) -> (Child, String) {
    let (child, _, line) = crate::support::spawn_first_line(Command::new(prog).arg("wait"));
    (child, line)
}

fn finish(mut child: Child) {
    drop(child.stdin.take());
    child.wait().unwrap();
}

#[test]
fn live_process_resolved_from_addr_and_pid() {
    let dir = TempDir::new("live");
    let prog = build_prog(&dir, "live", &[]);
    let (child, line) = start_waiting(&prog);
    // The same frames again with a null module and offset: filled in, not
    // written twice.
    let mut v: Value = serde_json::from_str(&line).unwrap();
    let mut nulls = v["live"]["frames"].clone();
    for f in nulls.as_array_mut().unwrap() {
        f["module"] = Value::Null;
        f["offset"] = Value::Null;
    }
    v["nulls"] = json!({ "frames": nulls });
    let r = symres(&[], &v.to_string());
    finish(child);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.lines[0];
    let live = &out["live"]["frames"];
    // Bare addresses were mapped through /proc/PID/maps to the same module
    // and offset the program computed itself, then resolved.
    for i in 0..2 {
        assert_eq!(live[i]["module"], out["stack"][i]["module"], "{out}");
        assert_eq!(live[i]["offset"], out["stack"][i]["offset"], "{out}");
    }
    assert_prog_frames(live, &prog);
    assert_eq!(out["nulls"]["frames"], *live, "{out}");
    let n = live.as_array().unwrap().len();
    assert_eq!(r.stdout.matches("\"module\":").count(), 2 * n + 2, "{}", r.stdout);
}

#[test]
fn deleted_binary_of_live_process_via_map_files() {
    let dir = TempDir::new("deleted");
    let prog = build_prog(&dir, "doomed", &[]);
    let (child, line) = start_waiting(&prog);
    std::fs::remove_file(&prog).unwrap();
    let out = resolve(&[], &line);
    finish(child);
    // The file is gone from disk but still mapped: /proc/PID/map_files has it.
    assert_prog_frames(&out["live"]["frames"], &prog);
    // Module + offset alone names a file that no longer exists.
    assert_eq!(out["stack"][0]["reason"], "file_missing", "{out}");
}

/// A container's binary: its path exists only in the mount namespace of
/// the process. Module + offset with the line's pid reach it through
/// /proc/PID/root; live addresses too, through /proc/PID/maps (or through
/// /proc/PID/map_files, which root can open as well: this test cannot tell
/// which of the two was taken for them).
#[test]
fn binary_of_another_mount_namespace_via_proc_root() {
    if !crate::support::root_available("mount namespace") {
        return;
    }
    let dir = TempDir::new("mntns");
    let prog = build_prog(&dir, "prog", &[]);
    // Empty here; in the namespace, a tmpfs holding the program.
    let root = dir.path("container");
    std::fs::create_dir(&root).unwrap();
    let inside = root.join("prog");
    let script = r#"mount -t tmpfs none "$1" && cp "$2" "$1/prog" && exec "$1/prog" wait"#;
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
        .arg(&root)
        .arg(&prog);
    let (child, _, line) = crate::support::spawn_first_line(&mut unshare);
    assert!(!line.is_empty(), "the program did not start in its namespace");
    assert!(!inside.exists(), "{} is visible outside its namespace", inside.display());
    let out = resolve(&[], &line);
    // Without the pid, module + offset names a file this namespace lacks.
    let mut alone: Value = serde_json::from_str(&line).unwrap();
    alone.as_object_mut().unwrap().remove("pid");
    alone.as_object_mut().unwrap().remove("live");
    let without = resolve(&[], &alone.to_string());
    finish(child);
    assert_prog_frames(&out["live"]["frames"], &inside);
    assert_prog_frames(&out["stack"], &inside);
    assert_eq!(without["stack"][0]["reason"], "file_missing", "{without}");
}

#[test]
fn build_id_mismatch_and_match() {
    let dir = TempDir::new("buildid");
    let prog = build_prog(&dir, "prog", &[]);
    let line: Value = serde_json::from_str(&run_prog(&prog)).unwrap();
    let frame = |id: &str| {
        let mut f = line["stack"][0].clone();
        f["build_id"] = json!(id);
        json!({"type": "t", "stack": [f]}).to_string()
    };
    let out = resolve(&[], &frame(&build_id(&prog)));
    assert_eq!(out["stack"][0]["sym"], "target_function", "{out}");
    let out = resolve(&[], &frame(""));
    assert_eq!(out["stack"][0]["sym"], "target_function", "{out}");
    let out = resolve(&[], &frame(&"ab".repeat(20)));
    assert_eq!(out["stack"][0]["reason"], "build_id_mismatch", "{out}");
    assert!(out["stack"][0].get("sym").is_none());
}

#[test]
fn missing_corrupt_and_unmapped_frames_carry_a_reason() {
    let dir = TempDir::new("corrupt");
    let prog = build_prog(&dir, "prog", &[]);
    let bytes = std::fs::read(&prog).unwrap();
    let truncated = dir.path("truncated");
    std::fs::write(&truncated, &bytes[..200]).unwrap();
    let text = dir.path("text");
    std::fs::write(&text, "just some text\n").unwrap();
    // Section headers pointing past the end of the file.
    let mut bad_shoff = bytes.clone();
    bad_shoff[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    let bad = dir.path("bad_shoff");
    std::fs::write(&bad, bad_shoff).unwrap();

    let frame = |m: &Path, off: &str| json!({"module": m.to_str().unwrap(), "offset": off});
    let input = json!({"type": "t", "stack": [
        frame(&truncated, "0x1130"),
        frame(&text, "0x10"),
        frame(&dir.path("nonexistent"), "0x1130"),
        frame(&prog, "0x7fffffff"),
        frame(&bad, "0x1130"),
        frame(&prog, "0x0"),
    ]})
    .to_string();
    let out = resolve(&[], &input);
    let reasons: Vec<&str> = out["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        reasons,
        ["corrupt_elf", "corrupt_elf", "file_missing", "unmapped", "corrupt_elf", "no_symbols"],
        "{out}"
    );
}

#[test]
fn malformed_lines_are_reported_and_good_lines_all_come_out_in_order() {
    let dir = TempDir::new("malformed");
    let prog = build_prog(&dir, "prog", &[]);
    let good = run_prog(&prog);
    let passthrough = r#"{"type":"exec",  "pid": 7, "addr":"0x1234", "x":[1,2.50,"é"]}"#;
    let input = [
        passthrough,
        "this is not json",
        good.trim_end(),
        r#"{"type":"a","stack":[{"addr":"0x1ffffffffffffffff"}]}"#,
        r#"{"type":"a","stack":[{"addr":123456789012345678901234567890}]}"#,
        "",
        r#"{"type":"a","stack":[{"addr":true}]}"#,
        r#"{"type":"a","stack":"nope"}"#,
        "[1,2,3]",
        r#"{"type":"b"}"#,
        good.trim_end(),
        // Blank to Rust, not to JSON.
        "\u{c}",
    ]
    .join("\n");
    let r = symres(&[], &input);
    assert_eq!(r.code, 1, "malformed input must be reported in the exit status");
    let out_lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(out_lines.len(), 9, "{}", r.stdout);
    assert_eq!(out_lines[0], passthrough, "passed through byte for byte");
    assert_eq!(out_lines[4], "", "a blank line has no frames: written unchanged");
    assert_eq!(out_lines[6], r#"{"type":"a","stack":"nope"}"#, "no frames: unchanged");
    assert_eq!(out_lines[7], r#"{"type":"b"}"#);
    assert_eq!(r.lines[1]["stack"][0]["sym"], "target_function");
    for i in [2, 3, 4] {
        assert_eq!(r.lines[i]["stack"][0]["reason"], "malformed", "{}", r.stdout);
    }
    assert_eq!(r.lines[7]["stack"][1]["sym"], "outer_function");
    let errs: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        errs,
        [
            "symres: error: line 2: not JSON: expected ident at line 1 column 2",
            "symres: error: line 4: stack[0].addr: not a 64-bit address: \"0x1ffffffffffffffff\" (frame left unresolved)",
            "symres: error: line 5: stack[0].addr: not a 64-bit address: 123456789012345678901234567890 (frame left unresolved)",
            "symres: error: line 7: stack[0].addr: expected a hex string like \"0x1234\", got true (frame left unresolved)",
            "symres: error: line 9: not a JSON object",
            "symres: error: line 12: not JSON: expected value at line 1 column 1",
            "symres: error: 3 malformed line(s) skipped",
            "symres: error: 3 malformed frame(s) left unresolved",
        ],
        "{}",
        r.stderr
    );

    let ok = symres(&[], &format!("{passthrough}\n{good}"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stderr, "");
}

/// Input of many batches, resolved by several threads: the same output,
/// in input order, and the same messages with the right line numbers, as
/// with one thread.
#[test]
fn threads_keep_the_order_of_lines_and_messages() {
    let dir = TempDir::new("threads");
    let prog = build_prog(&dir, "prog", &[]);
    let good = run_prog(&prog);
    let block = [
        good.trim_end(),
        "not json",
        r#"{"type":"x","n":1}"#,
        r#"{"type":"a","stack":[{"addr":true}]}"#,
        "",
    ];
    let reps = 3000;
    let mut input = String::new();
    for i in 0..reps {
        for l in block {
            // Every line different, so lines cannot be mixed up unseen.
            input.push_str(&l.replacen("\"type\":\"", &format!("\"i\":{i},\"type\":\""), 1));
            input.push('\n');
        }
    }
    assert!(input.len() > 4 << 18, "fewer bytes than four batches: {}", input.len());
    let one = symres(&["-j", "1"], &input);
    let three = symres(&["-j", "3"], &input);
    assert_eq!(one.code, 1);
    assert_eq!(three.code, 1);
    assert!(one.stdout == three.stdout, "outputs differ");
    assert_eq!(one.stderr, three.stderr);
    let out: Vec<&str> = three.stdout.lines().collect();
    assert_eq!(out.len(), 4 * reps);
    for (i, l) in out.chunks(4).enumerate() {
        assert!(
            l[0].starts_with(&format!("{{\"i\":{i},"))
                && l[0].contains("\"sym\":\"target_function\""),
            "{}",
            l[0]
        );
        assert_eq!(l[1], format!("{{\"i\":{i},\"type\":\"x\",\"n\":1}}"));
        assert_eq!(
            l[2],
            format!("{{\"i\":{i},\"type\":\"a\",\"stack\":[{{\"addr\":true,\"reason\":\"malformed\"}}]}}")
        );
        assert_eq!(l[3], "");
    }
    let errs: Vec<&str> = three.stderr.lines().collect();
    assert_eq!(errs.len(), 2 * reps + 2);
    for i in 0..reps {
        assert!(
            errs[2 * i].starts_with(&format!("symres: error: line {}: not JSON", 5 * i + 2)),
            "{}",
            errs[2 * i]
        );
        assert!(
            errs[2 * i + 1]
                .starts_with(&format!("symres: error: line {}: stack[0].addr", 5 * i + 4)),
            "{}",
            errs[2 * i + 1]
        );
    }
    assert_eq!(errs[2 * reps], format!("symres: error: {reps} malformed line(s) skipped"));
    assert_eq!(
        errs[2 * reps + 1],
        format!("symres: error: {reps} malformed frame(s) left unresolved")
    );
    // Each thread loads the program; -v says so once.
    let verbose = symres(&["-v", "-j", "3"], &input);
    assert!(verbose.stdout == three.stdout, "outputs differ under -v");
    let loaded: Vec<&str> =
        verbose.stderr.lines().filter(|l| l.starts_with("symres: loaded")).collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert!(loaded[0].contains(&*prog.to_string_lossy()), "{}", loaded[0]);
}

#[test]
fn kernel_addresses_through_kallsyms() {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut syms: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let a = u64::from_str_radix(it.next()?, 16).ok()?;
            let t = it.next()?;
            let n = it.next()?;
            matches!(t, "t" | "T").then_some((a, n))
        })
        .filter(|&(a, _)| a != 0)
        .collect();
    syms.sort();
    // Pick a symbol that has its address to itself and room for +0x10.
    let unique = syms
        .windows(3)
        .find(|w| w[0].0 < w[1].0 && w[1].0 + 0x10 < w[2].0 && w[1].0 >= 0xffff_8000_0000_0000);
    let Some(w) = unique else {
        // No readable kallsyms: only unprivileged, or with kptr_restrict=2.
        let restricted = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
            .is_ok_and(|v| v.trim() == "2");
        assert!(
            !crate::support::is_root() || restricted,
            "root reads kernel addresses in /proc/kallsyms"
        );
        let input = json!({"type": "t", "stack": [{"addr": "0xffffffff81000010", "kernel": true}]})
            .to_string();
        let out = resolve(&[], &input);
        assert_eq!(out["stack"][0]["reason"], "no_symbols", "{out}");
        return;
    };
    let (start, name) = w[1];
    let input =
        json!({"type": "t", "stack": [{"addr": format!("{:#x}", start + 0x10)}]}).to_string();
    let out = resolve(&[], &input);
    assert_eq!(out["stack"][0]["sym"], name, "{out}");
    assert_eq!(out["stack"][0]["sym_offset"], "0x10");
}

#[test]
fn live_stream_is_not_held_back() {
    let dir = TempDir::new("stream");
    let prog = build_prog(&dir, "prog", &[]);
    let good = run_prog(&prog);
    let mut child = Command::new(crate::support::bin("symres"))
        .env("XDG_CACHE_HOME", test_cache_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        for _ in 0..5 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            tx.send(l).unwrap();
        }
    });
    // One line at a time, stdin kept open: each answer must arrive on its own.
    stdin.write_all(b"{\"type\":\"hello\"}\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "{\"type\":\"hello\"}\n");
    // With the start of a long next line in the same write (more than
    // symres reads at once): the whole line is not held back while the
    // rest of the other is awaited (found by review: it was, with threads).
    stdin.write_all(format!("{}{{\"type\":\"{}", good, "p".repeat(300_000)).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let l = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(l.contains("\"sym\":\"target_function\""), "{l}");
    stdin.write_all(b"tial\"}\n").unwrap();
    stdin.flush().unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap().ends_with("tial\"}\n"));
    // A long line whose output is short (a stale "sym" replaced), then a
    // short one, in one write: a batch filled by them is flushed too
    // (found by review: its output waited for more input).
    let stale =
        good.trim_end().replacen("[{", &format!("[{{\"sym\":\"{}\",", "x".repeat(300_000)), 1);
    stdin.write_all(format!("{stale}\n{good}").as_bytes()).unwrap();
    stdin.flush().unwrap();
    for _ in 0..2 {
        let l = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            l.contains("\"sym\":\"target_function\"") && l.len() < 10_000,
            "{}",
            &l[..l.len().min(200)]
        );
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
}

/// Address, file offset and size of `bin`'s section `name` (from readelf).
fn section_header(bin: &Path, name: &str) -> [u64; 3] {
    let out = Command::new("readelf").arg("-SW").arg(bin).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    // [Nr] Name Type Address Off Size ...: fields after the name.
    let f: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    [2, 3, 4].map(|i| u64::from_str_radix(f[i], 16).unwrap())
}

/// File offset and size of `bin`'s section `name`.
fn section(bin: &Path, name: &str) -> (u64, u64) {
    let [_, off, size] = section_header(bin, name);
    (off, size)
}

#[test]
fn prebuilt_index_answers_like_dwarf_at_every_offset() {
    let dir = TempDir::new("index");
    let prog = build_prog(&dir, "prog", &[]);
    let (ix, empty) = (dir.path("ix"), dir.path("empty"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let built = symres(&["-j", "3", "--index-dir", &p(&ix), "--build-index", &p(&prog)], "");
    assert_eq!(built.code, 0, "{}", built.stderr);
    assert_eq!(built.lines.len(), 1, "{}", built.stdout);
    let index = PathBuf::from(built.lines[0]["index"].as_str().unwrap());
    assert_eq!(index, ix.join(format!("{}.index", build_id(&prog))));
    assert!(built.lines[0]["pieces"].as_u64().unwrap() > 10, "{}", built.stdout);
    // Built by three threads or by one: the same bytes.
    let one = dir.path("one");
    assert_eq!(
        symres(&["-j", "1", "--index-dir", &p(&one), "--build-index", &p(&prog)], "").code,
        0
    );
    assert!(
        std::fs::read(&index).unwrap()
            == std::fs::read(one.join(index.file_name().unwrap())).unwrap(),
        "-j1 and -j3 indexes differ"
    );
    // From the debug file alone (segments with no bytes in the file): the
    // same answers, file and line included.
    let (debug, from_debug) = (dir.path("prog.debug"), dir.path("from_debug"));
    sh(Command::new("objcopy").arg("--only-keep-debug").arg(&prog).arg(&debug));
    assert_eq!(symres(&["--index-dir", &p(&from_debug), "--build-index", &p(&debug)], "").code, 0);
    assert!(
        std::fs::read(&index).unwrap()
            == std::fs::read(from_debug.join(index.file_name().unwrap())).unwrap(),
        "the debug file's index differs"
    );

    // Every byte of .text, as return addresses and not.
    let (off, size) = section(&prog, ".text");
    let frames: Vec<String> = (off..off + size)
        .map(|o| {
            json!({"module": p(&prog), "offset": format!("{o:#x}"), "return_address": o % 2 == 0})
                .to_string()
        })
        .collect();
    let input: String = frames
        .chunks(16)
        .map(|c| format!("{{\"type\":\"t\",\"stack\":[{}]}}\n", c.join(",")))
        .collect();
    let with = symres(&["-v", "--index-dir", &p(&ix)], &input);
    let without = symres(&["--index-dir", &p(&empty)], &input);
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert!(with.stderr.contains("using the index"), "{}", with.stderr);
    assert!(without.stdout.contains("\"sym\":\"target_function\""), "resolved at all");
    assert_eq!(with.stdout, without.stdout, "the index answers as DWARF does");

    // A damaged index is ignored, with a word under -v.
    let data = std::fs::read(&index).unwrap();
    std::fs::write(&index, &data[..data.len() / 2]).unwrap();
    let cut = symres(&["-v", "--index-dir", &p(&ix)], &input);
    assert!(cut.stderr.contains("truncated, ignored"), "{}", cut.stderr);
    assert_eq!(cut.stdout, without.stdout);

    // Nothing to name an index by, or nothing to index: errors, exit 1.
    let no_id = build_prog(&dir, "noid", &["-Wl,--build-id=none"]);
    let bad = symres(&["--index-dir", &p(&ix), "--build-index", &p(&no_id), "/nonexistent/x"], "");
    assert_eq!(bad.code, 1);
    let errs: Vec<&str> = bad.stderr.lines().collect();
    assert_eq!(
        errs,
        [
            format!("symres: error: {}: no build id to name its index by", no_id.display())
                .as_str(),
            "symres: error: /nonexistent/x: cannot load: file missing",
        ]
    );
}

/// The random parts of the first temporary names symres tries, in
/// `symres_as`.
const TEMP_NAMES: [&str; 2] = ["00000000deadbee1", "00000000deadbee2"];

/// Run symres as `uid` (root: as it is) with `args`; exit code and stderr.
fn symres_as(uid: u32, args: &[&str], input: &str) -> (i32, String, String) {
    let bin = crate::support::bin("symres");
    let mut cmd = if uid == 0 {
        Command::new(&bin)
    } else {
        let mut c = Command::new("setpriv");
        let id = uid.to_string();
        c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]).arg(&bin);
        c
    };
    let mut child = cmd
        .env("XDG_CACHE_HOME", test_cache_home())
        .env("LEAKD_SYMRES_TEST_TEMP_NAMES", TEMP_NAMES.join(","))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 18, item 1: whoever can write to the index directory plants
/// files where `--build-index` writes pointing at a file of the user
/// running symres: a symlink and a hard link at exactly the temporary
/// names symres will try first (fixed for the test by
/// `LEAKD_SYMRES_TEST_TEMP_NAMES`, random otherwise), and a symlink at the
/// index's own name. Run as root and as an ordinary user, symres never
/// writes through them: a directory another user owns (or that others may
/// write to without the sticky bit) is refused; in a sticky one (like
/// /tmp) the index goes in by an exclusive create (the planted names are
/// skipped, never opened: without `O_EXCL` the hard link would be written
/// through) and a rename (that replaces a link planted at its name, as
/// root), and the victim is left as it was.
#[test]
fn planted_symlinks_in_the_index_directory_are_never_written_through() {
    use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
    if !crate::support::root_available("planted-symlink") {
        return;
    }
    const ATTACKER: u32 = 65533;
    let dir = TempDir::new("planted");
    let prog = build_prog(&dir, "prog", &[]);
    let name = format!("{}.index", build_id(&prog));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    for runner in [0, 65534] {
        let victim = dir.path(&format!("victim-{runner}"));
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::chown(&victim, Some(runner), Some(runner)).unwrap();
        let plant = |d: &Path, mode: u32, owner: u32, final_name: bool| {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(owner), Some(owner)).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
            let mut links = if final_name { vec![name.clone()] } else { vec![] };
            links.push(format!(".{name}.{}", TEMP_NAMES[0]));
            for n in links {
                symlink(&victim, d.join(&n)).unwrap();
                lchown(d.join(&n), Some(ATTACKER), Some(ATTACKER)).unwrap();
            }
            std::fs::hard_link(&victim, d.join(format!(".{name}.{}", TEMP_NAMES[1]))).unwrap();
        };
        // The attacker's directory, open to all (a shared --index-dir).
        let theirs = dir.path(&format!("theirs-{runner}"));
        plant(&theirs, 0o777, ATTACKER, true);
        let (code, _, err) =
            symres_as(runner, &["--index-dir", &p(&theirs), "--build-index", &p(&prog)], "");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "uid {runner}: {err}");
        assert_eq!(code, 1, "uid {runner}: {err}");
        assert!(err.contains("refused"), "uid {runner}: {err}");
        // A sticky directory everyone writes to, like /tmp. (An ordinary
        // user cannot replace another's link there: the name is squatted,
        // an error; root replaces it.)
        let sticky = dir.path(&format!("sticky-{runner}"));
        plant(&sticky, 0o1777, 0, runner == 0);
        let (code, out, err) =
            symres_as(runner, &["--index-dir", &p(&sticky), "--build-index", &p(&prog)], "");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "uid {runner}: {err}");
        assert_eq!(code, 0, "uid {runner}: {err}");
        assert!(out.contains(&name), "{out}");
        // The planted names are there as planted (tried, never opened).
        for (n, is_link) in TEMP_NAMES.iter().zip([true, false]) {
            let md = std::fs::symlink_metadata(sticky.join(format!(".{name}.{n}"))).unwrap();
            assert_eq!(md.file_type().is_symlink(), is_link, "{n}");
        }
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 3, "uid {runner}");
        let index = std::fs::symlink_metadata(sticky.join(&name)).unwrap();
        assert!(index.file_type().is_file(), "uid {runner}: {index:?}");
        assert_eq!(index.uid(), runner);
        // And it is used: answers from the index.
        let line = json!({"type": "t", "stack": [{"module": p(&prog), "offset": "0x1130"}]});
        let (code, _, err) =
            symres_as(runner, &["-v", "--index-dir", &p(&sticky)], &format!("{line}\n"));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("using the index"), "uid {runner}: {err}");
    }
}

/// Frames at every byte of `prog`'s .text, return addresses and not, 16 a
/// line (no two alike in a line); and their number.
fn text_frames(prog: &Path) -> (String, u64) {
    let (off, size) = section(prog, ".text");
    let p = prog.to_str().unwrap();
    let frames: Vec<String> = (off..off + size)
        .map(|o| {
            json!({"module": p, "offset": format!("{o:#x}"), "return_address": o % 2 == 0})
                .to_string()
        })
        .collect();
    let input = frames
        .chunks(16)
        .map(|c| format!("{{\"type\":\"t\",\"stack\":[{}]}}\n", c.join(",")))
        .collect();
    (input, size)
}

/// The file names in `dir` (none when it does not exist), sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The number N in "cache: N frames answered from the cache" (-v).
fn cache_hits(stderr: &str) -> u64 {
    let l = stderr
        .lines()
        .find(|l| l.ends_with(" frames answered from the cache"))
        .unwrap_or_else(|| panic!("no count of cache hits in {stderr}"));
    l.trim_start_matches("symres: cache: ").split(' ').next().unwrap().parse().unwrap()
}

/// The first run leaves its answers in $XDG_CACHE_HOME/leakd/symres (else
/// ~/.cache/leakd/symres), named by build id; the second run answers every
/// frame from there, byte for byte as without it; --no-cache neither reads
/// nor writes it; -j does not change what is cached.
#[test]
fn cache_answers_the_second_run_the_same() {
    let dir = TempDir::new("cache");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, n) = text_frames(&prog);
    let home = dir.path("xdg");
    let cache = home.join("leakd/symres");
    let name = format!("{}.answers", build_id(&prog));

    let bare = symres_in(&dir.path("unused"), &["--no-cache"], &input);
    assert_eq!(bare.code, 0, "{}", bare.stderr);
    assert!(bare.stdout.contains("\"sym\":\"target_function\""), "resolved at all");
    assert_eq!(names_in(&dir.path("unused")), Vec::<String>::new(), "--no-cache wrote");

    let first = symres_in(&home, &["-v", "-j3"], &input);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(cache_hits(&first.stderr), 0);
    // Written by a child, after symres exited (its stderr, under -v, is
    // the child's until it is done).
    assert!(first.stderr.contains("(symres-cache), after this one exits"), "{}", first.stderr);
    assert!(
        first.stderr.contains(&format!("cache: wrote {}", cache.join(&name).display())),
        "{}",
        first.stderr
    );
    assert_eq!(names_in(&cache), std::slice::from_ref(&name));
    assert_eq!(first.stdout, bare.stdout);

    for j in ["-j1", "-j3"] {
        let second = symres_in(&home, &["-v", j], &input);
        assert_eq!(second.code, 0, "{}", second.stderr);
        assert!(second.stderr.contains("cache: using"), "{}", second.stderr);
        assert_eq!(cache_hits(&second.stderr), n, "{j}: every frame from the cache");
        assert!(!second.stderr.contains("cache: wrote"), "nothing new: {}", second.stderr);
        assert!(second.stdout == bare.stdout, "{j}: output differs with the cache");
    }
    // --no-cache does not read it either.
    let off = symres_in(&home, &["-v", "--no-cache"], &input);
    assert!(!off.stderr.contains("cache:"), "{}", off.stderr);
    assert_eq!(off.stdout, bare.stdout);

    // Without XDG_CACHE_HOME: under $HOME/.cache.
    let out = Cmd::cargo_bin("symres")
        .unwrap()
        .env_remove("XDG_CACHE_HOME")
        .env(FOREGROUND, "1")
        .env("HOME", dir.path("home"))
        .write_stdin(input.clone())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(names_in(&dir.path("home/.cache/leakd/symres")), [name]);
}

/// Cache files past --cache-size go, those used longest ago first; a
/// file used (read) counts as used then.
#[test]
fn cache_evicts_the_least_recently_used_at_its_size() {
    let dir = TempDir::new("evict");
    // The same code under three build ids: three cache files of one size.
    let ids = ["aa", "bb", "cc"].map(|b| b.repeat(20));
    let progs: Vec<PathBuf> = ids
        .iter()
        .map(|id| build_prog(&dir, &format!("p{}", &id[..2]), &[&format!("-Wl,--build-id=0x{id}")]))
        .collect();
    let home = dir.path("xdg");
    let cache = home.join("leakd/symres");
    let file = |i: usize| cache.join(format!("{}.answers", ids[i]));
    let run = |i: usize, size: &str| {
        let (input, _) = text_frames(&progs[i]);
        let r = symres_in(&home, &["-v", "--cache-size", size], &input);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    run(0, "1G");
    let size = std::fs::metadata(file(0)).unwrap().len();
    run(1, "1G");
    assert_eq!(std::fs::metadata(file(1)).unwrap().len(), size);
    // 0 used again (answered from its file): 1 is now the oldest.
    let again = run(0, "1G");
    assert!(again.stderr.contains("cache: using"), "{}", again.stderr);
    // Room for two: writing 2 evicts 1.
    let r = run(2, &(2 * size + size / 2).to_string());
    assert!(r.stderr.contains(&format!("cache: evicted {}.answers", ids[1])), "{}", r.stderr);
    assert_eq!(names_in(&cache), [format!("{}.answers", ids[0]), format!("{}.answers", ids[2])]);
    // Room for one: the others evicted down to the bound.
    let r = run(1, &(size + 1).to_string());
    assert_eq!(names_in(&cache).len(), 1, "{}", r.stderr);
    assert_eq!(names_in(&cache), [format!("{}.answers", ids[1])]);
    // A bound below one file: nothing written, and the bound holds even
    // for a run that learned nothing new.
    let r = run(2, &(size - 1).to_string());
    assert!(r.stderr.contains("over the cache size; not written"), "{}", r.stderr);
    assert_eq!(names_in(&cache), Vec::<String>::new(), "{}", r.stderr);
    run(0, "1G");
    run(0, "100");
    assert_eq!(names_in(&cache), Vec::<String>::new());
    // Sizes in K/M/G; nonsense refused.
    let bad = symres(&["--cache-size", "12X"], "");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("not a size"), "{}", bad.stderr);
}

/// A damaged or truncated cache file is said (without -v), ignored, and
/// written anew; the output is what it is without a cache.
#[test]
fn damaged_or_truncated_cache_files_are_rebuilt() {
    let dir = TempDir::new("damaged");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, n) = text_frames(&prog);
    let home = dir.path("xdg");
    let file = home.join(format!("leakd/symres/{}.answers", build_id(&prog)));
    let good = symres_fg(&home, &[], &input);
    assert_eq!(good.code, 0);
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, data) in [("a flipped bit", flipped), ("half", bytes[..bytes.len() / 2].to_vec())] {
        std::fs::write(&file, &data).unwrap();
        let r = symres_fg(&home, &[], &input);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        let warning = format!("symres: warning: cache file {}: ", file.display());
        assert!(r.stderr.starts_with(&warning), "{what}: {}", r.stderr);
        assert!(r.stderr.contains("ignored, written anew"), "{what}: {}", r.stderr);
        assert_eq!(r.stdout, good.stdout, "{what}");
        // Written anew: the next run answers every frame from it.
        let next = symres_in(&home, &["-v"], &input);
        assert_eq!(cache_hits(&next.stderr), n, "{what}: {}", next.stderr);
        assert!(!next.stderr.contains("warning"), "{what}: {}", next.stderr);
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{what}: not the same file again");
    }
}

/// Runs at once on one cache: each writes a whole file (aside, then
/// renamed), none reads half of one, and what is left is whole; so do
/// their cache writers after they exit (rounds 1 and 2).
#[test]
fn concurrent_runs_share_the_cache() {
    let dir = TempDir::new("concurrent");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, n) = text_frames(&prog);
    let home = dir.path("xdg");
    let bare = symres_in(&dir.path("unused"), &["--no-cache"], &input);
    for round in 0..3 {
        // Round 0 writes before exiting, without a word; the others after,
        // under -v (their stderr, read to its end, then waits for the
        // writers too).
        let (foreground, args) = if round == 0 { ("1", vec![]) } else { ("0", vec!["-v"]) };
        // Each round from an empty cache: every run has answers to write
        // (but those that start after another's file is in place).
        let _ = std::fs::remove_dir_all(&home);
        let mut background = 0;
        let runs: Vec<Child> = (0..4)
            .map(|_| {
                let mut c = Command::new(crate::support::bin("symres"))
                    .env("XDG_CACHE_HOME", &home)
                    .env(FOREGROUND, foreground)
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = c.stdin.take().unwrap();
                let input = input.clone();
                std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
                c
            })
            .collect();
        for c in runs {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            if round == 0 {
                assert_eq!(err, "", "round {round}");
            } else {
                let bad =
                    |l: &str| l.starts_with("symres: warning") || l.starts_with("symres: error");
                assert!(!err.lines().any(bad), "round {round}: {err}");
                background += usize::from(err.contains("(symres-cache), after this one exits"));
            }
            assert!(out.stdout == bare.stdout.as_bytes(), "round {round}: output differs");
        }
        // The first run to look found no file: it had answers to write.
        assert!(round == 0 || background > 0, "round {round}: no writer after exit");
    }
    // One whole file, no temporary one left.
    let cache = home.join("leakd/symres");
    assert_eq!(names_in(&cache), [format!("{}.answers", build_id(&prog))]);
    let next = symres_in(&home, &["-v"], &input);
    assert_eq!(cache_hits(&next.stderr), n, "{}", next.stderr);
}

/// A binary rebuilt at the same path has a new build id: it is never
/// answered from the old build's cache file, which stays for the old one.
#[test]
fn rebuilt_binary_is_not_answered_from_the_old_cache() {
    let dir = TempDir::new("rebuilt");
    let home = dir.path("xdg");
    let prog = build_prog(&dir, "prog", &[]);
    let (old_input, _) = text_frames(&prog);
    let old_id = build_id(&prog);
    assert_eq!(symres_fg(&home, &[], &old_input).code, 0);
    // Other code at the same path (unoptimized: every address moves).
    sh(Command::new("gcc")
        .args(["-g", "-O0", "-Wl,--build-id"])
        .arg(fixture("prog.c"))
        .arg("-o")
        .arg(&prog));
    let new_id = build_id(&prog);
    assert_ne!(old_id, new_id);
    let (input, _) = text_frames(&prog);
    let bare = symres_in(&dir.path("unused"), &["--no-cache"], &input);
    let r = symres_in(&home, &["-v"], &input);
    assert_eq!(cache_hits(&r.stderr), 0, "{}", r.stderr);
    assert!(!r.stderr.contains(&format!("{old_id}.answers")), "{}", r.stderr);
    assert_eq!(r.stdout, bare.stdout);
    let mut want = vec![format!("{new_id}.answers"), format!("{old_id}.answers")];
    want.sort();
    assert_eq!(names_in(&home.join("leakd/symres")), want);
    // The old cache file holds the old build's id: put under the new one's
    // name, it is refused (said), never answered from.
    let cache = home.join("leakd/symres");
    std::fs::copy(cache.join(format!("{old_id}.answers")), cache.join(format!("{new_id}.answers")))
        .unwrap();
    let r = symres_in(&home, &["-v"], &input);
    assert!(r.stderr.contains("cache of another build"), "{}", r.stderr);
    assert_eq!(cache_hits(&r.stderr), 0, "{}", r.stderr);
    assert_eq!(r.stdout, bare.stdout);
}

/// What a run killed while writing its cache file leaves (a temporary
/// file, never the file itself: that is only ever renamed into place) is
/// removed by a later run once it is 10 minutes old; a newer one may be
/// another run's, still writing, and stays.
#[test]
fn a_killed_writers_temporary_file_is_removed_later() {
    let dir = TempDir::new("killed");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, _) = text_frames(&prog);
    let home = dir.path("xdg");
    let cache = home.join("leakd/symres");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let id = build_id(&prog);
    let (old, new) = (format!(".{id}.answers.00000000deadbeef"), format!(".{id}.answers.1"));
    for name in [&old, &new] {
        std::fs::write(cache.join(name), b"SYMRESAC half a file").unwrap();
    }
    let then = std::time::SystemTime::now() - Duration::from_secs(11 * 60);
    std::fs::File::options()
        .write(true)
        .open(cache.join(&old))
        .unwrap()
        .set_modified(then)
        .unwrap();
    let r = symres_fg(&home, &[], &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "", "a temporary file is not read");
    let mut want = vec![new, format!("{id}.answers")];
    want.sort();
    assert_eq!(names_in(&cache), want);
}

/// The pid N in "cache: written by process N (symres-cache), ..." (-v).
fn cache_writer(stderr: &str) -> Option<i32> {
    let l = stderr.lines().find(|l| l.contains("(symres-cache), after this one exits"))?;
    l.split("written by process ").nth(1)?.split(' ').next()?.parse().ok()
}

/// Wait until process `pid` (not our child) has exited, through a pidfd
/// (readable once it has), not a timed poll.
fn wait_gone(pid: i32) {
    // SAFETY: plain system calls on a descriptor this function owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            // Already gone (and reaped).
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ESRCH));
            return;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        while libc::poll(&mut p, 1, -1) < 0 {}
        libc::close(fd);
    }
}

/// The first run's cache is written by a child after symres exits: symres
/// has exited, its output whole, while the child has not yet put the file
/// in place. Killed there (SIGKILL, the test hook having stopped it just
/// before its rename), it leaves no cache file, only its temporary one:
/// the next run answers nothing from the cache, and writes it whole.
#[test]
fn a_killed_background_cache_writer_leaves_no_half_file() {
    let dir = TempDir::new("bgkilled");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, n) = text_frames(&prog);
    let home = dir.path("xdg");
    let cache = home.join("leakd/symres");
    let name = format!("{}.answers", build_id(&prog));
    let bare = symres_in(&dir.path("unused"), &["--no-cache"], &input);

    let mut c = Command::new(crate::support::bin("symres"))
        .env("XDG_CACHE_HOME", &home)
        .env("LEAKD_SYMRES_TEST_STOP_BEFORE_RENAME", "1")
        .arg("-v")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let feed = input.clone();
    let feeder = std::thread::spawn(move || stdin.write_all(feed.as_bytes()).unwrap());
    let mut stdout = c.stdout.take().unwrap();
    let mut out = String::new();
    // To its end: the writer does not hold it.
    stdout.read_to_string(&mut out).unwrap();
    feeder.join().unwrap();
    assert!(c.wait().unwrap().success());
    assert!(out == bare.stdout, "output differs");
    // symres has exited; its writer says (on the stderr it keeps under -v)
    // when it has stopped before renaming.
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut l = String::new();
        assert_ne!(err.read_line(&mut l).unwrap(), 0, "no stop before the rename: {said}");
        said.push_str(&l);
        if l.contains("stopping before the rename") {
            break;
        }
    }
    let pid = cache_writer(&said).unwrap_or_else(|| panic!("no writer's pid in {said}"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "symres-cache");
    assert!(!cache.join(&name).exists(), "renamed before the stop");
    // SAFETY: a signal to the writer this test's symres started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_gone(pid);
    // Its stderr ends with it.
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let names = names_in(&cache);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with(&format!(".{name}.")), "only a temporary file: {names:?}");

    // The next run finds no cache file, answers the same, and writes it.
    let next = symres_in(&home, &["-v"], &input);
    assert_eq!(cache_hits(&next.stderr), 0, "{}", next.stderr);
    assert!(next.stdout == bare.stdout);
    assert!(cache.join(&name).exists(), "{}", next.stderr);
    let third = symres_in(&home, &["-v"], &input);
    assert_eq!(cache_hits(&third.stderr), n, "{}", third.stderr);
}

/// LEAKD_SYMRES_CACHE_FOREGROUND=1 writes the cache before symres exits
/// (no child: the file is there when it has exited, stderr unread); 0 and
/// unset write it after.
#[test]
fn cache_foreground_variable_writes_before_exiting() {
    let dir = TempDir::new("foreground");
    let prog = build_prog(&dir, "prog", &[]);
    let (input, n) = text_frames(&prog);
    let name = format!("{}.answers", build_id(&prog));
    for (value, child) in [("1", false), ("0", true), ("", true)] {
        let home = dir.path(&format!("xdg{value}"));
        let r = symres_env(&home, &[(FOREGROUND, value)], &["-v"], &input);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(cache_writer(&r.stderr).is_some(), child, "{value:?}: {}", r.stderr);
        assert!(r.stderr.contains("cache: wrote"), "{value:?}: {}", r.stderr);
        assert!(home.join("leakd/symres").join(&name).exists());
        // Nothing new the second time: nothing to write, no child.
        let again = symres_in(&home, &["-v"], &input);
        assert_eq!(cache_hits(&again.stderr), n, "{}", again.stderr);
        assert_eq!(cache_writer(&again.stderr), None, "{}", again.stderr);
    }
    // Without -v, with the variable: the file is there once symres has
    // exited (the run's stderr says nothing).
    let home = dir.path("xdg-quiet");
    let r = symres_fg(&home, &[], &input);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    assert!(home.join("leakd/symres").join(&name).exists());
}

/// symres with a watchdog: `None` when it has not finished within
/// `secs` seconds (it is then killed), else its exit code, stdout and
/// stderr. Its input is written and its output read by threads while the
/// watchdog polls: a symres that writes more than a pipe holds finishes,
/// not read as a hang.
fn symres_within(secs: u64, args: &[&str], input: &str) -> Option<(i32, String, String)> {
    let mut child = Command::new(crate::support::bin("symres"))
        .env("XDG_CACHE_HOME", test_cache_home())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    // A symres that exits without reading all of it: EPIPE, not an error.
    let writer = std::thread::spawn(move || drop(stdin.write_all(input.as_bytes())));
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            r.read_to_end(&mut b).unwrap();
            String::from_utf8_lossy(&b).into_owned()
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    Some((status.code().unwrap_or(-1), out.join().unwrap(), err.join().unwrap()))
}

/// `symres_within` reads what symres writes while it waits: output of
/// twice what a pipe holds comes back whole, within the watchdog's time.
/// (The input is smaller, less than a full pipe more than symres has read
/// by then, so a watchdog that only polled would time out, not hang.)
#[test]
fn symres_within_drains_a_large_output() {
    let frame = r#"{"module":"/x","offset":"0x1"}"#;
    let line = format!("{{\"stack\":[{}]}}\n", [frame; 20].join(","));
    let input = line.repeat(120);
    assert!(input.len() < 80 * 1024, "{}", input.len());
    let (code, out, err) =
        symres_within(60, &["--no-cache"], &input).expect("read as a hang: output not drained");
    assert_eq!(code, 0, "{err}");
    assert!(out.len() > 128 * 1024, "{} bytes", out.len());
    assert_eq!(out.lines().count(), 120);
    assert_eq!(out.matches(r#""reason":"file_missing""#).count(), 2400);
}

/// Issue 18, item 3: files that are not regular files that end never make
/// symres wait: a FIFO as a module, a FIFO where an index would be, and
/// tracefs's trace_pipe (a "regular" file whose reads wait for trace data,
/// and would consume it), which says its size is 0 and so is not read.
#[test]
fn fifos_and_trace_pipe_never_hang() {
    let dir = TempDir::new("fifo");
    let prog = build_prog(&dir, "prog", &[]);
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let fifo = dir.path("fifo");
    sh(Command::new("mkfifo").arg(&fifo));
    let ix = dir.path("ix");
    std::fs::create_dir(&ix).unwrap();
    sh(Command::new("mkfifo").arg(ix.join(format!("{}.index", build_id(&prog)))));
    let frame = |m: &Path| json!({"module": p(m), "offset": "0x1130"});
    let mut stack = vec![frame(&fifo), frame(&prog)];
    let trace_pipe = Path::new("/sys/kernel/tracing/trace_pipe");
    if crate::support::root_available("trace_pipe") {
        assert!(trace_pipe.exists(), "tracefs is not mounted at /sys/kernel/tracing");
        stack.push(frame(trace_pipe));
    }
    let line = json!({"type": "t", "stack": stack}).to_string();
    let Some((code, out, err)) = symres_within(30, &["-v", "--index-dir", &p(&ix)], &line) else {
        panic!("symres hung on a FIFO or trace_pipe");
    };
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["stack"][0]["reason"], "file_missing", "{out}");
    assert!(out["stack"][1]["sym"].is_string(), "{out}");
    if stack.len() > 2 {
        assert_eq!(out["stack"][2]["reason"], "corrupt_elf", "{out}");
    }
    assert!(err.contains("not a regular file"), "{err}");
}

/// Issue 18, item 2: a frame with a pid names its module as the process
/// sees it: inside the process's root. An absolute symlink there
/// (`/evil.so -> <a host binary>`) must not lead to the host's file (its
/// first bytes would leak into -v messages, or a host binary would be
/// symbolized): the link is resolved inside the root, where its target
/// does not exist. The process's own binary still resolves.
#[test]
fn module_symlinks_resolve_inside_the_process_root() {
    use std::os::unix::fs::symlink;
    if !crate::support::root_available("chroot") {
        return;
    }
    let dir = TempDir::new("inroot");
    // Static: it runs in an empty root.
    let prog = build_prog(&dir, "prog", &["-static"]);
    let host = build_prog(&dir, "host", &[]);
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::copy(&prog, root.join("prog")).unwrap();
    symlink(&host, root.join("evil.so")).unwrap();
    let mut chroot = Command::new("chroot");
    chroot.arg(&root).args(["/prog", "wait"]);
    let (child, _, line) = crate::support::spawn_first_line(&mut chroot);
    assert!(!line.is_empty(), "the program did not start in its root");
    let mut v: Value = serde_json::from_str(&line).unwrap();
    // Without /proc in its root the program cannot say its offsets: those
    // of the same binary run here.
    let here: Value = serde_json::from_str(&run_prog(&prog)).unwrap();
    let off = here["stack"][0]["offset"].clone();
    assert!(off.is_string(), "{here}");
    v.as_object_mut().unwrap().remove("live");
    v["stack"] = json!([
        {"module": "/evil.so", "offset": off},
        {"module": "/prog", "offset": off},
    ]);
    let out = resolve(&[], &v.to_string());
    finish(child);
    assert_eq!(out["stack"][0]["reason"], "file_missing", "{out}");
    assert!(out["stack"][0].get("sym").is_none(), "{out}");
    assert_eq!(out["stack"][1]["sym"], "target_function", "{out}");
}

/// Issue 18, item 9: lines whose frame arrays hold no frames pass through
/// unchanged, byte for byte, exit 0; in a line with a malformed frame, that
/// frame alone gets "reason":"malformed" (said on stderr with its line,
/// exit 1) and the good frames beside it are resolved.
#[test]
fn lines_without_frames_pass_through_and_a_bad_frame_spoils_only_itself() {
    let no_frames =
        [r#"{"stack":["a"]}"#, r#"{"meta":{"stack":[1,2]}}"#, r#"{"stack":[{"foo":1}]}"#];
    let input = no_frames.join("\n") + "\n";
    let (code, out, err) = symres_within(60, &[], &input).expect("symres finishes");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, input);

    let dir = TempDir::new("badframe");
    let prog = build_prog(&dir, "prog", &[]);
    let mut line: Value = serde_json::from_str(&run_prog(&prog)).unwrap();
    line.as_object_mut().unwrap().remove("live");
    let good = line["stack"][0].clone();
    line["stack"] = json!([{"addr": "0xzz", "module": "/x"}, good, "not a frame"]);
    let r = symres(&[], &line.to_string());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.lines.len(), 1, "{}", r.stdout);
    let stack = &r.lines[0]["stack"];
    assert_eq!(stack[0]["reason"], "malformed", "{stack}");
    assert_eq!(stack[1]["sym"], "target_function", "{stack}");
    assert_eq!(stack[2], "not a frame");
    assert_eq!(
        r.stderr.lines().collect::<Vec<_>>(),
        [
            "symres: error: line 1: stack[0].addr: not a 64-bit address: \"0xzz\" (frame left unresolved)",
            "symres: error: 1 malformed frame(s) left unresolved",
        ]
    );
}

/// Issue 17: symres's code speaks with the running tool's name and level.
/// Under `leakd-attach -v --symbolize` its messages (files loaded, said
/// under -v) start with "leakd-attach:", never "symres:".
#[leakd_test_macros::bpf_test]
fn messages_under_leakd_attach_carry_its_name() {
    let out = Cmd::cargo_bin("leakd-attach")
        .unwrap()
        .args(["-v", "--symbolize", "--"])
        .args([crate::support::LEAKER, "ten-nine", "--linger", "0.3"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let leaker = Path::new(crate::support::LEAKER).file_name().unwrap().to_str().unwrap();
    assert!(
        err.lines().any(|l| l.starts_with("leakd-attach: loaded ") && l.contains(leaker)),
        "{err}"
    );
    assert!(!err.lines().any(|l| l.starts_with("symres:")), "{err}");
}

/// A module closed to make room (--max-modules) keeps what it learned:
/// the cache gets every answer of every module, and the next run answers
/// every frame from it.
#[test]
fn closed_modules_keep_what_they_learned_for_the_cache() {
    let dir = TempDir::new("closedcache");
    let ids = ["ab", "cd"].map(|b| b.repeat(20));
    let progs: Vec<PathBuf> = ids
        .iter()
        .map(|id| build_prog(&dir, &format!("p{}", &id[..2]), &[&format!("-Wl,--build-id=0x{id}")]))
        .collect();
    let (off, size) = section(&progs[0], ".text");
    // Each line names both files, one after the other: with one module
    // open, every frame closes the other.
    let input: String = (off..off + size)
        .step_by(4)
        .map(|o| {
            let f = |p: &Path| json!({"module": p.to_str().unwrap(), "offset": format!("{o:#x}")});
            format!("{}\n", json!({"type": "t", "stack": [f(&progs[0]), f(&progs[1])]}))
        })
        .collect();
    let frames = 2 * size.div_ceil(4);
    let home = dir.path("xdg");
    let first = symres_in(&home, &["-j1", "-vv", "--max-modules", "1"], &input);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stderr.contains("closed a module used longest ago"), "{}", first.stderr);
    let mut want: Vec<String> = ids.iter().map(|i| format!("{i}.answers")).collect();
    want.sort();
    assert_eq!(names_in(&home.join("leakd/symres")), want);
    let second = symres_in(&home, &["-j1", "-v", "--max-modules", "1"], &input);
    assert_eq!(cache_hits(&second.stderr), frames, "{}", second.stderr);
    assert_eq!(second.stdout, first.stdout);
}

/// Minor page faults of one run of symres (-j1, input from `input`,
/// output discarded), and its stderr; its cache writer, if any, is waited
/// for (its stderr ends with it under -v) but not counted: it is not
/// symres's child.
// Reaped by wait4 (for its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn symres_faults(home: &Path, args: &[&str], input: &Path) -> (i64, String) {
    let mut c = Command::new(crate::support::bin("symres"))
        .env("XDG_CACHE_HOME", home)
        .arg("-j1")
        .args(args)
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = c.stderr.take().unwrap();
    let (mut status, mut usage) = (0, std::mem::MaybeUninit::<libc::rusage>::zeroed());
    // SAFETY: waits for the child this function spawned (not reaped by
    // anyone else), into a status and a rusage it owns.
    let pid = unsafe { libc::wait4(c.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(pid, c.id() as i32, "{}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    // SAFETY: filled in by wait4, which succeeded.
    (unsafe { usage.assume_init() }.ru_minflt, err)
}

/// Issue 21: the first run must not be slower for the cache. Its writer
/// shares the run's memory (a fork); had symres let go of its answers
/// after the fork, each page holding one would have been copied for it
/// (20,000 answers: ~1,600 page faults more than --no-cache, measured).
/// Counted in page faults, which do not depend on the machine's load:
/// with the cache at most one per 32 answers more (the list of what was
/// learned, ~180 measured).
#[test]
fn the_first_run_faults_no_more_pages_for_the_cache() {
    let dir = TempDir::new("cachefaults");
    // Symbols, no DWARF: tens of thousands of functions, answered fast
    // even by a debug build.
    let bin = dir.path("big");
    sh(Command::new("objcopy").arg("--strip-debug").arg(crate::support::bin("symres")).arg(&bin));
    let (off, size) = section(&bin, ".text");
    let n = 20_000u64;
    let p = bin.to_str().unwrap();
    let frames: Vec<String> = (0..n)
        .map(|i| json!({"module": p, "offset": format!("{:#x}", off + i * (size / n))}).to_string())
        .collect();
    let input: String = frames
        .chunks(16)
        .map(|c| format!("{{\"type\":\"t\",\"stack\":[{}]}}\n", c.join(",")))
        .collect();
    let file = dir.path("input");
    std::fs::write(&file, input).unwrap();

    let (bare, _) = symres_faults(&dir.path("unused"), &["--no-cache"], &file);
    let home = dir.path("xdg");
    let (cached, err) = symres_faults(&home, &["-v"], &file);
    let name = format!("{}.answers", build_id(&bin));
    assert!(err.contains("(symres-cache), after this one exits"), "{err}");
    assert!(err.contains("cache: wrote"), "{err}");
    assert!(home.join("leakd/symres").join(&name).exists(), "{err}");
    assert!(
        cached <= bare + (n / 32) as i64,
        "{cached} page faults with the cache, {bare} without"
    );
    // The second run answers them all from it (answers written from the
    // symbols as they were found, see leakd_symbolize's resolver::module),
    // byte for byte as without the cache, on one thread or more.
    let (_, again) = symres_faults(&home, &["-v"], &file);
    assert_eq!(cache_hits(&again), n, "{again}");
    let input = std::fs::read_to_string(&file).unwrap();
    let bare = symres_in(&dir.path("unused"), &["--no-cache", "-j3"], &input);
    // Nearly all named (not the padding between functions); no one name
    // is asserted, as where the offsets fall depends on the build.
    let named = bare.stdout.matches("\"sym\":").count() as u64;
    assert!(named >= n * 9 / 10, "{named} of {n} frames named");
    for j in ["-j1", "-j3"] {
        let second = symres_in(&home, &["-v", j], &input);
        assert_eq!(cache_hits(&second.stderr), n, "{}", second.stderr);
        assert!(second.stdout == bare.stdout, "{j}: output differs with the cache");
    }
}
