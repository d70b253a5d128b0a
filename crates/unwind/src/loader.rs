//! Loading the tables of a target's files into the walker's maps, at
//! attach and whenever the walker meets a file it has no table for.
//!
//! Why both: at attach the files a process maps are known (its maps, or
//! for a launched command its executable and the libraries it needs), and
//! loading them before it runs gives complete stacks from the first call.
//! A library dlopen'ed later is first seen by the walker itself, which
//! records the file in `unwind_unknown`; [`Unwinder::poll`] (called from
//! the tool's event loop) builds its table then. Until it is loaded, walks
//! through it fall back to frame pointers.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::{Ebpf, EbpfLoader};
use clap::{Args, ValueEnum};
use goblin::elf::Elf;
use leakd_common::bpf::take_map;
use leakd_common::cli::TargetArgs;
use leakd_common::target::Target;
use leakd_common::{debug, info, launch, procmaps, warn, Result};

use crate::sys;
use crate::table::{build_file, Row};

// SAFETY: bindgen generated these from bpf/unwind.h as #[repr(C)] structs
// of integers only, with explicit padding (u32 + u16 + 2 x u8; u64 + 2 x
// u32; 2 x u32; key + 2 x u64 + 2 x u32): every bit pattern is valid.
unsafe impl aya::Pod for sys::unwind_row {}
// SAFETY: see unwind_row.
unsafe impl aya::Pod for sys::unwind_module_key {}
// SAFETY: see unwind_row.
unsafe impl aya::Pod for sys::unwind_module {}
// SAFETY: see unwind_row.
unsafe impl aya::Pod for sys::unwind_new_module {}

/// How user stacks are walked.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// DWARF CFI where a file has it, frame pointers where it has none.
    #[default]
    Auto,
    /// Frame pointers only (the kernel's walk).
    Fp,
    /// DWARF CFI only: a walk stops where there is none.
    Dwarf,
}

/// The --unwind option, flattened into the tools that print stacks.
#[derive(Args, Debug, Clone, Default)]
pub struct UnwindArgs {
    /// How user stacks are walked: auto (DWARF call-frame information where a file has it, frame
    /// pointers elsewhere), fp (frame pointers only), dwarf (call-frame information only).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Mode::Auto)]
    pub unwind: Mode,
}

/// How often a tool looks for files the walker met without a table.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Rows the walker's array holds in all (16 MiB); a file that does not
/// fit is walked with frame pointers.
pub const ROWS_CAPACITY: u32 = 2 << 20;

impl Mode {
    /// The value of the BPF global `unwind_mode`.
    pub fn bpf_value(self) -> u8 {
        match self {
            Mode::Fp => 0,
            Mode::Auto => 1,
            Mode::Dwarf => 2,
        }
    }
}

/// Size the walker's maps before load: next to nothing with --unwind fp
/// (the maps exist in the object either way). `mode` must outlive the
/// loader (it is the global's value).
pub fn configure<'a>(loader: &mut EbpfLoader<'a>, mode: &'a u8) {
    loader.override_global("unwind_mode", mode, true);
    if *mode == Mode::Fp.bpf_value() {
        for m in ["unwind_rows", "unwind_modules", "unwind_unknown", "unwind_cache"] {
            loader.map_max_entries(m, 1);
        }
    } else {
        loader.map_max_entries("unwind_rows", ROWS_CAPACITY);
    }
}

/// The kernel's encoding of a device number (MKDEV), as bpf reads s_dev.
fn kernel_dev(major: u64, minor: u64) -> u32 {
    ((major << 20) | (minor & 0xfffff)) as u32
}

/// What was loaded for one file, for -v.
struct Loaded {
    path: PathBuf,
    rows: u32,
}

pub struct Unwinder {
    rows: Array<MapData, Row>,
    modules: BpfHashMap<MapData, sys::unwind_module_key, sys::unwind_module>,
    unknown: BpfHashMap<MapData, sys::unwind_module_key, sys::unwind_new_module>,
    stops: PerCpuArray<MapData, u64>,
    next: u32,
    loaded: HashMap<sys::unwind_module_key, Loaded>,
}

/// Names of `enum unwind_stop`, by value.
pub const STOP_NAMES: [&str; sys::unwind_stop_UNWIND_STOP_MAX as usize] = [
    "end",
    "depth",
    "no_row",
    "anonymous",
    "unsupported",
    "read_fault",
    "no_mapping",
    "interrupted",
];

