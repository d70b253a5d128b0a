//! The filter: stdin to stdout, line by line, on one or more threads.
//!
//! It must never hold back a live stream (output is flushed whenever the
//! next read could block) and never give up on a whole stream because of
//! one bad line: a line costs itself at most, even when resolving it
//! panics.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use leakd_common::lines::{read_line_bounded, Bounded, MAX_LINE_BYTES};
use leakd_common::{Context, Result};

use leakd_symbolize::log;
use leakd_symbolize::Resolver;

use crate::background;

/// What was wrong with the input (each said on stderr as it came).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    /// Lines skipped (not JSON, not an object, a bad pid, too long).
    pub lines: u64,
    /// Frames left unresolved (`"reason":"malformed"`) in lines written.
    pub frames: u64,
}

impl std::ops::AddAssign for Malformed {
    fn add_assign(&mut self, o: Malformed) {
        self.lines += o.lines;
        self.frames += o.frames;
    }
}

/// Resolve standard input to standard output with `threads` threads (1:
/// this one) until end of input or `deadline`; returns what was malformed.
pub fn filter(first: Resolver, threads: usize, deadline: Option<Instant>) -> Result<Malformed> {
    let pool = &Pool::default();
    if threads > 1 {
        crate::arena::prepare();
        let mut first = first;
        let r = run_threads(threads, &first, deadline, pool);
        // The workers are done (every thread but this one has ended): what
        // they learned is handed over.
        if let Some(w) = first.take_cache_write() {
            background::write_cache(w);
        }
        // As below.
        std::mem::forget(first);
        return r;
    }
    // One thread does it all: no threads to start (a single line's
    // wait), no handing over.
    let mut resolver = first;
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
    let r = match io_error {
        Some(e) => Err(e),
        None => writer.finish(),
    };
    // After the last line is out: the cache costs the output nothing (and,
    // written by a child, the exit nothing either).
    if let Some(w) = resolver.take_cache_write() {
        background::write_cache(w);
    }
    // Tearing down every cached table costs ~5% of a large run; the
    // process ends now and the kernel frees it all at once.
    std::mem::forget(resolver);
    r
}

