//! Loading and attaching BPF programs with errors a user can act on.
//!
//! aya's errors are precise but speak in syscalls; a user who forgot `sudo`
//! should read "needs root", and a verifier rejection should say which
//! program failed, with the kernel's log one `-v` away.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, ProgramError, TracePoint};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};

use crate::out::Output;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Check what loading BPF needs before touching the kernel: privileges and a
/// mounted tracefs (tracepoint ids are read from it).
pub fn preflight() -> Result<()> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!("permission denied: loading eBPF programs needs root (or the CAP_BPF and CAP_PERFMON capabilities)");
    }
    ensure_tracefs()
}

fn effective_caps() -> Option<u64> {
    u64::from_str_radix(&crate::procmaps::status_field("self", "CapEff")?, 16).ok()
}

fn ensure_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        match std::fs::metadata(Path::new(dir).join("events")) {
            Ok(m) if m.is_dir() => return Ok(()),
            // Mounted, but (mode 0700) only root may look: capabilities
            // alone are not enough to read tracepoint ids.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                bail!("permission denied reading {dir}: tracepoints need root (or read access to tracefs)")
            }
            _ => {}
        }
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it on {TRACEFS} failed"))?;
    Ok(())
}

/// Values for the BPF side's shared filter globals (see bpf/leakd.bpf.h).
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub tgid: u32,
    follow_children: u8,
    pub cgroup_id: u64,
    /// Depth of the cgroup below the hierarchy's root: its whole subtree
    /// passes the filter.
    pub cgroup_level: u32,
    self_tgid: u32,
}

impl Filter {
    /// `tgid` 0 means every process; `follow_children` also traces the
    /// descendants of `tgid` (for a launched command).
    pub fn new(tgid: u32, follow_children: bool, cgroup_id: u64) -> Self {
        Filter {
            tgid,
            follow_children: u8::from(follow_children),
            cgroup_id,
            cgroup_level: 0,
            self_tgid: std::process::id(),
        }
    }

    /// The level of the filter's cgroup (see [`crate::cli::cgroup_level`]).
    pub fn with_cgroup_level(mut self, level: u32) -> Self {
        self.cgroup_level = level;
        self
    }

    pub fn follows_children(&self) -> bool {
        self.follow_children != 0
    }

    /// Set the globals; the loader borrows them until it loads.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global("targ_tgid", &self.tgid, true);
        loader.override_global("follow_children", &self.follow_children, true);
        loader.override_global("targ_cgroup_id", &self.cgroup_id, true);
        loader.override_global("targ_cgroup_level", &self.cgroup_level, true);
        loader.override_global("self_tgid", &self.self_tgid, true);
    }
}

/// Load an object with the given loader, translating the common failures.
pub fn load(loader: &mut EbpfLoader<'_>, object: &[u8]) -> Result<Ebpf> {
    // Task-local storage maps are created by aya but have no user-space type
    // in 0.14; only the BPF side touches them.
    loader.allow_unsupported_maps();
    loader.load(object).map_err(|e| match e {
        EbpfError::MapError(ref m) if is_eperm_source(m) => {
            anyhow!("permission denied creating BPF maps: needs root (or CAP_BPF and CAP_PERFMON)")
        }
        other => anyhow::Error::new(other).context("loading the BPF object"),
    })
}

fn is_eperm_source(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Turn a program load error into a message; the verifier log is printed to
/// stderr with `-v`, and otherwise hinted at.
pub fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            if crate::log::enabled(1) {
                eprintln!(
                    "--- verifier log for {name} ---\n{verifier_log}\n--- end of verifier log ---"
                );
                anyhow!("the kernel's BPF verifier rejected program {name}: {io_error}")
            } else {
                anyhow!("the kernel's BPF verifier rejected program {name}: {io_error} (rerun with -v for the verifier log)")
            }
        }
        other => anyhow::Error::new(other).context(format!("loading BPF program {name}")),
    }
}

