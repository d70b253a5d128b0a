//! The command line: options, their limits, and what the exit status says.

use clap::{CommandFactory, Parser};

use alloc_probes::ProbeArgs;
use leakd_common::cli::{IntervalArgs, RunArgs, TargetArgs};

use crate::table;

/// Exit status when outstanding allocations pass the filters at the end.
pub const EXIT_LEAKS: i32 = 3;
/// Exit status when nothing was found outstanding but events were lost, so
/// "no leak" cannot be trusted (a CI job gating on 0 must not pass).
pub const EXIT_INCOMPLETE: i32 = 4;
const EXAMPLES: &str = "\
Examples:
  leakd-attach -p 1234                         outstanding allocations of 1234 every 5 s
  leakd-attach -i 10 --top 5 -p 1234 | symres  the 5 fastest-growing stacks, symbolized
  leakd-attach -- ./leaker ten-nine            what a command left allocated at exit
  leakd-attach --combined --sample-bytes 524288 -p 1234
                                               cheap on a busy process: sampled, per-stack totals
  leakd-attach --symbolize -- ./leaker ten-nine with function names, files and lines
  kill -USR1 $(pidof leakd-attach)             report now";

#[derive(Parser, Debug)]
#[command(
    name = "leakd-attach",
    version,
    about = "Report a process's outstanding heap allocations by stack, and which stacks keep growing",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[command(flatten)]
    pub(crate) interval: IntervalArgs,
    #[command(flatten)]
    pub(crate) probe: ProbeArgs,
    #[command(flatten)]
    pub(crate) unwind: leakd_unwind::UnwindArgs,
    /// Print at most N stacks per report (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) top: usize,
    /// Only count blocks allocated at least MS milliseconds before the report.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub(crate) older_than: u64,
    /// Most live blocks tracked at once (sizes the kernel's table, preallocated: about 91 bytes of
    /// kernel memory per block); more are counted as lost (map_full), and so is, rarely, a block
    /// whose part of the table is full before that (-v says the table's size). Refused when it
    /// would take more than half of the memory available.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_allocs: u32,
    /// Home buckets of the kernel's table instead of what --max-allocs sizes (hidden: tests
    /// use a tiny table to fill windows of buckets).
    #[arg(long, value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(1..1 << 30))]
    pub(crate) table_buckets: Option<u32>,
    /// Growth is measured over the last N reports; a stack is "growing" when it rose in each.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least_one)]
    pub(crate) trend: usize,
    /// Report from per-stack totals kept up to date in the kernel (one entry per stack) instead
    /// of reading every live block; no oldest_age_ms, no --older-than.
    #[arg(long, conflicts_with = "older_than")]
    pub(crate) combined: bool,
    /// Track a block of s bytes with probability 1-exp(-s/N) and scale the totals up
    /// (estimates, marked "estimated": true).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLE_BYTES))]
    pub(crate) sample_bytes: Option<u64>,
    /// Resolve stack frames to functions, files and lines in process (as `| symres` would).
    #[arg(long)]
    pub(crate) symbolize: bool,
}

/// Largest --sample-bytes: keeps the kernel's fixed-point products in u64.
const MAX_SAMPLE_BYTES: u64 = 1 << 40;
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn command() -> clap::Command {
    Cli::command()
}

/// The exit status of a run whose final report counted `outstanding`
/// blocks, with `lost_events` events lost.
pub(crate) fn exit_code(outstanding: u64, lost_events: u64) -> i32 {
    if outstanding > 0 {
        return EXIT_LEAKS;
    }
    if lost_events > 0 {
        leakd_common::warn!(
            "{lost_events} event(s) lost (see the \"lost\" lines): the absence of leaks is not certain"
        );
        return EXIT_INCOMPLETE;
    }
    leakd_common::EXIT_OK
}

/// Refuse a --max-allocs whose preallocated table would take more than
/// half of the memory available: the kernel would otherwise allocate it
/// all (9 GB for 100 million) before anything is traced.
pub(crate) fn check_max_allocs(max_allocs: u32) -> leakd_common::Result<()> {
    let Some(available) = mem_available() else { return Ok(()) };
    let need = table::table_bytes(max_allocs);
    if need > available / 2 {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        // The largest that fits: table_bytes grows with max_allocs.
        let (mut lo, mut hi) = (0u32, max_allocs);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if table::table_bytes(mid) <= available / 2 {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return Err(leakd_common::usage_error(format!(
            "--max-allocs {max_allocs} would take ~{:.1} GiB of kernel memory (~{} bytes per \
             block, preallocated), more than half of the {:.1} GiB available: use at most {lo}",
            gib(need),
            need / u64::from(max_allocs),
            gib(available),
        )));
    }
    Ok(())
}

/// MemAvailable of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
