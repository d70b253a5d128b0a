//! execsnoop: every exec() on the system (or of one process tree), with the
//! argv the new program really received, as JSON lines.
//!
//! The BPF side (bpf/execsnoop.bpf.c) explains why argv is read at
//! sched_process_exec rather than at syscall entry; this side only filters by
//! regex (cheaper here than in BPF) and formats.

use aya::maps::{MapData, RingBuf};
use aya::EbpfLoader;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use regex::bytes::Regex;
use serde_json::{json, Value};

use leakd_common::bpf::{self, LostCounter};
use leakd_common::cli::{RunArgs, TargetArgs};
use leakd_common::container::CgroupCache;
use leakd_common::event_loop::{EventLoop, Handler};
use leakd_common::out::Output;
use leakd_common::text::{bytes_to_string, c_string, WallClock};
use leakd_common::{bpf_mirror, bpf_object, bpf_pod, info, Result};

bpf_mirror!(mod sys = "execsnoop");
// bindgen generated execsnoop_event from bpf/execsnoop.h as a #[repr(C)]
// struct of integers and integer arrays only.
bpf_pod!(unsafe sys::execsnoop_event);

static OBJECT: &[u8] = bpf_object!("execsnoop");

const EXAMPLES: &str = "\
Examples:
  execsnoop                          every exec on the system
  execsnoop --failed                 only execs that failed
  execsnoop --comm '^(sh|bash)$'     only execs by shells
  execsnoop -- make -j2              a build and everything it runs
  execsnoop | jq -r '.argv | join(\" \")'";

#[derive(Parser, Debug)]
#[command(
    name = "execsnoop",
    version,
    about = "Trace every exec() with pid, ppid, uid, comm, filename, full argv and return code, as JSON lines",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    filters: ExecFilters,
}

#[derive(Args, Debug)]
struct ExecFilters {
    /// Only execs whose parent process has this PID.
    #[arg(long, value_name = "PID")]
    ppid: Option<u32>,

    /// Only execs by this user ID.
    #[arg(short = 'u', long, value_name = "UID")]
    uid: Option<u32>,

    /// Only execs whose comm (after the exec, or the caller's for a failed one) matches REGEX.
    #[arg(long, value_name = "REGEX")]
    comm: Option<Regex>,

    /// Only execs whose argv, joined with spaces, matches REGEX.
    #[arg(long, value_name = "REGEX")]
    arg: Option<Regex>,

    /// Only execs that failed (ret < 0).
    #[arg(short = 'x', long)]
    failed: bool,

    /// Print at most N arguments per exec (argv_truncated tells when more were cut).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_args: u32,
}

pub fn command() -> clap::Command {
    Cli::command()
}

pub fn run(matches: &ArgMatches) -> Result<i32> {
    let cli = Cli::from_arg_matches(matches)?;
    let target = cli.target.prepare()?;
    let filter = target.filter();

    let uid = cli.filters.uid.unwrap_or(u32::MAX);
    let ppid = cli.filters.ppid.unwrap_or(0);
    let failed = u8::from(cli.filters.failed);
    let mut loader = EbpfLoader::new();
    filter.apply(&mut loader);
    loader.override_global("targ_uid", &uid, true);
    loader.override_global("targ_ppid", &ppid, true);
    loader.override_global("failed_only", &failed, true);
    let mut ebpf = bpf::load(&mut loader, OBJECT)?;
    let btf = bpf::kernel_btf()?;
    bpf::start_following(&mut ebpf, &btf, &filter)?;
    for (prog, tp) in [
        ("enter_execve", "sys_enter_execve"),
        ("enter_execveat", "sys_enter_execveat"),
        ("exit_execve", "sys_exit_execve"),
        ("exit_execveat", "sys_exit_execveat"),
    ] {
        bpf::attach_tracepoint(&mut ebpf, prog, "syscalls", tp)?;
    }
    bpf::attach_btf_tracepoint(&mut ebpf, &btf, "handle_exec", "sched_process_exec")?;

    let mut ring: RingBuf<MapData> = bpf::take_map(&mut ebpf, "events")?;
    let mut lost = LostCounter::new(&mut ebpf)?;
    let mut event_loop = EventLoop::new(cli.run.duration, None)?;
    event_loop.start_target(target, |_| {})?;
    info!("attached, tracing execs (Ctrl-C to stop)");
    let mut out = Output::stdout();
    let mut printer =
        Printer { clock: WallClock::new(), filters: cli.filters, containers: CgroupCache::new() };
    event_loop.run(Some(&mut ring), &mut out, &mut lost, &mut printer)?;
    Ok(0)
}