/// Program `name` of a loaded object, as the program type `T` it is (a
/// tracepoint, a uprobe...).
pub fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("BPF program {name} missing from object"))?;
    p.try_into().with_context(|| format!("BPF program {name}"))
}

/// Load and attach a classic tracepoint program (`tracepoint/<category>/<name>`).
pub fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = program_mut(ebpf, prog)?;
    p.load().map_err(|e| load_error(prog, e))?;
    p.attach(category, name)
        .with_context(|| format!("attaching {prog} to tracepoint {category}:{name}"))?;
    Ok(())
}

/// Load and attach a BTF-typed tracepoint program (`tp_btf/<name>`).
pub fn attach_btf_tracepoint(ebpf: &mut Ebpf, btf: &Btf, prog: &str, name: &str) -> Result<()> {
    let p: &mut BtfTracePoint = program_mut(ebpf, prog)?;
    p.load(name, btf).map_err(|e| load_error(prog, e))?;
    p.attach().with_context(|| format!("attaching {prog} to tp_btf/{name}"))?;
    Ok(())
}

/// Kernel BTF, needed by tp_btf programs.
pub fn kernel_btf() -> Result<Btf> {
    Btf::from_sys_fs().context("reading kernel BTF from /sys/kernel/btf/vmlinux")
}

/// When following a launched command and its children: seed the tracked set
/// with the command's PID and attach the fork/exit programs that maintain it.
pub fn start_following(ebpf: &mut Ebpf, btf: &Btf, filter: &Filter) -> Result<()> {
    if !filter.follows_children() {
        return Ok(());
    }
    let mut tracked: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
        ebpf.map_mut("leakd_tracked")
            .ok_or_else(|| anyhow!("map leakd_tracked missing from object"))?,
    )?;
    tracked.insert(filter.tgid, 1, 0).context("seeding the tracked-process map")?;
    attach_btf_tracepoint(ebpf, btf, "leakd_fork", "sched_process_fork")?;
    attach_btf_tracepoint(ebpf, btf, "leakd_exit", "sched_process_exit")?;
    Ok(())
}

/// Read every entry of a BPF hash map in batches (`BPF_MAP_LOOKUP_BATCH`),
/// handing each batch to `f`: one system call per `batch` entries instead of
/// two per entry (get-next-key, lookup), and no copy of the whole map, so a
/// reader that folds each batch into a summary needs memory bounded by the
/// summary. Entries are read bucket by bucket: one inserted or deleted
/// during the walk may be seen or not, but none is seen twice.
pub fn for_each_batch<K, V>(
    map: &MapData,
    batch: usize,
    mut f: impl FnMut(&[K], &[V]) -> Result<()>,
) -> Result<()>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut cap = batch.max(1);
    let mut keys = vec![K::default(); cap];
    let mut values = vec![V::default(); cap];
    // A hash map's batch token is a bucket index.
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { std::ptr::addr_of!(token_in) as u64 },
            out_batch: std::ptr::addr_of_mut!(token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: cap as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr is a valid `union bpf_attr` prefix for this command;
        // the kernel writes at most `count` keys and values into buffers of
        // `cap` elements of the map's key and value types, and one u32 into
        // token_out; every pointer outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // ENOSPC: one bucket holds more than `count` entries; nothing
            // was read: retry the same bucket with room for them.
            Some(libc::ENOSPC) => {
                cap *= 2;
                keys.resize(cap, K::default());
                values.resize(cap, V::default());
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => {
                return Err(err.map(anyhow::Error::new).unwrap_or_else(|| anyhow!("batch")))
                    .context("reading a BPF map in batches")
            }
        }
        let n = (attr.count as usize).min(cap);
        f(&keys[..n], &values[..n])?;
        // ENOENT: that was the last bucket.
        if err.is_some() {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

/// Take map `name` out of a loaded object, as the map type `T` it is used
/// as (a ring buffer, a hash map...).
pub fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map =
        ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the BPF object"))?;
    T::try_from(map).with_context(|| format!("opening map {name}"))
}

/// bpf/leakd.h, mirrored by bindgen (crates/common/build.rs).
#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/leakd.rs"));
}

