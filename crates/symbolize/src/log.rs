//! Messages on stderr, prefixed with the running tool's name.
//!
//! symres runs as its own filter and inside leakd-attach (`--symbolize`),
//! so a message must name the program the user ran, not this crate; and
//! whether it is said depends on that program's `-v`. Both live here,
//! process-wide, instead of being passed down every call: the name comes
//! from argv[0] (the program the user ran), the level from [`set_level`]
//! (symres's `run`, or the `verbose` a library user puts in `Options`).
//! When leakd-common grows the workspace's logging module, this one becomes
//! a thin forwarder to it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

static LEVEL: AtomicU8 = AtomicU8::new(0);
static TOOL: OnceLock<String> = OnceLock::new();

/// Messages said once (see [`once`]) are remembered up to this many: a
/// long run under -v meets a message per process that exits.
const MAX_REMEMBERED: usize = 1 << 14;
static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The name messages start with: the file name of argv[0], else "symres".
pub fn tool() -> &'static str {
    TOOL.get_or_init(|| {
        std::env::args_os()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned())
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "symres".to_string())
    })
}

/// Raise the verbosity to `level` (-v is 1): a library user's options may
/// ask for more than the program's own, never for less.
pub fn set_level(level: u8) {
    LEVEL.fetch_max(level, Ordering::Relaxed);
}

/// Whether messages of `level` are said.
#[inline]
pub fn enabled(level: u8) -> bool {
    LEVEL.load(Ordering::Relaxed) >= level
}

/// Say `msg` on stderr as `tool: msg`.
pub fn say(msg: std::fmt::Arguments<'_>) {
    eprintln!("{}: {msg}", tool());
}

/// Say the message `msg` makes at `level`, unless that level is off or it
/// was said before: each resolving thread meets the same files and the
/// same failures.
pub fn once(level: u8, msg: impl FnOnce() -> String) {
    if !enabled(level) {
        return;
    }
    let msg = msg();
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if first_time(said.get_or_insert_with(HashSet::new), &msg) {
        say(format_args!("{msg}"));
    }
}

/// Whether `msg` is said for the first time, as far as the last
/// `MAX_REMEMBERED` messages go (keeping them all would grow without
/// bound).
fn first_time(said: &mut HashSet<String>, msg: &str) -> bool {
    if said.contains(msg) {
        return false;
    }
    if said.len() >= MAX_REMEMBERED {
        said.clear();
    }
    said.insert(msg.to_string())
}

/// The text of an error message for stderr: `tool: error: msg`.
pub fn error_line(msg: std::fmt::Arguments<'_>) -> String {
    format!("{}: error: {msg}", tool())
}

/// Say `msg` at `level` (every time).
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::say(format_args!($($arg)*));
        }
    };
}
pub(crate) use log;

#[cfg(test)]
mod tests {
    use super::*;

    /// Said once, until so many others were said that the first is
    /// forgotten.
    #[test]
    fn messages_said_once_within_a_bound() {
        let mut said = HashSet::new();
        assert!(first_time(&mut said, "a"));
        assert!(!first_time(&mut said, "a"));
        for i in 1..MAX_REMEMBERED {
            assert!(first_time(&mut said, &i.to_string()));
        }
        assert!(!first_time(&mut said, "a"));
        assert!(first_time(&mut said, "one too many"));
        assert!(first_time(&mut said, "a"));
        assert!(said.len() <= MAX_REMEMBERED);
    }
}
