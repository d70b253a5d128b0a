//! syscount: exact syscall counts and latency, per syscall, per process or
//! both, as JSON lines.
//!
//! The BPF side (bpf/syscount.bpf.c) explains why the counters are cheap to
//! keep; this side chooses which BPF code survives the verifier (every option
//! is a load-time constant), reads the counters, and turns differences
//! between successive reads into rows, so the kernel never has to clear a
//! counter while it is being written.

mod report;

use std::str::FromStr;

use aya::EbpfLoader;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

use leakd_common::bpf::{self, LostCounter};
use leakd_common::cli::{IntervalArgs, RunArgs, TargetArgs};
use leakd_common::event_loop::{End, EventLoop};
use leakd_common::out::Output;
use leakd_common::{bpf_mirror, bpf_object, bpf_pod, info, Result};

use report::{Grouping, Reporter};

bpf_mirror!(mod sys = "syscount");
// bindgen generates these from bpf/syscount.h as #[repr(C)] structs of
// integers and integer arrays only, with no implicit padding.
bpf_pod!(unsafe sys::syscount_val, sys::syscount_key, sys::syscount_hist, sys::syscount_comm);

static OBJECT: &[u8] = bpf_object!("syscount");

const EXAMPLES: &str = "\
Examples:
  syscount                           top 10 syscalls on the system until Ctrl-C
  syscount -d 5 -L                   5 seconds, with time spent per syscall
  syscount -P -i 1                   top processes, every second
  syscount -M -- make -j2            process x syscall counts of a build
  syscount -x -- ./configure         failed syscalls of a command, by errno
  syscount -e ENOENT -P              who gets ENOENT, and from what
  syscount -s read,write --hist -p 1234   read/write latency histograms
  syscount --text -L -d 2            a table instead of JSON lines";

#[derive(Parser, Debug)]
#[command(
    name = "syscount",
    version,
    about = "Count syscalls per syscall and/or per process, with latency and errors, as JSON lines",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    interval: IntervalArgs,
    #[command(flatten)]
    opts: CountArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct CountArgs {
    /// Count per process (pid and comm) instead of per syscall.
    #[arg(short = 'P', long)]
    pub process: bool,

    /// Count per process and syscall: one row per (process, syscall) pair.
    #[arg(short = 'M', long)]
    pub matrix: bool,

    /// Also measure the time spent in each syscall (total and average, ns); rows are sorted by it.
    #[arg(short = 'L', long)]
    pub latency: bool,

    /// Print a log2 histogram of syscall latency per syscall.
    #[arg(long)]
    pub hist: bool,

    /// Count only syscalls that returned an error; rows are split by errno.
    #[arg(short = 'x', long)]
    pub failed: bool,

    /// Count only syscalls that failed with this error (a name like ENOENT, or a number); implies -x.
    #[arg(short = 'e', long = "errno", value_name = "ERRNO", value_parser = parse_errno)]
    pub errno: Option<u32>,

    /// Print the N rows with the highest counts (or latency with -L); 0 prints every row.
    #[arg(short = 'T', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Count only these syscalls (names or numbers, comma-separated or repeated).
    #[arg(short = 's', long = "syscall", value_name = "NAME", value_delimiter = ',', value_parser = parse_syscall)]
    pub syscalls: Vec<u32>,

    /// Count only tasks whose comm is exactly NAME (the kernel keeps the first 15 bytes).
    #[arg(long, value_name = "NAME", value_parser = comm_bytes)]
    pub comm: Option<[u8; 16]>,

    /// Print a human-readable table instead of JSON lines.
    #[arg(long)]
    pub text: bool,

    /// Rows (by process, syscall and error) the kernel keeps at once with -P, -M, -x or
    /// -e; calls that would need more are reported lost (map_full). The rows of a
    /// process that has exited are dropped once reported.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rows: u32,
}

/// Largest errno the kernel returns (its -4095..-1 error convention).
const MAX_ERRNO: u32 = 4095;

/// `ENOENT`, `enoent` or `2`.
fn parse_errno(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=MAX_ERRNO).contains(&n) {
            Ok(n)
        } else {
            Err(format!("errno {n} is out of range 1..4095"))
        };
    }
    (1..=MAX_ERRNO)
        .find(|&n| report::errno_name(n).is_some_and(|name| name.eq_ignore_ascii_case(s)))
        .ok_or_else(|| format!("unknown errno name '{s}' (try a name like ENOENT, or a number)"))
}

