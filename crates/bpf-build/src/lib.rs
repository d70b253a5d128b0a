//! Build-script side of every tool crate.
//!
//! Each tool owns exactly one BPF object, `bpf/<tool>.bpf.c`, and one header,
//! `bpf/<tool>.h`, which is the *only* definition of the structs shared with
//! user space. Instead of hand-copying those structs into Rust (and letting the
//! copies drift), the header is run through bindgen here; bindgen also emits
//! compile-time size and offset assertions, so a layout change that the C and
//! Rust sides disagree on cannot build.
//!
//! The BPF C is compiled with clang against a `vmlinux.h` generated from the
//! running kernel's BTF, so no kernel headers are needed and nothing
//! third-party is vendored into the repository.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Clang binaries tried in order when `BPF_CLANG` is not set.
const CLANG_CANDIDATES: &[&str] = &["clang-19", "clang-16", "clang-14", "clang"];

/// Compile `bpf/<tool>.bpf.c` to `$OUT_DIR/<tool>.bpf.o` and generate
/// `$OUT_DIR/<tool>.rs` from `bpf/<tool>.h`.
///
/// Exits the build script with a readable message (not a panic backtrace) when
/// a required tool is missing.
pub fn build(tool: &str) {
    build_with(tool, &[]);
}

/// [`build`], with more arguments for clang (`-mcpu=v3` for an object
/// that needs the BPF atomics that return a value: compare-and-swap,
/// exchange, fetch-and-add).
pub fn build_with(tool: &str, clang_args: &[&str]) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = find_bpf_dir();
    for entry in
        fs::read_dir(&bpf_dir).unwrap_or_else(|e| fail(&format!("{}: {e}", bpf_dir.display())))
    {
        let Ok(entry) = entry else { continue };
        let p = entry.path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    let vmlinux = out.join("vmlinux.h");
    generate_vmlinux_h(&vmlinux);

    let src = bpf_dir.join(format!("{tool}.bpf.c"));
    let obj = out.join(format!("{tool}.bpf.o"));
    let clang = find_clang();
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-g", "-O2", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .args(clang_args)
        .arg("-I")
        .arg(&out)
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
    if !status.success() {
        fail(&format!("{clang} failed to compile {}", src.display()));
    }

    mirror_header(&bpf_dir, tool, &out);
}

/// Generate `$OUT_DIR/<stem>.rs` from `bpf/<stem>.h` alone (for a crate
/// that shares definitions with BPF code without owning an object, such as
/// leakd-common and `bpf/leakd.h`).
pub fn mirror(stem: &str) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = find_bpf_dir();
    let header = bpf_dir.join(format!("{stem}.h"));
    println!("cargo:rerun-if-changed={}", header.display());
    mirror_header(&bpf_dir, stem, &out);
}

fn mirror_header(bpf_dir: &Path, stem: &str, out: &Path) {
    let header = bpf_dir.join(format!("{stem}.h"));
    let bindings = bindgen::Builder::default()
        .header_contents(
            "wrapper.h",
            &format!("#include <linux/types.h>\n#include \"{}\"\n", header.display()),
        )
        .allowlist_file(format!("{}.*", regex_escape(&bpf_dir.display().to_string())))
        .derive_default(true)
        .derive_debug(false)
        // Map keys are used as Rust hash keys as they are.
        .derive_hash(true)
        .derive_partialeq(true)
        .derive_eq(true)
        .layout_tests(true)
        .use_core()
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen on {}: {e}", header.display())));
    bindings
        .write_to_file(out.join(format!("{stem}.rs")))
        .unwrap_or_else(|e| fail(&format!("writing bindings: {e}")));
}

fn find_bpf_dir() -> PathBuf {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let candidate = dir.join("bpf");
        if candidate.join("leakd.bpf.h").is_file() {
            return candidate;
        }
    }
    fail("cannot find the workspace's bpf/ directory (bpf/leakd.bpf.h)")
}

fn find_clang() -> String {
    if let Some(c) = env::var_os("BPF_CLANG") {
        return c.to_string_lossy().into_owned();
    }
    for c in CLANG_CANDIDATES {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return (*c).to_string();
        }
    }
    fail(
        "no clang found (tried BPF_CLANG, clang-19, clang-16, clang-14, clang); \
         install one, e.g. `apt-get install clang-19` (or run scripts/setup)",
    )
}

fn generate_vmlinux_h(path: &Path) {
    const BTF: &str = "/sys/kernel/btf/vmlinux";
    println!("cargo:rerun-if-changed={BTF}");
    if !Path::new(BTF).exists() {
        fail("/sys/kernel/btf/vmlinux is missing: the kernel must be built with CONFIG_DEBUG_INFO_BTF");
    }
    let output = ["bpftool", "/usr/sbin/bpftool"]
        .iter()
        .find_map(|b| Command::new(b).args(["btf", "dump", "file", BTF, "format", "c"]).output().ok())
        .unwrap_or_else(|| fail("bpftool not found; install it with `apt-get install bpftool` (or run scripts/setup)"));
    if !output.status.success() {
        fail(&format!("bpftool btf dump failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    fs::write(path, output.stdout)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", path.display())));
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn fail(msg: &str) -> ! {
    // A build-script panic prints a backtrace that hides the message; this
    // is what the user needs to act on.
    eprintln!("error: leakd BPF build: {msg}");
    println!("cargo:warning=leakd BPF build: {msg}");
    std::process::exit(1);
}
