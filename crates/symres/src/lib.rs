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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use leakd_common::cli::RunArgs;
use leakd_common::{Context, Result};

#[doc(hidden)]
pub use index::fuzz as fuzz_index;
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

    /// Another resolver with the same options, for another thread: it has
    /// caches of its own but shares this one's parsed DWARF (most of what
    /// a new address costs in a large binary).
    pub fn fresh(&self) -> Self {
        Resolver(self.0.fresh(), line::Scratch::default())
    }

    /// Resolve a file offset in a module, as recorded for a process that may
    /// have exited. `build_id` is the GNU build id in hex ("" or `None` when
    /// unknown); an invalid one is treated as unknown. The module is named
    /// as in a frame (by our tools' non-UTF-8 rule).
    pub fn resolve_module_offset(
        &mut self,
        module: &std::path::Path,
        offset: u64,
        build_id: Option<&str>,
    ) -> Outcome {
        let id = build_id.and_then(|b| resolve::parse_build_id(b).ok().flatten());
        let name = leakd_common::text::to_text(module.as_os_str().as_encoded_bytes());
        self.0.resolve_module_offset(&name, offset, 0, id.as_deref(), None)
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
    pub fn process_line_into(
        &mut self,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<bool, LineError> {
        line::process_into(&mut self.0, &mut self.1, line, out)
    }

    /// `process_line_into` with a new buffer: `Ok(None)` when the line has
    /// no frames.
    pub fn process_line_bytes(
        &mut self,
        line: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, LineError> {
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

    /// Resolve with N threads [default: one per CPU, at most 4]. They share the parsed
    /// DWARF; each has its own caches of answers. Lines are written in the order they came.
    /// -j1 resolves in the thread that reads and writes. A line that comes alone has the DWARF
    /// units its frames (module and offset) need first parsed on N threads at once.
    /// --build-index uses them too.
    #[arg(short = 'j', long = "threads", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
}

pub fn command() -> clap::Command {
    Cli::command()
}

/// Longest input line accepted; longer ones are skipped as malformed
/// instead of being buffered without bound.
const MAX_LINE_BYTES: usize = 64 << 20;

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let threads = cli.threads.map_or_else(default_threads, usize::from);
    let opts = Options {
        debug_dirs: cli.debug_dirs.clone(),
        inlined: !cli.no_inlined,
        index_dir: cli.index_dir.clone(),
        verbose: cli.run.verbose,
        warm_threads: threads,
    };
    if !cli.build_index.is_empty() {
        return build_indexes(&mut Resolver::new(opts), &cli.build_index, threads);
    }
    let deadline = cli.run.duration.map(|d| Instant::now() + d);
    let pool = &Pool::default();
    let malformed = if threads == 1 {
        // One thread does it all: no threads to start (a single line's
        // wait), no handing over.
        let mut resolver = Resolver::new(opts);
        let mut writer = Writer::new();
        let mut io_error = None;
        read_batches(deadline, pool, |b| {
            match writer.put(resolve_batch(&mut resolver, b, pool), pool) {
                Ok(()) => true,
                Err(e) => {
                    io_error = Some(e);
                    false
                }
            }
        })?;
        // Tearing down every cached table costs ~5% of a large run; the
        // process ends now and the kernel frees it all at once.
        std::mem::forget(resolver);
        if let Some(e) = io_error {
            return Err(e);
        }
        writer.finish()?
    } else {
        run_threads(threads, &Resolver::new(opts), deadline, pool)?
    };
    if malformed > 0 {
        eprintln!("symres: error: {malformed} malformed line(s) skipped");
        return Ok(1);
    }
    Ok(0)
}

/// One resolving thread per CPU symres may run on, at most 4: each thread
/// keeps its own caches of answers and symbol tables, so memory grows with
/// the count.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Resolve with `threads` workers: the reader (this thread) sends batches
/// to them in turn (batch k to worker k mod n, so the writer knows whose
/// result comes next); a writer thread writes the results in input order.
/// Each worker's resolver is a `fresh` one of `first`'s. Returns the
/// number of malformed lines.
fn run_threads(
    threads: usize,
    first: &Resolver,
    deadline: Option<Instant>,
    pool: &Pool,
) -> Result<u64> {
    // Set when the writer stops (a closed pipe downstream): the others
    // stop too.
    let gone = &AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<u64> {
        let mut workers = Vec::new();
        let mut from_workers = Vec::new();
        for _ in 0..threads {
            let (batches, batch_rx) = mpsc::sync_channel::<Batch>(2);
            let (done_tx, done) = mpsc::sync_channel::<Done>(2);
            workers.push(Worker { batches, unborn: Some((batch_rx, done_tx)) });
            from_workers.push(done);
        }
        // A thread that cannot be made (a limit on processes) is an error,
        // not a panic: the output would lack every line after its first.
        let spawn = std::thread::Builder::new;
        let writer = spawn()
            .spawn_scoped(scope, move || {
                let r = write_batches(from_workers, pool);
                gone.store(true, Ordering::Relaxed);
                r
            })
            .context("cannot start the writing thread (-j1 needs none)")?;
        let mut sent = 0;
        let mut unstarted = None;
        let read = read_batches(deadline, pool, |b| {
            if gone.load(Ordering::Relaxed) {
                return false;
            }
            let w = &mut workers[sent % threads];
            if let Some((batches, done)) = w.unborn.take() {
                let resolver = first.fresh();
                if let Err(e) =
                    spawn().spawn_scoped(scope, move || worker(resolver, batches, done, pool, gone))
                {
                    unstarted = Some(e);
                    return false;
                }
            }
            sent += 1;
            w.batches.send(b).is_ok()
        });
        drop(workers);
        // The writer's error first: reading stops when it is gone (a
        // closed pipe downstream), and says only that.
        let malformed = writer
            .join()
            .unwrap_or_else(|_| Err(leakd_common::anyhow!("the writing thread panicked")))?;
        if let Some(e) = unstarted {
            return Err(leakd_common::anyhow!(e)
                .context("cannot start a resolving thread (-j1 needs none)"));
        }
        read?;
        Ok(malformed)
    })
}

/// Bytes read from stdin at once, and so the most (but for a longer line)
/// of lines handed to a worker at once: threads then cost nothing per
/// line. A batch goes before each read, so output never waits for input.
const BATCH_BYTES: usize = 1 << 18;

/// Buffers passed around again: a fresh one for every batch cost page
/// faults (large allocations are mapped anew each time).
#[derive(Default)]
struct Pool(std::sync::Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn get(&self) -> Vec<u8> {
        self.0.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
    }

    fn put(&self, mut b: Vec<u8>) {
        // Not one grown by a huge line.
        if b.capacity() > 4 * BATCH_BYTES {
            return;
        }
        b.clear();
        if let Ok(mut p) = self.0.lock() {
            // Enough for the batches in flight.
            if p.len() < 32 {
                p.push(b);
            }
        }
    }
}

/// A worker's channels: its thread starts with its first batch (a single
/// line, say, needs one).
struct Worker {
    batches: mpsc::SyncSender<Batch>,
    unborn: Option<(mpsc::Receiver<Batch>, mpsc::SyncSender<Done>)>,
}

/// Whole input lines, resolved together.
struct Batch {
    /// The number of the first line.
    first: u64,
    /// Lines, each with its newline (but the last at the end of input).
    text: Vec<u8>,
    /// The line after these was longer than MAX_LINE_BYTES and skipped.
    then_too_long: bool,
    /// The next read may block: output is flushed after this batch, so a
    /// live stream is never held back.
    flush: bool,
}

/// A batch resolved.
struct Done {
    out: Vec<u8>,
    /// Messages for stderr.
    errors: Vec<u8>,
    malformed: u64,
    then_too_long: Option<u64>,
    flush: bool,
}

/// Read stdin into batches for `send` until end of input, the deadline, or
/// `send` says stop (false: the output is gone).
fn read_batches(
    deadline: Option<Instant>,
    pool: &Pool,
    mut send: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let stdin = io::stdin();
    let mut input = BufReader::with_capacity(BATCH_BYTES, stdin.lock());
    let mut buf = Vec::new();
    let mut lineno: u64 = 0;
    let mut batch = Batch { first: 1, text: Vec::new(), then_too_long: false, flush: false };
    let mut send = |batch: &mut Batch, lineno: u64| -> bool {
        let next =
            Batch { first: lineno + 1, text: pool.get(), then_too_long: false, flush: false };
        send(std::mem::replace(batch, next))
    };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Whole lines already buffered go as they are.
        let buffered = input.buffer();
        if let Some(last) = memchr::memrchr(b'\n', buffered) {
            let lines = &buffered[..=last];
            lineno += memchr::memchr_iter(b'\n', lines).count() as u64;
            batch.text.extend_from_slice(lines);
            input.consume(last + 1);
            // No whole line is left in the buffer: the next step is a
            // read that may block, so this batch is flushed too.
            if batch.text.len() >= BATCH_BYTES {
                batch.flush = true;
                if !send(&mut batch, lineno) {
                    return Ok(());
                }
            }
            continue;
        }
        // The next read may block (even with data waiting: the rest of a
        // line may not have come yet): what is read so far goes now, to be
        // written and flushed, so a live stream is never held back.
        if !batch.text.is_empty() {
            batch.flush = true;
            if !send(&mut batch, lineno) {
                return Ok(());
            }
        }
        if let Some(d) = deadline {
            if !wait_readable(&stdin, d)? {
                break;
            }
        }
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .context("reading standard input")?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            skip_rest_of_line(&mut input)?;
            batch.then_too_long = true;
            if !send(&mut batch, lineno) {
                return Ok(());
            }
            continue;
        }
        batch.text.extend_from_slice(&buf);
    }
    if !batch.text.is_empty() || batch.then_too_long {
        send(&mut batch, lineno);
    }
    Ok(())
}

