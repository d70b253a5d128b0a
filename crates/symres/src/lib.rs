//! symres: the symbolizer at the end of `allocsnoop --stack | symres`.
//!
//! Our tracers print raw addresses (module + file offset + build id, or an
//! address and a PID) because resolving names in the kernel or in the hot
//! path would cost events; resolving them afterwards, offline if need be,
//! is this crate's job. It is a library as well as a filter so that
//! leakd-attach can symbolize in process with the same code (`Resolver`,
//! `Resolver::process_line_into`).
//!
//! As a filter it must never hold back a live stream (output is flushed
//! whenever the next read could block) and never give up on a whole stream
//! because of one bad line or one bad file.

mod dwarf;
mod elf;
mod index;
mod kallsyms;
mod line;
mod mmap;
mod resolve;
mod scan;
#[cfg(test)]
mod testing;

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use leakd_common::cli::RunArgs;
use leakd_common::{Context, Result};

pub use kallsyms::KERNEL_START;
pub use line::LineError;
#[doc(hidden)]
pub use resolve::fuzz_elf;
pub use resolve::{demangle, Inlined, Options, Outcome, PidFrame, Reason, Resolution};

/// The resolver with its caches; one per stream (or per leakd-attach run).
pub struct Resolver(resolve::Resolver, line::Scratch);

// A resolver can be moved to another thread (checked at compile time).
const _: () = {
    const fn send<T: Send>() {}
    send::<Resolver>()
};

impl Resolver {
    pub fn new(opts: Options) -> Self {
        Resolver(resolve::Resolver::new(opts), line::Scratch::default())
    }

    /// Resolve a file offset in a module, as recorded for a process that may
    /// have exited. `build_id` is the GNU build id in hex ("" or `None` when
    /// unknown); an invalid one is treated as unknown.
    pub fn resolve_module_offset(&mut self, module: &std::path::Path, offset: u64, build_id: Option<&str>) -> Outcome {
        let id = build_id.and_then(|b| resolve::parse_build_id(b).ok().flatten());
        self.0.resolve_module_offset(module, offset, 0, id.as_deref(), None)
    }

    /// Resolve an address of a live process through its /proc/PID/maps.
    pub fn resolve_pid_addr(&mut self, pid: u32, addr: u64) -> PidFrame {
        self.0.next_generation();
        self.0.resolve_pid_addr(pid, addr, 0, None)
    }

    /// Resolve a kernel address through /proc/kallsyms.
    pub fn resolve_kernel(&mut self, addr: u64) -> Outcome {
        self.0.resolve_kernel(addr, 0)
    }

    /// Add symbols to every frame of one JSON line (without its newline),
    /// appending the rewritten line to `out`. `Ok(false)`: the line has no
    /// frames; write it as it was, byte for byte (`out` is left as it was,
    /// as it is when the line is rejected).
    pub fn process_line_into(&mut self, line: &[u8], out: &mut Vec<u8>) -> std::result::Result<bool, LineError> {
        line::process_into(&mut self.0, &mut self.1, line, out)
    }

    /// `process_line_into` with a new buffer: `Ok(None)` when the line has
    /// no frames.
    pub fn process_line_bytes(&mut self, line: &[u8]) -> std::result::Result<Option<Vec<u8>>, LineError> {
        let mut out = Vec::new();
        Ok(self.process_line_into(line, &mut out)?.then_some(out))
    }
}

const EXAMPLES: &str = "\
Examples:
  allocsnoop -p 1234 --stack | symres          allocation stacks with function names
  leakd-attach -p 1234 | symres | jq .         leaks, symbolized
  symres --debug-dir ./debug < saved.jsonl     offline, with debug files kept aside";

#[derive(Parser, Debug)]
#[command(
    name = "symres",
    version,
    about = "Resolve code addresses in JSON lines to function, file and line",
    long_about = "Read JSON lines on standard input and write them to standard output with every \
frame resolved: objects in arrays named \"stack\" or \"frames\", anywhere in a line, that have \
\"module\" and \"offset\" (file offset, optionally \"build_id\"), or \"addr\" and the line's \"pid\", \
or a kernel \"addr\". Lines without frames are written unchanged.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    run: RunArgs,

    /// Also look for separate debug files under DIR (DIR/.build-id/xx/yyyy.debug, or by
    /// .gnu_debuglink), before /usr/lib/debug. May be given more than once.
    #[arg(long = "debug-dir", value_name = "DIR")]
    debug_dirs: Vec<PathBuf>,

    /// Do not report functions inlined at an address (the "inlined" field).
    #[arg(long)]
    no_inlined: bool,

    /// Instead of reading standard input, index each FILE: answer every piece of its
    /// code once and write the answers, named by the file's build id, to the index
    /// directory. Later runs answer that build's addresses from its index, with a binary
    /// search instead of parsing DWARF: worth it for large debug builds.
    #[arg(long = "build-index", value_name = "FILE", num_args = 1.., conflicts_with = "no_inlined")]
    build_index: Vec<PathBuf>,

    /// Where indexes are written and looked for [default: $XDG_CACHE_HOME/leakd/symres,
    /// else ~/.cache/leakd/symres].
    #[arg(long = "index-dir", value_name = "DIR")]
    index_dir: Option<PathBuf>,
}

