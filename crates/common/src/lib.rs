//! What every leakd tool needs, written once.
//!
//! The tools differ only in their BPF program and in how they turn its events
//! into JSON lines; everything a user relies on behaving the same way across
//! them — options, error messages, exit codes, launching a command, signals,
//! broken pipes, lost-event reporting — lives here so it cannot drift.

pub mod bpf;
pub mod captured;
pub mod cli;
pub mod container;
pub mod detach;
pub mod event_loop;
pub mod launch;
pub mod lines;
pub mod log;
pub mod out;
pub mod procmaps;
pub mod target;
pub mod text;

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

pub use anyhow::{anyhow, bail, Context, Error, Result};

#[doc(hidden)]
pub use aya as __aya;

/// The BPF object a tool's build script compiled from `bpf/<stem>.bpf.c`
/// (see leakd-bpf-build), aligned as aya needs it:
/// `static OBJECT: &[u8] = leakd_common::bpf_object!("execsnoop");`.
#[macro_export]
macro_rules! bpf_object {
    ($stem:literal) => {
        $crate::__aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $stem, ".bpf.o"))
    };
}

/// The Rust mirror bindgen generated from `bpf/<stem>.h`:
/// `leakd_common::bpf_mirror!(pub mod sys = "execsnoop");`.
#[macro_export]
macro_rules! bpf_mirror {
    ($vis:vis mod $name:ident = $stem:literal) => {
        #[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
        $vis mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $stem, ".rs"));
        }
    };
}

/// Declare mirrored structs plain data, readable from any bytes (events)
/// and usable as map keys and values: `bpf_pod!(unsafe sys::a, sys::b)`.
/// The `unsafe` is the caller's promise: each type is a bindgen mirror of
/// a struct of fixed-size integers and integer arrays only, so every bit
/// pattern is a valid value (bindgen's layout tests check the layout).
#[macro_export]
macro_rules! bpf_pod {
    (unsafe $($t:ty),+ $(,)?) => {
        $(
            // SAFETY: promised by the caller with `unsafe` (see bpf_pod!).
            unsafe impl $crate::bpf::Pod for $t {}
            // SAFETY: as above.
            unsafe impl $crate::__aya::Pod for $t {}
        )+
    };
}

/// A tool's `main`: `leakd_common::tool_main!(execsnoop);` runs
/// `execsnoop::command()` and `execsnoop::run` through [`main`] and exits
/// with its code.
#[macro_export]
macro_rules! tool_main {
    ($krate:ident) => {
        fn main() {
            std::process::exit($crate::main($krate::command(), std::env::args_os(), $krate::run));
        }
    };
}

/// Exit status for a run that ended normally.
pub const EXIT_OK: i32 = 0;
/// Exit status for any error the tool reports (bad PID, no permission, ...).
pub const EXIT_ERROR: i32 = 1;
/// Exit status for bad command-line usage (clap's convention).
pub const EXIT_USAGE: i32 = 2;

/// Parse the arguments with `command`, call `run`, and turn the outcome into an
/// exit code, printing errors as `tool: error: ...`.
///
/// A broken pipe on stdout (`tool | head -1`) is a normal way for a consumer to
/// say it has seen enough, so it exits 0 without a message.
pub fn main<I, F>(command: clap::Command, args: I, run: F) -> i32
where
    I: IntoIterator<Item = OsString>,
    F: FnOnce(&clap::ArgMatches) -> Result<i32>,
{
    let name = command.get_name().to_string();
    let matches = match command.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            // Printing help to a closed pipe is not worth a message either.
            let _ = e.print();
            return code;
        }
    };
    let level = matches.try_get_one::<u8>("verbose").ok().flatten().copied().unwrap_or(0);
    log::init(&name, level);
    if !stdout_is_open() {
        // Run as `tool >&-`: every line would go to the /dev/null put
        // there and the run look successful.
        eprintln!("{name}: error: standard output is closed: nowhere to write the results");
        return EXIT_ERROR;
    }
    match run(&matches) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => EXIT_OK,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("{name}: error: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("{name}: error: {}", format_chain(&e));
            EXIT_ERROR
        }
    }
}

/// Set when file descriptor 1 was closed as the process started.
static STDOUT_CLOSED_AT_START: AtomicBool = AtomicBool::new(false);

/// Runs before main (see [`NOTE_CLOSED_STDOUT`]), so before Rust's runtime
/// opens /dev/null on a standard descriptor it finds closed: after that, a
/// closed stdout looks like `>/dev/null`. Inferring it from a read-write
/// /dev/null instead refused stdout=DEVNULL from Python and `1<>/dev/null`.
extern "C" fn note_closed_stdout() {
    // SAFETY: F_GETFD on a descriptor number only reads its flags.
    if unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1 {
        STDOUT_CLOSED_AT_START.store(true, Ordering::Relaxed);
    }
}

/// An ELF constructor: the C runtime calls the functions in .init_array
/// before main, and Rust's runtime starts in main.
#[used]
#[link_section = ".init_array"]
static NOTE_CLOSED_STDOUT: extern "C" fn() = note_closed_stdout;

/// Whether file descriptor 1 was open when we were started.
fn stdout_is_open() -> bool {
    // Read so the linker keeps the constructor with this code.
    // SAFETY: a plain read of an initialised static.
    let _ = unsafe { std::ptr::read_volatile(&NOTE_CLOSED_STDOUT) };
    !STDOUT_CLOSED_AT_START.load(Ordering::Relaxed)
}

fn format_chain(e: &Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}

/// A usage error found after parsing (options that contradict each other):
/// exits with EXIT_USAGE like clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage_error(msg: impl Into<String>) -> Error {
    Error::new(UsageError(msg.into()))
}

/// Whether an error (or anything in its chain) is EPIPE on output.
pub fn is_broken_pipe(e: &Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