/// Resolve the lines of a batch. A panic in a line costs that line
/// (reported as malformed) and the resolver's caches, not the batch or the
/// stream.
fn resolve_batch(resolver: &mut Resolver, b: Batch, pool: &Pool) -> Done {
    let few = memchr::memchr_iter(b'\n', &b.text).take(WARM_LINES + 1).count() <= WARM_LINES;
    resolver.0.set_warm(few);
    let mut d = Done {
        out: pool.get(),
        errors: Vec::new(),
        malformed: 0,
        then_too_long: None,
        flush: b.flush,
    };
    let mut lineno = b.first;
    let mut rest = &b.text[..];
    while !rest.is_empty() {
        let (text, next) = match memchr::memchr(b'\n', rest) {
            Some(nl) => (&rest[..nl], &rest[nl + 1..]),
            None => (rest, &[][..]),
        };
        let (out, errors) = (&mut d.out, &mut d.errors);
        let at = (out.len(), errors.len());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            line(resolver, text, lineno, out, errors)
        })) {
            Ok(n) => d.malformed += n,
            Err(_) => {
                // Whatever the line had written goes; so does the
                // resolver, whose caches may be half updated (the shared
                // DWARF is only ever parsed further, see crate::dwarf).
                d.out.truncate(at.0);
                d.errors.truncate(at.1);
                let _ = writeln!(d.errors, "symres: error: line {lineno}: internal error (a panic, reported above), skipped");
                d.malformed += 1;
                let fresh = resolver.fresh();
                std::mem::forget(std::mem::replace(resolver, fresh));
                resolver.0.set_warm(few);
            }
        }
        lineno += 1;
        rest = next;
    }
    d.then_too_long = b.then_too_long.then_some(lineno);
    pool.put(b.text);
    d
}

