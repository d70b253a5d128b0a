//! Diagnostics on stderr, prefixed with the tool's name.
//!
//! Set once by [`crate::main`] (the tool's name from its clap command, the
//! level from `-v`), so no function needs a `verbose` or `tool` parameter
//! and a library used inside another tool (symres in `leakd-attach
//! --symbolize`) speaks with that tool's name. Level 0 prints only
//! warnings; `-v` is 1, `-vv` 2, `-vvv` 3.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

static TOOL: OnceLock<String> = OnceLock::new();
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// Name the tool and set the level; the name is kept from the first call.
pub fn init(tool: &str, level: u8) {
    let _ = TOOL.set(tool.to_string());
    LEVEL.store(level, Ordering::Relaxed);
}

/// The tool's name, as in its messages ("leakd" before [`init`]).
pub fn tool() -> &'static str {
    TOOL.get().map_or("leakd", String::as_str)
}

/// The `-v` count.
pub fn level() -> u8 {
    LEVEL.load(Ordering::Relaxed)
}

/// Whether messages of `level` (1 for `-v`) are printed.
pub fn enabled(level: u8) -> bool {
    self::level() >= level
}

/// Print `tool: message` to stderr. Used by the macros.
pub fn print(args: std::fmt::Arguments<'_>) {
    // One write: stderr is unbuffered, and a line written piece by piece
    // interleaves with the launched command's output on the same stderr.
    let line = format!("{}: {args}\n", tool());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

/// `tool: message` on stderr with `-v` or more.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        if $crate::log::enabled(1) {
            $crate::log::print(format_args!($($arg)+));
        }
    };
}

/// `tool: message` on stderr with `-vv` or more.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        if $crate::log::enabled(2) {
            $crate::log::print(format_args!($($arg)+));
        }
    };
}

/// `tool: message` on stderr with `-vvv`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        if $crate::log::enabled(3) {
            $crate::log::print(format_args!($($arg)+));
        }
    };
}

/// `tool: warning: message`, whatever the level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::print(format_args!("warning: {}", format_args!($($arg)+)))
    };
}
