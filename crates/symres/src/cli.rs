//! symres's command line: the options, and what a run does with them.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use leakd_common::cli::RunArgs;
use leakd_common::{Context, Result};

use crate::pipeline;
use leakd_symbolize::{log, Options, Resolver, MAX_OPEN_MODULES};

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

    /// Where indexes and the cache of answers are written and looked for [default:
    /// $XDG_CACHE_HOME/leakd/symres, else ~/.cache/leakd/symres].
    #[arg(long = "index-dir", value_name = "DIR")]
    index_dir: Option<PathBuf>,

    /// Do not read or write the cache of answers. By default, what a run answers for a
    /// module with a build id is kept in the index directory when its input ends
    /// (<build-id>.answers), and later runs answer those addresses from it.
    #[arg(long = "no-cache")]
    no_cache: bool,

    /// Keep the cache files under SIZE bytes (suffixes K, M, G: powers of 1024), those
    /// used longest ago removed first [default: 256M].
    #[arg(long = "cache-size", value_name = "SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Keep at most N modules (ELF files) open in each resolving thread; the one used longest
    /// ago is closed to make room, and loaded again when a frame needs it. Bounds symres's
    /// memory over a stream naming many files.
    #[arg(long = "max-modules", value_name = "N", default_value_t = MAX_OPEN_MODULES,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_modules: u32,

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

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let threads = cli.threads.map_or_else(default_threads, usize::from);
    let opts = Options {
        debug_dirs: cli.debug_dirs.clone(),
        inlined: !cli.no_inlined,
        index_dir: cli.index_dir.clone(),
        warm_threads: threads,
        cache: !cli.no_cache && cli.build_index.is_empty(),
        cache_size: cli.cache_size.unwrap_or(leakd_symbolize::DEFAULT_CACHE_SIZE),
        max_modules: cli.max_modules as usize,
    };
    if !cli.build_index.is_empty() {
        return build_indexes(&mut Resolver::new(opts), &cli.build_index, threads);
    }
    let deadline = cli.run.duration.map(|d| Instant::now() + d);
    let malformed = pipeline::filter(Resolver::new(opts), threads, deadline)?;
    if malformed.lines > 0 {
        let n = malformed.lines;
        eprintln!("{}", log::error_line(format_args!("{n} malformed line(s) skipped")));
    }
    if malformed.frames > 0 {
        let n = malformed.frames;
        eprintln!("{}", log::error_line(format_args!("{n} malformed frame(s) left unresolved")));
    }
    Ok(i32::from(malformed != pipeline::Malformed::default()))
}

/// A size in bytes: a number, with K, M or G for powers of 1024.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("not a size: {s:?} (a number of bytes, with K, M or G)"))
}

/// One resolving thread per CPU symres may run on, at most 4: each thread
/// keeps its own caches of answers and symbol tables, so memory grows with
/// the count.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `--build-index`: one line per file indexed, errors on stderr.
fn build_indexes(resolver: &mut Resolver, files: &[PathBuf], threads: usize) -> Result<i32> {
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for f in files {
        let t0 = Instant::now();
        match resolver.build_index(f, threads) {
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
                eprintln!("{}", log::error_line(format_args!("{}: {e}", f.display())));
                failed += 1;
            }
        }
    }
    Ok(i32::from(failed > 0))
}