const N_LOST: usize = sys::leakd_lost_reason_LEAKD_LOST_MAX as usize;

/// The name printed for each slot of `enum leakd_lost_reason`, placed by
/// the enum's own values (an unnamed slot fails the build).
const LOST_REASONS: [&str; N_LOST] = {
    let mut r = [""; N_LOST];
    r[sys::leakd_lost_reason_LEAKD_LOST_RINGBUF as usize] = "ringbuf_full";
    r[sys::leakd_lost_reason_LEAKD_LOST_STACK as usize] = "stack_id_failed";
    r[sys::leakd_lost_reason_LEAKD_LOST_UNMATCHED as usize] = "unmatched_probe";
    r[sys::leakd_lost_reason_LEAKD_LOST_MAP_FULL as usize] = "map_full";
    assert!(every_slot_named(&r), "a leakd_lost_reason has no name");
    r
};

/// Whether a table of names placed by a BPF enum's values left no slot
/// empty: for const tables, so an enum value added in C without a name in
/// Rust fails the build.
pub const fn every_slot_named(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        if names[i].is_empty() {
            return false;
        }
        i += 1;
    }
    true
}

/// Reads the per-CPU lost counters and prints a `{"type":"lost",...}` line for
/// every reason whose count grew since the last report.
pub struct LostCounter {
    map: PerCpuArray<MapData, u64>,
    reported: [u64; N_LOST],
}

impl LostCounter {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(LostCounter { map: take_map(ebpf, "leakd_lost")?, reported: [0; N_LOST] })
    }

    /// Events lost outright, as far as the "lost" lines printed so far say,
    /// so that a verdict drawn from it agrees with the output (call
    /// [`report`](Self::report) first): every reason but a failed stack
    /// id, after which the event itself still arrives (grouped by caller).
    pub fn events_lost(&self) -> u64 {
        let stack = sys::leakd_lost_reason_LEAKD_LOST_STACK as usize;
        self.reported.iter().enumerate().filter(|&(i, _)| i != stack).map(|(_, &n)| n).sum()
    }

    /// Current totals per reason.
    pub fn totals(&self) -> Result<[u64; N_LOST]> {
        let mut t = [0u64; N_LOST];
        for (i, slot) in t.iter_mut().enumerate() {
            let values = self.map.get(&(i as u32), 0).context("reading lost-event counters")?;
            *slot = values.iter().sum();
        }
        Ok(t)
    }

    pub fn report(&mut self, out: &mut Output) -> Result<()> {
        let totals = self.totals()?;
        for (i, &total) in totals.iter().enumerate() {
            if total > self.reported[i] {
                let (reason, count) = (LOST_REASONS[i], total - self.reported[i]);
                if out.is_plain() {
                    out.text(&format!("lost: {count} events ({reason}), {total} in all\n"))?;
                } else {
                    out.line(&serde_json::json!({ "type": "lost", "reason": reason, "count": count, "total": total }))?;
                }
                self.reported[i] = total;
            }
        }
        Ok(())
    }
}

/// Marker for plain-old-data event structs generated by bindgen from
/// `bpf/<tool>.h`.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integers and arrays of
/// integers, so that every bit pattern is a valid value.
pub unsafe trait Pod: Copy {}

/// Read a `T` from the start of a ring-buffer record. Records may be shorter
/// than `T` (variable-length tails are not sent); the missing tail is zero.
pub fn read_event<T: Pod + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: T is Pod (any bit pattern is valid), `v` is a valid T of
    // size_of::<T>() bytes and we copy at most that many bytes into it from a
    // slice of at least `n` bytes; the regions cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}