/// Resolve with `threads` workers: the reader (this thread) sends batches
/// to them in turn (batch k to worker k mod n, so the writer knows whose
/// result comes next); a writer thread writes the results in input order.
/// Each worker's resolver is a `fresh` one of `first`'s. Returns what was
/// malformed.
fn run_threads(
    threads: usize,
    first: &Resolver,
    deadline: Option<Instant>,
    pool: &Pool,
) -> Result<Malformed> {
    // Set when the writer stops (a closed pipe downstream): the others
    // stop too.
    let gone = &AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<Malformed> {
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

/// The largest buffer kept for another batch: a batch's output is
/// reserved at `OUT_RATIO` times its input up front.
const MAX_POOLED: usize = 8 * BATCH_BYTES;

/// A batch's output, reserved up front, by its input: answers make a
/// frame two or three times longer (a buffer grown line by line was copied
/// again and again, and a new one mapped for every batch: 8% of the
/// instructions of a second run).
const OUT_RATIO: usize = 3;

/// Buffers passed around again: a fresh one for every batch cost page
/// faults (large allocations are mapped anew each time).
#[derive(Default)]
struct Pool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    fn get(&self) -> Vec<u8> {
        self.free.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default()
    }

    fn put(&self, mut b: Vec<u8>) {
        // Not one grown by a huge line (a batch's output, made for a few
        // times its input, is kept).
        if b.capacity() > MAX_POOLED {
            return;
        }
        b.clear();
        if let Ok(mut p) = self.free.lock() {
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
    malformed: Malformed,
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
        match read_line_bounded(&mut input, &mut buf, MAX_LINE_BYTES)
            .context("reading standard input")?
        {
            Bounded::Eof => break,
            Bounded::Line => lineno += 1,
            Bounded::TooLong => {
                lineno += 1;
                batch.then_too_long = true;
                if !send(&mut batch, lineno) {
                    return Ok(());
                }
                continue;
            }
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
    resolver.set_warm(few);
    // Answers make lines two to three times longer: room for them up
    // front (growing by doubling copied megabytes per batch).
    let room = b.text.len().saturating_mul(3);
    let mut out = pool.get();
    if out.capacity() < room {
        out = Vec::with_capacity(room);
    }
    let mut d = Done {
        out,
        errors: Vec::new(),
        malformed: Malformed::default(),
        then_too_long: None,
        flush: b.flush,
    };
    d.out.reserve((b.text.len() * OUT_RATIO).min(MAX_POOLED));
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
                // DWARF is only ever parsed further, see leakd_symbolize's dwarf module).
                d.out.truncate(at.0);
                d.errors.truncate(at.1);
                let _ = writeln!(
                    d.errors,
                    "{}",
                    log::error_line(format_args!(
                        "line {lineno}: internal error (a panic, reported above), skipped"
                    ))
                );
                d.malformed.lines += 1;
                let fresh = resolver.fresh();
                std::mem::forget(std::mem::replace(resolver, fresh));
                resolver.set_warm(few);
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
    crate::arena::grow_thread_heap();
    for b in batches {
        if writer_gone.load(Ordering::Relaxed)
            || done.send(resolve_batch(&mut resolver, b, pool)).is_err()
        {
            break;
        }
    }
    resolver.finish_cache();
    // Tearing down every cached table costs ~5% of a large run; the process
    // ends soon and the kernel frees it all at once.
    std::mem::forget(resolver);
}

/// Write the workers' results in input order; what was malformed.
fn write_batches(workers: Vec<mpsc::Receiver<Done>>, pool: &Pool) -> Result<Malformed> {
    let mut w = Writer::new();
    for k in 0.. {
        // Gone with nothing left: that was the last batch.
        let Ok(d) = workers[k % workers.len()].recv() else { break };
        w.put(d, pool)?;
    }
    w.finish()
}

/// Standard output, and what was malformed.
struct Writer {
    out: BufWriter<io::StdoutLock<'static>>,
    malformed: Malformed,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            out: BufWriter::with_capacity(1 << 16, io::stdout().lock()),
            malformed: Malformed::default(),
        }
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
                    "{}",
                    log::error_line(format_args!(
                        "line {n}: longer than {MAX_LINE_BYTES} bytes, skipped"
                    ))
                );
            }
        }
        self.malformed += d.malformed;
        self.malformed.lines += u64::from(d.then_too_long.is_some());
        if d.flush {
            out.flush().context("writing to standard output")?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Malformed> {
        self.out.flush().context("writing to standard output")?;
        Ok(self.malformed)
    }
}

/// Write input line `lineno` (without its newline) resolved, or as it
/// was when it has no frames; says on stderr (`errors`) what was malformed:
/// the line (skipped) or some of its frames (left unresolved).
fn line(
    resolver: &mut Resolver,
    text: &[u8],
    lineno: u64,
    out: &mut Vec<u8>,
    errors: &mut Vec<u8>,
) -> Malformed {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    // Blank lines (JSON's whitespace only) have no frames: written
    // unchanged, like any such line.
    if text.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        out.extend_from_slice(text);
        out.push(b'\n');
        return Malformed::default();
    }
    // Appended to `out` in place when resolved (left as it was otherwise).
    // Writing to a Vec cannot fail.
    match resolver.process_line_into(text, out) {
        Ok(false) => out.extend_from_slice(text),
        Ok(true) => {}
        Err(e) => {
            let _ = writeln!(errors, "{}", log::error_line(format_args!("line {lineno}: {e}")));
            return Malformed { lines: 1, frames: 0 };
        }
    }
    out.push(b'\n');
    let bad = resolver.bad_frames();
    for b in bad {
        let _ = writeln!(
            errors,
            "{}",
            log::error_line(format_args!("line {lineno}: {b} (frame left unresolved)"))
        );
    }
    Malformed { lines: 0, frames: bad.len() as u64 }
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