pub fn command() -> clap::Command {
    Cli::command()
}

/// Longest input line accepted; longer ones are skipped as malformed
/// instead of being buffered without bound.
const MAX_LINE_BYTES: usize = 64 << 20;

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let mut resolver = Resolver::new(Options {
        debug_dirs: cli.debug_dirs.clone(),
        inlined: !cli.no_inlined,
        index_dir: cli.index_dir.clone(),
        verbose: cli.run.verbose,
    });
    if !cli.build_index.is_empty() {
        return build_indexes(&mut resolver, &cli.build_index);
    }
    let deadline = cli.run.duration.map(|d| Instant::now() + d);
    let stdin = io::stdin();
    let mut input = BufReader::with_capacity(1 << 16, stdin.lock());
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut buf = Vec::new();
    let mut line_out = Vec::new();
    let mut lineno: u64 = 0;
    let mut malformed: u64 = 0;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // A whole line already buffered is handled where it lies.
        let buffered = input.buffer();
        if let Some(nl) = memchr::memchr(b'\n', buffered) {
            lineno += 1;
            malformed += line(&mut resolver, &buffered[..nl], lineno, &mut line_out, &mut out)?;
            input.consume(nl + 1);
            continue;
        }
        // The next read may block: flush first, so a live stream is never
        // held back.
        out.flush().context("writing to standard output")?;
        if let Some(d) = deadline {
            if !wait_readable(&stdin, d)? {
                break;
            }
        }
        buf.clear();
        let n = (&mut input).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf).context("reading standard input")?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            skip_rest_of_line(&mut input)?;
            eprintln!("symres: error: line {lineno}: longer than {MAX_LINE_BYTES} bytes, skipped");
            malformed += 1;
            continue;
        }
        malformed += line(&mut resolver, buf.strip_suffix(b"\n").unwrap_or(&buf), lineno, &mut line_out, &mut out)?;
    }
    out.flush().context("writing to standard output")?;
    // Tearing down every cached table costs ~5% of a large run; the process
    // ends now and the kernel frees it all at once.
    std::mem::forget(resolver);
    if malformed > 0 {
        eprintln!("symres: error: {malformed} malformed line(s) skipped");
        return Ok(1);
    }
    Ok(0)
}

/// `--build-index`: one line per file indexed, errors on stderr.
fn build_indexes(resolver: &mut Resolver, files: &[PathBuf]) -> Result<i32> {
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for f in files {
        let t0 = Instant::now();
        match resolver.0.build_index(f) {
            Ok((index, pieces)) => {
                let line = serde_json::json!({
                    "type": "index",
                    "module": leakd_common::text::bytes_to_string(f.as_os_str().as_encoded_bytes()),
                    "index": leakd_common::text::bytes_to_string(index.as_os_str().as_encoded_bytes()),
                    "pieces": pieces,
                    "elapsed_ms": t0.elapsed().as_millis() as u64,
                });
                writeln!(out, "{line}").context("writing to standard output")?;
            }
            Err(e) => {
                eprintln!("symres: error: {}: {e}", f.display());
                failed += 1;
            }
        }
    }
    Ok(i32::from(failed > 0))
}

/// Write input line `lineno` (without its newline) resolved, or as it
/// was when it has no frames; returns 1 when it is malformed (and skipped).
/// `line_out` is a buffer reused from line to line.
fn line(resolver: &mut Resolver, text: &[u8], lineno: u64, line_out: &mut Vec<u8>, out: &mut impl Write) -> Result<u64> {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    // Blank lines (JSON's whitespace only) have no frames: written
    // unchanged, like any such line.
    if text.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        out.write_all(text)?;
        out.write_all(b"\n")?;
        return Ok(0);
    }
    line_out.clear();
    match resolver.process_line_into(text, line_out) {
        Ok(false) => {
            out.write_all(text)?;
            out.write_all(b"\n")?;
        }
        Ok(true) => {
            line_out.push(b'\n');
            out.write_all(line_out)?;
        }
        Err(e) => {
            eprintln!("symres: error: line {lineno}: {e}");
            return Ok(1);
        }
    }
    Ok(0)
}

fn skip_rest_of_line(input: &mut impl BufRead) -> Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                input.consume(n);
            }
        }
    }
}

/// Wait until stdin is readable or `deadline` passes (false).
fn wait_readable(stdin: &io::Stdin, deadline: Instant) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for standard input"),
        }
    }
}
