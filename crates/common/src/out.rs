//! JSON-lines output on stdout.
//!
//! One object per line, flushed per line on a terminal (someone is watching)
//! and in batches otherwise (a pipe wants throughput). Write errors propagate,
//! so a closed pipe ends the tool through the broken-pipe path in `main`.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

pub struct Output {
    w: BufWriter<StdoutFd>,
    tty: bool,
    plain: bool,
}

/// Names the failing stream in a write error, keeping its kind (a broken
/// pipe must still be recognised as one by `main`).
fn on_stdout(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing to standard output: {e}"))
}

/// fd 1 as a File that is never closed by us. Bypasses std's line-buffered
/// stdout, whose per-line flushing costs a syscall per event on a pipe.
struct StdoutFd(ManuallyDrop<File>);

impl Write for StdoutFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Output {
    pub fn stdout() -> Self {
        // SAFETY: fd 1 is open for the life of the process; ManuallyDrop keeps
        // the File from closing it.
        let f = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        Output {
            w: BufWriter::with_capacity(1 << 16, StdoutFd(f)),
            tty: io::stdout().is_terminal(),
            plain: false,
        }
    }

    /// Human-readable output (a tool's `--text`): shared writers such as the
    /// lost-event report then write text instead of JSON.
    pub fn set_plain(&mut self, plain: bool) {
        self.plain = plain;
    }

    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// Write one JSON value as one line.
    pub fn line(&mut self, v: &serde_json::Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.w, v).map_err(io::Error::from).map_err(on_stdout)?;
        self.text("\n")
    }

    /// Write one line already serialized as a JSON object.
    pub fn json_line(&mut self, json: &[u8]) -> io::Result<()> {
        self.w.write_all(json).map_err(on_stdout)?;
        self.text("\n")
    }

    /// Write text as is (for `--text` output, and the end of every line):
    /// on a terminal each write is shown at once.
    pub fn text(&mut self, s: &str) -> io::Result<()> {
        self.w.write_all(s.as_bytes()).map_err(on_stdout)?;
        if self.tty {
            self.w.flush().map_err(on_stdout)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush().map_err(on_stdout)
    }
}