struct Printer {
    clock: WallClock,
    filters: ExecFilters,
    /// The container of each cgroup id seen: a map lookup per event.
    containers: CgroupCache,
}

impl Handler for Printer {
    fn event(&mut self, data: &[u8], out: &mut Output) -> Result<()> {
        if let Some(mut v) = self.format(data) {
            let cgroup = v["cgroup_id"].as_u64().unwrap_or(0);
            if let (Some(c), Some(obj)) = (self.containers.get(cgroup), v.as_object_mut()) {
                c.enrich(obj);
            }
            out.line(&v)?;
        }
        Ok(())
    }
}

impl Printer {
    fn format(&self, data: &[u8]) -> Option<Value> {
        let e: sys::execsnoop_event = bpf::read_event(data);
        let hdr = std::mem::offset_of!(sys::execsnoop_event, data);
        let tail = data.get(hdr..).unwrap_or(&[]);
        let args_len = (e.args_len as usize).min(tail.len());
        let (args, rest) = tail.split_at(args_len);
        let filename = &rest[..(e.filename_len as usize).min(rest.len())];
        let comm = c_string(&e.comm);
        if self.filters.comm.as_ref().is_some_and(|re| !re.is_match(comm.as_bytes())) {
            return None;
        }
        let (argv, cut) = split_argv(args, self.filters.max_args as usize);
        let truncated = cut || e.args_truncated != 0;
        if let Some(re) = &self.filters.arg {
            if !re.is_match(&argv.join(&b' ')) {
                return None;
            }
        }
        let mut v = json!({
            "type": "exec",
            "ts_ns": self.clock.wall_ns(e.ts_ns),
            "pid": e.pid,
            "tid": e.tid,
            "ppid": e.ppid,
            "uid": e.uid,
            "comm": comm,
            "filename": bytes_to_string(filename),
            "argv": argv.iter().map(|a| bytes_to_string(a)).collect::<Vec<_>>(),
            "argv_truncated": truncated,
            "ret": e.ret,
            "cgroup_id": e.cgroup_id,
        });
        if truncated {
            v["argv_len_bytes"] = json!(e.args_total);
        }
        Some(v)
    }
}

/// Split NUL-separated argv bytes. The final NUL terminates the last argument
/// rather than starting an empty one; empty arguments in between are kept.
/// Returns at most `max` arguments and whether any were dropped.
fn split_argv(bytes: &[u8], max: usize) -> (Vec<&[u8]>, bool) {
    if bytes.is_empty() {
        return (Vec::new(), false);
    }
    let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    let mut args: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    let cut = args.len() > max;
    args.truncate(max);
    (args, cut)
}

#[cfg(test)]
mod tests {
    use super::split_argv;

    #[test]
    fn argv_split_keeps_empty_args_and_drops_final_nul() {
        let (a, cut) = split_argv(b"ls\0\0-l\0", 64);
        assert_eq!(a, vec![&b"ls"[..], b"", b"-l"]);
        assert!(!cut);
        let (a, cut) = split_argv(b"a\0b\0c\0", 2);
        assert_eq!(a, vec![&b"a"[..], b"b"]);
        assert!(cut);
        assert_eq!(split_argv(b"", 4), (vec![], false));
        // Cut in the middle of an argument: the partial piece is kept.
        assert_eq!(split_argv(b"echo\0hel", 4).0, vec![&b"echo"[..], b"hel"]);
    }
}