/// A batch of this many lines or fewer (a live stream, or a single line)
/// has its lines' DWARF units parsed at once on several threads.
const WARM_LINES: usize = 4;

/// A worker thread: resolve batches until the reader is done (or the
/// writer gone).
fn worker(
    mut resolver: Resolver,
    batches: mpsc::Receiver<Batch>,
    done: mpsc::SyncSender<Done>,
    pool: &Pool,
    writer_gone: &AtomicBool,
) {
    for b in batches {
        if writer_gone.load(Ordering::Relaxed)
            || done.send(resolve_batch(&mut resolver, b, pool)).is_err()
        {
            break;
        }
    }
    // Tearing down every cached table costs ~5% of a large run; the process
    // ends soon and the kernel frees it all at once.
    std::mem::forget(resolver);
}

/// Write the workers' results in input order; the number of malformed
/// lines.
fn write_batches(workers: Vec<mpsc::Receiver<Done>>, pool: &Pool) -> Result<u64> {
    let mut w = Writer::new();
    for k in 0.. {
        // Gone with nothing left: that was the last batch.
        let Ok(d) = workers[k % workers.len()].recv() else { break };
        w.put(d, pool)?;
    }
    w.finish()
}

/// Standard output, and the count of malformed lines.
struct Writer {
    out: BufWriter<io::StdoutLock<'static>>,
    malformed: u64,
}

impl Writer {
    fn new() -> Writer {
        Writer { out: BufWriter::with_capacity(1 << 16, io::stdout().lock()), malformed: 0 }
    }

    /// A batch's lines, then its messages.
    fn put(&mut self, d: Done, pool: &Pool) -> Result<()> {
        let out = &mut self.out;
        out.write_all(&d.out).context("writing to standard output")?;
        pool.put(d.out);
        if !d.errors.is_empty() || d.then_too_long.is_some() {
            // Messages about lines after those already written.
            out.flush().context("writing to standard output")?;
            let mut err = io::stderr().lock();
            let _ = err.write_all(&d.errors);
            if let Some(n) = d.then_too_long {
                let _ = writeln!(
                    err,
                    "symres: error: line {n}: longer than {MAX_LINE_BYTES} bytes, skipped"
                );
            }
        }
        self.malformed += d.malformed + u64::from(d.then_too_long.is_some());
        if d.flush {
            out.flush().context("writing to standard output")?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.out.flush().context("writing to standard output")?;
        Ok(self.malformed)
    }
}

/// `--build-index`: one line per file indexed, errors on stderr.
fn build_indexes(resolver: &mut Resolver, files: &[PathBuf], threads: usize) -> Result<i32> {
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for f in files {
        let t0 = Instant::now();
        match resolver.0.build_index(f, threads) {
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
/// was when it has no frames; returns 1 when it is malformed (and skipped,
/// with a message in `errors`).
fn line(
    resolver: &mut Resolver,
    text: &[u8],
    lineno: u64,
    out: &mut Vec<u8>,
    errors: &mut Vec<u8>,
) -> u64 {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    // Blank lines (JSON's whitespace only) have no frames: written
    // unchanged, like any such line.
    if text.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        out.extend_from_slice(text);
        out.push(b'\n');
        return 0;
    }
    // Appended to `out` in place when resolved (left as it was otherwise).
    match resolver.process_line_into(text, out) {
        Ok(false) => out.extend_from_slice(text),
        Ok(true) => {}
        Err(e) => {
            // Cannot fail: writing to a Vec.
            let _ = writeln!(errors, "symres: error: line {lineno}: {e}");
            return 1;
        }
    }
    out.push(b'\n');
    0
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
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for standard input"),
        }
    }
}
