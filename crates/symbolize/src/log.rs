//! Messages on stderr, under the running tool's name and `-v` level.
//!
//! symres runs as its own filter and inside leakd-attach (`--symbolize`),
//! so a message must name the program the user ran, and whether it is said
//! depends on that program's `-v`: both are leakd-common's (`log`, set up
//! by `leakd_common::main`). What symres adds: messages said once per run
//! (each resolving thread meets the same files and failures), and its
//! `error:` lines.

use std::collections::HashSet;
use std::sync::Mutex;

use leakd_common::log as common;

/// Messages said once (see [`once`]) are remembered up to this many: a
/// long run under -v meets a message per process that exits.
const MAX_REMEMBERED: usize = 1 << 14;
static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether messages of `level` (1 for `-v`) are said.
#[inline]
pub fn enabled(level: u8) -> bool {
    common::enabled(level)
}

/// Say `msg` on stderr as `tool: msg`.
pub fn say(msg: std::fmt::Arguments<'_>) {
    common::print(msg);
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
    format!("{}: error: {msg}", common::tool())
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