/// A syscall name for this architecture, or a number.
fn parse_syscall(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if n < sys::SYSCOUNT_NR_MAX {
            Ok(n)
        } else {
            Err(format!("syscall number {n} is out of range 0..{}", sys::SYSCOUNT_NR_MAX - 1))
        };
    }
    let n = syscalls::Sysno::from_str(s)
        .map(|n| n.id() as u32)
        .map_err(|_| format!("unknown syscall '{s}' on {}", std::env::consts::ARCH))?;
    if n >= sys::SYSCOUNT_NR_MAX {
        return Err(format!(
            "syscall '{s}' (number {n}) is beyond the {} counted one by one",
            sys::SYSCOUNT_NR_MAX
        ));
    }
    Ok(n)
}

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let mut opts = cli.opts.clone();
    if opts.errno.is_some() {
        opts.failed = true;
    }
    if opts.matrix {
        opts.process = true;
    }
    let comm = opts.comm;
    let target = cli.target.prepare()?;
    let filter = target.filter();

    let grouping = Grouping {
        process: opts.process,
        syscall: !opts.process || opts.matrix,
        errno: opts.failed,
    };
    let keyed = grouping.process || grouping.errno;
    let timed = opts.latency || opts.hist;
    let mut wanted = [0u8; sys::SYSCOUNT_NR_SLOTS as usize];
    for &nr in &opts.syscalls {
        if let Some(w) = wanted.get_mut(nr as usize) {
            *w = 1;
        }
    }
    // The loader borrows every global until load, so they live here.
    let g_keyed = u8::from(keyed);
    let g_key_tgid = u8::from(grouping.process);
    let g_key_nr = u8::from(grouping.syscall);
    let g_at_exit = u8::from(opts.failed);
    let g_errno = opts.errno.unwrap_or(0);
    let g_timed = u8::from(timed);
    let g_hist = u8::from(opts.hist);
    let g_filter_comm = u8::from(comm.is_some());
    let g_comm = comm.unwrap_or([0u8; 16]);
    let g_filter_sys = u8::from(!opts.syscalls.is_empty());

    let mut loader = EbpfLoader::new();
    filter.apply(&mut loader);
    loader
        .override_global("keyed", &g_keyed, true)
        .override_global("key_tgid", &g_key_tgid, true)
        .override_global("key_nr", &g_key_nr, true)
        .override_global("count_at_exit", &g_at_exit, true)
        .override_global("targ_errno", &g_errno, true)
        .override_global("timed", &g_timed, true)
        .override_global("want_hist", &g_hist, true)
        .override_global("filter_comm", &g_filter_comm, true)
        .override_global("targ_comm", &g_comm, true)
        .override_global("filter_syscalls", &g_filter_sys, true)
        .override_global("syscall_wanted", &wanted, true);
    // Maps an option does not use shrink to one entry.
    loader.map_max_entries("keyed_counts", if keyed { opts.max_rows } else { 1 });
    if !opts.hist {
        loader.map_max_entries("hists", 1);
    }
    loader.map_max_entries("comms", if grouping.process { opts.max_rows } else { 1 });
    let mut ebpf = bpf::load(&mut loader, OBJECT)?;
    let btf = bpf::kernel_btf()?;
    bpf::start_following(&mut ebpf, &btf, &filter)?;
    if grouping.process {
        bpf::attach_btf_tracepoint(&mut ebpf, &btf, "syscount_exec", "sched_process_exec")?;
    }
    // Exit first: a call whose entry is seen must have its exit seen too.
    if timed || opts.failed {
        bpf::attach_btf_tracepoint(&mut ebpf, &btf, "sys_exit", "sys_exit")?;
    }
    bpf::attach_btf_tracepoint(&mut ebpf, &btf, "sys_enter", "sys_enter")?;

    let mut reporter = Reporter::new(&mut ebpf, grouping, &opts)?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, cli.interval.interval)?;
    event_loop.start_target(target, |_| {})?;
    info!("attached, counting syscalls (Ctrl-C to stop)");
    let mut out = Output::stdout();
    out.set_plain(opts.text);
    let end = event_loop.run(None, &mut out, &mut lost, &mut reporter)?;
    if end != End::OutputClosed {
        // The rest of the last interval, or the totals of the whole run.
        reporter.report(&mut out)?;
        lost.report(&mut out)?;
        out.flush()?;
    }
    Ok(0)
}

/// The comm filter as the kernel stores comm: at most 15 bytes and a NUL.
fn comm_bytes(name: &str) -> Result<[u8; 16], String> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&0) {
        return Err(format!("'{name}' is not a process name"));
    }
    let mut c = [0u8; 16];
    let n = b.len().min(15);
    c[..n].copy_from_slice(&b[..n]);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_by_name_or_number() {
        assert_eq!(parse_errno("ENOENT"), Ok(2));
        assert_eq!(parse_errno("ebadf"), Ok(9));
        assert_eq!(parse_errno("13"), Ok(13));
        assert!(parse_errno("ENOSUCHTHING").is_err());
        assert!(parse_errno("0").is_err());
        assert!(parse_errno("4096").is_err());
    }

    #[test]
    fn syscall_by_name_or_number() {
        let getppid = syscalls::Sysno::getppid.id() as u32;
        assert_eq!(parse_syscall("getppid"), Ok(getppid));
        assert_eq!(parse_syscall("7"), Ok(7));
        assert!(parse_syscall("no_such_call").is_err());
        assert!(parse_syscall("1024").is_err());
    }

    #[test]
    fn comm_is_cut_like_the_kernel_does() {
        assert_eq!(&comm_bytes("sh").unwrap()[..3], b"sh\0");
        let long = comm_bytes("a-very-long-process-name").unwrap();
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
        assert!(comm_bytes("").is_err());
    }
}