impl Unwinder {
    /// Take the walker's maps from a loaded object, and load the tables of
    /// the target's files: a `-p` process's, a launched command's (still
    /// held: before it runs), or those of every process already in the
    /// cgroup of `--cgroup`/`--container`/`--pod`. `None` with --unwind fp.
    pub fn start(
        ebpf: &mut Ebpf,
        mode: Mode,
        args: &TargetArgs,
        target: &Target,
    ) -> Result<Option<Self>> {
        let Some(mut u) = Self::new(ebpf, mode)? else { return Ok(None) };
        if let Some(pid) = args.pid {
            u.preload_pid(pid);
        }
        if let Some(cmd) = args.command.first() {
            u.preload_exec(&launch::resolve(cmd)?);
        }
        if let Some(scope) = &target.scope {
            for pid in cgroup_pids(&scope.cgroup.dir) {
                u.preload_pid(pid);
            }
        }
        Ok(Some(u))
    }

    /// Take the walker's maps from a loaded object; `None` with --unwind fp.
    pub fn new(ebpf: &mut Ebpf, mode: Mode) -> Result<Option<Self>> {
        if mode == Mode::Fp {
            return Ok(None);
        }
        Ok(Some(Unwinder {
            rows: take_map(ebpf, "unwind_rows")?,
            modules: take_map(ebpf, "unwind_modules")?,
            unknown: take_map(ebpf, "unwind_unknown")?,
            stops: take_map(ebpf, "unwind_stops")?,
            next: 0,
            loaded: HashMap::new(),
        }))
    }

    /// Load the table of `path` under `key` (once per key). A file with no
    /// CFI, or one that cannot be read, is recorded with no rows: the
    /// walker then uses frame pointers through it without asking again.
    fn load(&mut self, key: sys::unwind_module_key, path: &Path, name: &Path) {
        if self.loaded.contains_key(&key) {
            return;
        }
        let t0 = Instant::now();
        let mut module = sys::unwind_module { first: self.next, count: 0 };
        let built = match build_file(path) {
            Ok(t) => {
                let n = t.rows.len() as u64;
                if u64::from(self.next) + n > u64::from(ROWS_CAPACITY) {
                    warn!(
                        "no room for the {n} unwind rows of {} (frame pointers there)",
                        name.display()
                    );
                } else {
                    let mut ok = true;
                    for (i, r) in t.rows.iter().enumerate() {
                        if let Err(e) = self.rows.set(self.next + i as u32, r, 0) {
                            warn!("loading unwind rows: {e}");
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        module.count = n as u32;
                        self.next += n as u32;
                    }
                }
                Some((t.bytes() / 1024, t.unsupported))
            }
            Err(e) => {
                info!("no unwind table for {}: {e:#}", name.display());
                None
            }
        };
        if let Err(e) = self.modules.insert(key, module, 0) {
            warn!("registering the unwind table of {}: {e}", name.display());
        } else if let Some((kib, unsupported)) = built {
            // Said once the walker can use it (tests wait for this line).
            info!(
                "unwind table of {}: {} rows, {kib} KiB, {unsupported} unsupported, built and loaded in {:.1} ms",
                name.display(),
                module.count,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        self.loaded.insert(key, Loaded { path: name.to_path_buf(), rows: module.count });
    }

    /// Tables for every executable file mapping of a running process.
    pub fn preload_pid(&mut self, pid: u32) {
        let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) else { return };
        for m in parse_exec_mappings(&maps) {
            let file = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
            self.load(m.key, &file, &m.path);
        }
    }

    /// Tables for an executable about to be run: itself, its interpreter
    /// and the libraries it needs (see [`exec_files`]).
    pub fn preload_exec(&mut self, exe: &Path) {
        for f in exec_files(exe) {
            let Ok(meta) = std::fs::metadata(&f) else { continue };
            let dev = kernel_dev(libc_major(meta.dev()), libc_minor(meta.dev()));
            let key = sys::unwind_module_key { ino: meta.ino(), dev, pad: 0 };
            self.load(key, &f, &f);
        }
    }

    /// Build the tables of files the walker met without one. Called from
    /// the event loop; returns how many were loaded.
    pub fn poll(&mut self) -> usize {
        let keys: Vec<sys::unwind_module_key> =
            self.unknown.keys().filter_map(|k| k.ok()).collect();
        let mut n = 0;
        for key in keys {
            let Ok(nm) = self.unknown.get(&key, 0) else { continue };
            if !self.loaded.contains_key(&key) {
                let maps = std::fs::read(format!("/proc/{}/maps", nm.pid)).unwrap_or_default();
                if let Some(m) = parse_exec_mappings(&maps).into_iter().find(|m| m.key == key) {
                    let file = PathBuf::from(format!(
                        "/proc/{}/map_files/{:x}-{:x}",
                        nm.pid, m.start, m.end
                    ));
                    self.load(key, &file, &m.path);
                    n += 1;
                }
            }
            // Gone (process exited): asked again when seen again.
            match self.unknown.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => warn!("unwind_unknown: {e}"),
            }
        }
        n
    }

    /// Walks stopped, by reason, summed over CPUs.
    pub fn stops(&self) -> Vec<(&'static str, u64)> {
        STOP_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = self.stops.get(&(i as u32), 0).map_or(0, |v| v.iter().sum());
                (*name, n)
            })
            .collect()
    }

    /// With -v: the tables loaded and why walks stopped.
    pub fn summary(&self) {
        let rows: u64 = self.loaded.values().map(|l| u64::from(l.rows)).sum();
        info!(
            "unwind tables: {} file(s), {} rows, {} KiB",
            self.loaded.len(),
            rows,
            rows * std::mem::size_of::<Row>() as u64 / 1024
        );
        let stops: Vec<String> =
            self.stops().iter().filter(|s| s.1 > 0).map(|(n, c)| format!("{n} {c}")).collect();
        info!("stack walks stopped at: {}", stops.join(", "));
        for l in self.loaded.values() {
            debug!("  {} ({} rows)", l.path.display(), l.rows);
        }
    }
}

