//! Builds the C leak simulator (leaker/leaker.c) in its two flavours, with and
//! without frame pointers, so tests and demos never need a manual step. The
//! binaries go to OUT_DIR (for tests, via env!) and next to the tool binaries
//! in target/<profile>/ (for scripts and the README demo).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from("leaker/leaker.c");
    println!("cargo:rerun-if-changed=leaker/leaker.c");
    // target/<profile>/build/leakd-<hash>/out -> target/<profile>
    let profile_dir = out.ancestors().nth(3).map(PathBuf::from);
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    for (name, flags, env_name) in [
        (
            "leaker",
            &["-O1", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"][..],
            "LEAKER_FP",
        ),
        ("leaker-nofp", &["-O2", "-fomit-frame-pointer"][..], "LEAKER_NOFP"),
    ] {
        let bin = out.join(name);
        let status = Command::new(&cc)
            .args(["-g", "-Wall", "-Wextra", "-Werror", "-fno-builtin", "-pthread"])
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => fail(&format!("{cc} failed to build {} ({s})", src.display())),
            Err(e) => fail(&format!("running {cc}: {e} (install gcc)")),
        }
        println!("cargo:rustc-env={env_name}={}", bin.display());
        if let Some(dir) = &profile_dir {
            // The demo and benchmarks run it from there; tests use the
            // OUT_DIR path above, so a failed copy only warns.
            if let Err(e) = std::fs::copy(&bin, dir.join(name)) {
                println!("cargo:warning=leaker build: copying {name} to {}: {e}", dir.display());
            }
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: leaker build: {msg}");
    println!("cargo:warning=leaker build: {msg}");
    std::process::exit(1);
}