/// The processes of a cgroup and of the cgroups below it (a pod's
/// containers), at most a few levels and a few thousand down.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= 8 || pids.len() > 4096 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push((e.path(), depth + 1));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The files an executable maps once exec'd: itself, its interpreter and
/// the libraries it needs (DT_NEEDED, transitively), found as the dynamic
/// loader would in the usual places (RUNPATH/RPATH, LD_LIBRARY_PATH, the
/// system directories; not ld.so.cache). Canonical paths, each once.
pub fn exec_files(exe: &Path) -> Vec<PathBuf> {
    let mut todo = vec![exe.to_path_buf()];
    let mut seen: Vec<PathBuf> = Vec::new();
    while let Some(p) = todo.pop() {
        let Ok(canon) = std::fs::canonicalize(&p) else { continue };
        if seen.contains(&canon) {
            continue;
        }
        seen.push(canon.clone());
        let Ok(data) = std::fs::read(&canon) else { continue };
        let Ok(elf) = Elf::parse(&data) else { continue };
        if let Some(interp) = elf.interpreter {
            todo.push(PathBuf::from(interp));
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        let origin = canon.parent().map(Path::to_path_buf).unwrap_or_default();
        for rp in elf.runpaths.iter().chain(elf.rpaths.iter()) {
            for d in rp.split(':') {
                dirs.push(PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())));
            }
        }
        if let Some(lp) = std::env::var_os("LD_LIBRARY_PATH") {
            dirs.extend(std::env::split_paths(&lp));
        }
        for d in [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            "/usr/local/lib",
        ] {
            dirs.push(PathBuf::from(d));
        }
        for lib in &elf.libraries {
            if let Some(found) = dirs.iter().map(|d| d.join(lib)).find(|c| c.is_file()) {
                todo.push(found);
            }
        }
    }
    seen
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// An executable file mapping, with its file's identity as the kernel
/// gives it (device as MKDEV).
struct ExecMapping {
    start: u64,
    end: u64,
    key: sys::unwind_module_key,
    path: PathBuf,
}

/// The executable file mappings of /proc/PID/maps text (the device field is
/// not in procmaps' entries, hence a second look at each line).
fn parse_exec_mappings(data: &[u8]) -> Vec<ExecMapping> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(e) = procmaps::parse_maps(line).pop() else { continue };
        if !e.exec || e.inode == 0 {
            continue;
        }
        let Some(path) = e.path.filter(|p| p.is_absolute()) else { continue };
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).collect();
        let Some(dev) = fields.get(3).and_then(|d| std::str::from_utf8(d).ok()) else { continue };
        let Some((maj, min)) = dev.split_once(':') else { continue };
        let (Ok(maj), Ok(min)) = (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16))
        else {
            continue;
        };
        let key = sys::unwind_module_key { ino: e.inode, dev: kernel_dev(maj, min), pad: 0 };
        out.push(ExecMapping { start: e.start, end: e.end, key, path });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_mappings_and_devices() {
        let maps = b"55d0a0000000-55d0a0001000 r--p 00000000 fd:01 1234 /usr/bin/x\n\
55d0a0001000-55d0a0002000 r-xp 00001000 fd:01 1234 /usr/bin/x\n\
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n\
7f0000002000-7f0000003000 r-xp 00002000 103:02 99 /lib/a b.so\n";
        let m = parse_exec_mappings(maps);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key.dev, (0xfd << 20) | 1);
        assert_eq!(m[0].key.ino, 1234);
        assert_eq!(m[0].start, 0x55d0a0001000);
        assert_eq!(m[1].key.dev, (0x103 << 20) | 2);
        assert_eq!(m[1].path, Path::new("/lib/a b.so"));
    }

    #[test]
    fn stat_dev_to_kernel_dev() {
        // glibc's makedev(0x103, 0x12345).
        let dev: u64 = ((0x103 & 0xfff) << 8) | (0x12345 & 0xff) | ((0x12345 & !0xff) << 12);
        assert_eq!((libc_major(dev), libc_minor(dev)), (0x103, 0x12345));
    }
}
