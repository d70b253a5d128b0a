//! Where and how the allocator probes are attached.
//!
//! The cost of a uprobe hit depends on the probed instruction: the kernel
//! emulates a few (push, direct jmp/jcc/call) for ~0.7 µs a hit, and
//! single-steps everything else out of line for ~12 µs. glibc's `free` starts
//! with `test %rdi,%rdi`, so a probe on `free+0` costs ~17× more than one on
//! the `je` right after it, which sees the same %rdi and the same return
//! address at [%rsp]. So each function's first instructions are decoded, and
//! the probe goes on the first emulated one, skipping only instructions that
//! change neither a register we read nor the stack (test, cmp, endbr64, nop).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;
use goblin::elf::{program_header::PT_LOAD, sym::STT_FUNC, Elf};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind};
use leakd_common::{anyhow, bail, info, Context, Result};
use leakd_common::{bpf, procmaps};

use crate::sys;

const N_OPS: usize = sys::alloc_op_ALLOC_OP_MAX as usize;

/// Operation names, placed by the values of `enum alloc_op`
/// (bpf/alloc.h); an unnamed op fails the build.
pub const OP_NAMES: [&str; N_OPS] = {
    let mut r = [""; N_OPS];
    r[sys::alloc_op_ALLOC_OP_MALLOC as usize] = "malloc";
    r[sys::alloc_op_ALLOC_OP_CALLOC as usize] = "calloc";
    r[sys::alloc_op_ALLOC_OP_REALLOC as usize] = "realloc";
    r[sys::alloc_op_ALLOC_OP_REALLOCARRAY as usize] = "reallocarray";
    r[sys::alloc_op_ALLOC_OP_FREE as usize] = "free";
    r[sys::alloc_op_ALLOC_OP_POSIX_MEMALIGN as usize] = "posix_memalign";
    r[sys::alloc_op_ALLOC_OP_ALIGNED_ALLOC as usize] = "aligned_alloc";
    r[sys::alloc_op_ALLOC_OP_MEMALIGN as usize] = "memalign";
    r[sys::alloc_op_ALLOC_OP_VALLOC as usize] = "valloc";
    r[sys::alloc_op_ALLOC_OP_PVALLOC as usize] = "pvalloc";
    r[sys::alloc_op_ALLOC_OP_MMAP as usize] = "mmap";
    r[sys::alloc_op_ALLOC_OP_MUNMAP as usize] = "munmap";
    r[sys::alloc_op_ALLOC_OP_NEW as usize] = "new";
    r[sys::alloc_op_ALLOC_OP_NEW_ARRAY as usize] = "new[]";
    r[sys::alloc_op_ALLOC_OP_DELETE as usize] = "delete";
    r[sys::alloc_op_ALLOC_OP_DELETE_ARRAY as usize] = "delete[]";
    assert!(leakd_common::bpf::every_slot_named(&r), "an alloc_op has no name");
    r
};

pub const OP_FREE: u32 = sys::alloc_op_ALLOC_OP_FREE;
pub const OP_MUNMAP: u32 = sys::alloc_op_ALLOC_OP_MUNMAP;
pub const OP_MMAP: u32 = sys::alloc_op_ALLOC_OP_MMAP;

/// The malloc family, without mmap/munmap. memalign comes before
/// aligned_alloc so that, where they are one function (glibc), the events
/// are named after the function that really runs.
pub const HEAP_OPS: [u32; 10] = [
    sys::alloc_op_ALLOC_OP_MALLOC,
    sys::alloc_op_ALLOC_OP_CALLOC,
    sys::alloc_op_ALLOC_OP_REALLOC,
    sys::alloc_op_ALLOC_OP_REALLOCARRAY,
    sys::alloc_op_ALLOC_OP_FREE,
    sys::alloc_op_ALLOC_OP_POSIX_MEMALIGN,
    sys::alloc_op_ALLOC_OP_MEMALIGN,
    sys::alloc_op_ALLOC_OP_ALIGNED_ALLOC,
    sys::alloc_op_ALLOC_OP_VALLOC,
    sys::alloc_op_ALLOC_OP_PVALLOC,
];

/// C++'s allocation operators, probed in the C++ runtime (libstdc++,
/// libc++) or in the executable when it is linked in statically.
pub const CXX_OPS: [u32; 4] = [
    sys::alloc_op_ALLOC_OP_DELETE,
    sys::alloc_op_ALLOC_OP_DELETE_ARRAY,
    sys::alloc_op_ALLOC_OP_NEW,
    sys::alloc_op_ALLOC_OP_NEW_ARRAY,
];

/// Whether an op is one of C++'s operators.
pub fn is_cxx(op: u32) -> bool {
    CXX_OPS.contains(&op)
}

/// The Itanium-ABI names of every standard operator of a C++ op (the same
/// in libstdc++ and libc++), and whether it takes std::align_val_t.
fn cxx_symbols(op: u32) -> &'static [(&'static str, bool)] {
    match op {
        sys::alloc_op_ALLOC_OP_NEW => &[
            ("_Znwm", false),
            ("_ZnwmRKSt9nothrow_t", false),
            ("_ZnwmSt11align_val_t", true),
            ("_ZnwmSt11align_val_tRKSt9nothrow_t", true),
        ],
        sys::alloc_op_ALLOC_OP_NEW_ARRAY => &[
            ("_Znam", false),
            ("_ZnamRKSt9nothrow_t", false),
            ("_ZnamSt11align_val_t", true),
            ("_ZnamSt11align_val_tRKSt9nothrow_t", true),
        ],
        sys::alloc_op_ALLOC_OP_DELETE => &[
            ("_ZdlPv", false),
            ("_ZdlPvm", false),
            ("_ZdlPvSt11align_val_t", false),
            ("_ZdlPvmSt11align_val_t", false),
            ("_ZdlPvRKSt9nothrow_t", false),
            ("_ZdlPvSt11align_val_tRKSt9nothrow_t", false),
        ],
        sys::alloc_op_ALLOC_OP_DELETE_ARRAY => &[
            ("_ZdaPv", false),
            ("_ZdaPvm", false),
            ("_ZdaPvSt11align_val_t", false),
            ("_ZdaPvmSt11align_val_t", false),
            ("_ZdaPvRKSt9nothrow_t", false),
            ("_ZdaPvSt11align_val_tRKSt9nothrow_t", false),
        ],
        _ => &[],
    }
}

pub fn op_name(op: u32) -> &'static str {
    OP_NAMES.get(op as usize).copied().unwrap_or("unknown")
}

pub fn op_from_name(name: &str) -> Option<u32> {
    OP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Whether an op is a deallocation (probed at entry only).
pub fn is_free(op: u32) -> bool {
    matches!(
        op,
        OP_FREE | OP_MUNMAP | sys::alloc_op_ALLOC_OP_DELETE | sys::alloc_op_ALLOC_OP_DELETE_ARRAY
    )
}

/// One attach point: function `symbol` of `path`, probed `probe_offset`
/// bytes into the function, which is at file offset `file_offset`.
#[derive(Debug, Clone)]
pub struct Site {
    pub op: u32,
    pub symbol: String,
    pub file_offset: u64,
    pub probe_offset: u64,
    pub why: String,
    /// Another op already probes the same address (e.g. glibc's
    /// aligned_alloc is memalign): that op reports for both.
    pub alias_of: Option<u32>,
    /// Bits of the attach cookie above the op (ALLOC_COOKIE_ALIGNED).
    pub flags: u32,
}

/// Where the choice of probe offset came from, for `-v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeChoice {
    pub offset: u64,
    pub why: String,
}

/// Pick the probe offset inside a function whose code starts at `vaddr`.
pub fn choose_probe_offset(code: &[u8], vaddr: u64) -> ProbeChoice {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut skipped = Vec::new();
    for _ in 0..8 {
        if !decoder.can_decode() {
            break;
        }
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        let off = ins.ip() - vaddr;
        if is_emulated(&ins) {
            if off > 0 && branch_targets(code, vaddr, ins.ip()) {
                return ProbeChoice {
                    offset: 0,
                    why: "a branch in the function targets the emulated instruction".into(),
                };
            }
            let why = if skipped.is_empty() {
                format!("{:?} is emulated", ins.mnemonic())
            } else {
                format!("skipped {}; {:?} is emulated", skipped.join(", "), ins.mnemonic())
            };
            return ProbeChoice { offset: off, why };
        }
        if !is_skippable(&ins) {
            return ProbeChoice {
                offset: 0,
                why: format!("{:?} is neither emulated nor skippable", ins.mnemonic()),
            };
        }
        skipped.push(format!("{:?}", ins.mnemonic()).to_lowercase());
    }
    ProbeChoice { offset: 0, why: "no emulated instruction among the first ones".into() }
}

/// Instructions the x86 uprobe code emulates instead of single-stepping.
fn is_emulated(ins: &iced_x86::Instruction) -> bool {
    match ins.flow_control() {
        FlowControl::Call | FlowControl::UnconditionalBranch => {
            matches!(
                ins.op0_kind(),
                OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
            )
        }
        FlowControl::ConditionalBranch => ins.is_jcc_short_or_near(),
        FlowControl::Next => {
            ins.mnemonic() == Mnemonic::Push
                && ins.op0_kind() == OpKind::Register
                && ins.op0_register().is_gpr64()
        }
        _ => false,
    }
}

/// Instructions that write no general register and no memory: moving the
/// probe past them changes nothing the probe reads.
fn is_skippable(ins: &iced_x86::Instruction) -> bool {
    matches!(ins.mnemonic(), Mnemonic::Test | Mnemonic::Cmp | Mnemonic::Endbr64 | Mnemonic::Nop)
}

/// Whether any direct branch in `code` jumps to `target` (the probe would
/// then fire more than once per call).
fn branch_targets(code: &[u8], vaddr: u64, target: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    while decoder.can_decode() {
        let ins = decoder.decode();
        if matches!(ins.op0_kind(), OpKind::NearBranch64) && ins.near_branch_target() == target {
            return true;
        }
    }
    false
}

/// Resolve `prefix + name` for each op in the ELF file at `path` and choose
/// its probe site. Ops whose symbol is missing are skipped (reported in the
/// returned list of missing names); functions at the same address are
/// probed once.
pub fn plan(path: &Path, prefix: &str, ops: &[u32]) -> Result<(Vec<Site>, Vec<String>)> {
    let data = read_regular(path)?;
    let elf =
        Elf::parse(&data).map_err(|e| anyhow!("{}: not a valid ELF file: {e}", path.display()))?;
    let mut sites: Vec<Site> = Vec::new();
    let mut missing = Vec::new();
    for &op in ops {
        let name = format!("{prefix}{}", op_name(op));
        let Some((vaddr, size)) = find_function(&elf, &name) else {
            missing.push(name);
            continue;
        };
        let Some(file_offset) = vaddr_to_offset(&elf, vaddr) else {
            bail!("{}: symbol {name} at {vaddr:#x} is not in a loadable segment", path.display());
        };
        if let Some(prev) = sites.iter().find(|s| s.file_offset == file_offset) {
            let alias = prev.alias_of.unwrap_or(prev.op);
            sites.push(Site { alias_of: Some(alias), op, symbol: name, ..prev.clone() });
            continue;
        }
        let len = size.clamp(1, 4096) as usize;
        let code = data.get(file_offset as usize..).map(|c| &c[..len.min(c.len())]).unwrap_or(&[]);
        let choice = choose_probe_offset(code, vaddr);
        sites.push(Site {
            op,
            symbol: name,
            file_offset,
            probe_offset: choice.offset,
            why: choice.why,
            alias_of: None,
            flags: 0,
        });
    }
    Ok((sites, missing))
}

/// Plan a site for every operator of the C++ `ops` defined in `path` (a
/// C++ runtime, or a static executable); functions at one address once.
pub fn plan_cxx(path: &Path, ops: &[u32]) -> Result<Vec<Site>> {
    let data = read_regular(path)?;
    let elf =
        Elf::parse(&data).map_err(|e| anyhow!("{}: not a valid ELF file: {e}", path.display()))?;
    let mut sites: Vec<Site> = Vec::new();
    for &op in ops {
        for &(name, aligned) in cxx_symbols(op) {
            let Some((vaddr, size)) = find_function(&elf, name) else { continue };
            let Some(file_offset) = vaddr_to_offset(&elf, vaddr) else { continue };
            let flags = if aligned { sys::ALLOC_COOKIE_ALIGNED } else { 0 };
            if let Some(prev) = sites.iter().find(|s| s.file_offset == file_offset) {
                let alias = prev.alias_of.unwrap_or(prev.op);
                sites.push(Site { alias_of: Some(alias), op, symbol: name.into(), ..prev.clone() });
                continue;
            }
            let len = size.clamp(1, 4096) as usize;
            let code =
                data.get(file_offset as usize..).map(|c| &c[..len.min(c.len())]).unwrap_or(&[]);
            let choice = choose_probe_offset(code, vaddr);
            sites.push(Site {
                op,
                symbol: name.into(),
                file_offset,
                probe_offset: choice.offset,
                why: choice.why,
                alias_of: None,
                flags,
            });
        }
    }
    Ok(sites)
}

/// Whether the ELF file defines C++'s `operator new(size_t)`.
pub fn defines_operator_new(path: &Path) -> bool {
    let Ok(data) = read_regular(path) else { return false };
    let Ok(elf) = Elf::parse(&data) else { return false };
    find_function(&elf, "_Znwm").is_some()
}

/// Whether a file's name is a C++ runtime's that may define the operators:
/// libstdc++, libc++, or libc++abi (where LLVM's default build, Debian's
/// among them, defines them: libc++ then has none).
fn is_cxx_runtime(p: &Path) -> bool {
    let base = p.file_name().and_then(|b| b.to_str()).unwrap_or("");
    ["libstdc++.so", "libc++.so", "libc++abi.so"].iter().any(|n| base.starts_with(n))
}

/// The C++ runtime of a process: the mapped libstdc++, libc++ or libc++abi
/// that defines operator new, else its executable when it defines operator
/// new itself (static); None for a program that is not C++.
pub fn find_cxx_runtime(pid: u32) -> Option<PathBuf> {
    let maps = procmaps::read_maps(pid).ok()?;
    let mut files: Vec<PathBuf> = Vec::new();
    for path in maps.into_iter().filter_map(|m| m.path) {
        if path.is_absolute() && !files.contains(&path) {
            files.push(path);
        }
    }
    let rooted = |p: &Path| {
        let r = procmaps::under_root(pid, p);
        if r.exists() {
            r
        } else {
            p.to_path_buf()
        }
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    files
        .iter()
        .filter(|f| is_cxx_runtime(f))
        .chain(exe.iter())
        .map(|f| rooted(f))
        .find(|f| defines_operator_new(f))
}

/// The C++ runtime an executable will use once exec'd: itself when it
/// defines operator new, else the libstdc++, libc++ or libc++abi it needs
/// (directly or not) that defines it.
pub fn cxx_runtime_for_exec(exe: &Path, needed: &[PathBuf]) -> Option<PathBuf> {
    if defines_operator_new(exe) {
        return Some(exe.to_path_buf());
    }
    needed.iter().filter(|p| is_cxx_runtime(p)).find(|p| defines_operator_new(p)).cloned()
}

/// Read a whole regular file. Anything else (a device such as /dev/zero,
/// a FIFO) is refused before reading: it could block or never end.
fn read_regular(path: &Path) -> Result<Vec<u8>> {
    // Checked before opening: opening a FIFO for reading blocks.
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn find_function(elf: &Elf<'_>, name: &str) -> Option<(u64, u64)> {
    let dyn_syms = elf.dynsyms.iter().filter_map(|s| Some((elf.dynstrtab.get_at(s.st_name)?, s)));
    let syms = elf.syms.iter().filter_map(|s| Some((elf.strtab.get_at(s.st_name)?, s)));
    dyn_syms
        .chain(syms)
        .find(|(n, s)| *n == name && s.st_type() == STT_FUNC && s.st_value != 0 && s.st_shndx != 0)
        .map(|(_, s)| (s.st_value, s.st_size))
}

fn vaddr_to_offset(elf: &Elf<'_>, vaddr: u64) -> Option<u64> {
    elf.program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_vaddr <= vaddr)
        .find(|p| p.p_vaddr.checked_add(p.p_filesz).is_some_and(|end| vaddr < end))
        .and_then(|p| (vaddr - p.p_vaddr).checked_add(p.p_offset))
}

/// Whether the ELF file defines `malloc` (with `prefix`) itself.
pub fn defines_malloc(path: &Path, prefix: &str) -> bool {
    let Ok(data) = read_regular(path) else { return false };
    let Ok(elf) = Elf::parse(&data) else { return false };
    find_function(&elf, &format!("{prefix}malloc")).is_some()
}

/// Allocators recognised by their file name, most specific first.
const KNOWN: &[(&str, &str)] = &[
    ("libjemalloc", "jemalloc"),
    ("libtcmalloc", "tcmalloc"),
    ("libmimalloc", "mimalloc"),
    ("libc.so", "glibc"),
    ("libc-", "glibc"),
    ("ld-musl", "musl"),
];

/// The allocator a process uses: a non-libc allocator it maps if any, else
/// its libc, else its own executable when it defines malloc (static builds).
pub fn find_allocator(pid: u32, prefix: &str) -> Result<(PathBuf, &'static str)> {
    find_allocator_file(pid, prefix).map(|a| (a.path, a.kind))
}

/// An allocator object as a process maps it.
#[derive(Debug, Clone)]
pub struct AllocatorFile {
    /// Where we open it (through the process's root when it has its own).
    pub path: PathBuf,
    /// The path the process sees.
    pub shown: PathBuf,
    pub kind: &'static str,
    /// Device and inode of the file really mapped: one uprobe per file,
    /// whichever container or path maps it.
    pub key: ((u32, u32), u64),
}

/// Whether process `pid` has another root than ours (a container): compared
/// by device and inode, since /proc/PID/root reads `/` after pivot_root.
pub fn has_own_root(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let theirs = id(&format!("/proc/{pid}/root"));
    theirs.is_some() && theirs != id("/proc/self/root")
}

/// [`find_allocator`], with the mapping's identity.
pub fn find_allocator_file(pid: u32, prefix: &str) -> Result<AllocatorFile> {
    find_allocator_file_known(pid, prefix, &[])
}

/// [`find_allocator_file`], where the files of `known` (by device and
/// inode) are taken to define malloc without reading them again: the
/// processes of one image share them.
fn find_allocator_file_known(
    pid: u32,
    prefix: &str,
    known: &[((u32, u32), u64)],
) -> Result<AllocatorFile> {
    let maps = procmaps::read_maps(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mut files: Vec<&procmaps::MapEntry> = Vec::new();
    for m in &maps {
        let Some(path) = &m.path else { continue };
        if path.is_absolute()
            && m.inode != 0
            && !files.iter().any(|f| f.path.as_ref() == Some(path))
        {
            files.push(m);
        }
    }
    // A container's files are not at the same path in our mount namespace:
    // they are opened through /proc/PID/root, or when not found there (a
    // file deleted or mounted over) through /proc/PID/map_files.
    let own_root = has_own_root(pid);
    let rooted = |m: &procmaps::MapEntry| {
        let path = m.path.as_deref().unwrap_or(Path::new("/"));
        if !own_root {
            return path.to_path_buf();
        }
        let p = procmaps::under_root(pid, path);
        if p.exists() {
            p
        } else {
            PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
        }
    };
    let found = |m: &procmaps::MapEntry, p: PathBuf, kind| AllocatorFile {
        path: p,
        shown: m.path.clone().unwrap_or_default(),
        kind,
        key: (m.dev, m.inode),
    };
    // Known allocators first, in KNOWN's order; then any object defining
    // malloc (a static binary), each object read once.
    let mut tried = vec![false; files.len()];
    for (pat, kind) in KNOWN {
        for (m, tried) in files.iter().zip(tried.iter_mut()) {
            let f = m.path.as_deref().unwrap_or(Path::new("/"));
            let base = f.file_name().and_then(|b| b.to_str()).unwrap_or("");
            if base.starts_with(pat) && !*tried {
                *tried = true;
                let p = rooted(m);
                if known.contains(&(m.dev, m.inode)) || defines_malloc(&p, prefix) {
                    return Ok(found(m, p, kind));
                }
            }
        }
    }
    for (m, _) in files.iter().zip(&tried).filter(|(_, &t)| !t) {
        let p = rooted(m);
        if known.contains(&(m.dev, m.inode)) || defines_malloc(&p, prefix) {
            return Ok(found(m, p, "static"));
        }
    }
    bail!("process {pid} maps no object defining {prefix}malloc (use --lib PATH)")
}

/// Processes whose allocator was not found, and why.
pub type Failed = Vec<(u32, String)>;

/// The allocators of a set of processes (a container, a pod, a cgroup),
/// one per file really mapped. Processes whose allocator cannot be found
/// (gone, or a kernel thread) are returned apart, with the reason.
pub fn find_allocators(pids: &[u32], prefix: &str) -> (Vec<(AllocatorFile, Vec<u32>)>, Failed) {
    let mut files: Vec<(AllocatorFile, Vec<u32>)> = Vec::new();
    let mut failed = Vec::new();
    for &pid in pids {
        let known: Vec<_> = files.iter().map(|(f, _)| f.key).collect();
        match find_allocator_file_known(pid, prefix, &known) {
            Ok(a) => match files.iter_mut().find(|(f, _)| f.key == a.key) {
                Some((_, users)) => users.push(pid),
                None => files.push((a, vec![pid])),
            },
            Err(e) => failed.push((pid, format!("{e:#}"))),
        }
    }
    (files, failed)
}

/// The allocator an executable will use once exec'd: itself if it defines
/// malloc (static, or an allocator linked in), else the libc this tool uses.
pub fn allocator_for_exec(exe: &Path, prefix: &str) -> Result<(PathBuf, &'static str)> {
    if defines_malloc(exe, prefix) {
        return Ok((exe.to_path_buf(), "static"));
    }
    find_allocator(std::process::id(), prefix)
}

/// The sites to probe (not aliases) and their programs, in the order they
/// are attached: whatever frees a block before whatever only allocates
/// one. A block is tracked once its allocator's return probe is live, and
/// from then on its end must be seen, by free (munmap) or by the realloc
/// that moves or frees it; one missed while the other probes attach would
/// leave leakd-attach a block that was never outstanding. An allocator's
/// entry before its return: a return probe live before its entry probe
/// would find the calls then in flight unmatched.
fn attach_order(sites: &[Site]) -> impl Iterator<Item = (&Site, &'static [&'static str])> {
    let rank = |s: &&Site| match s.op {
        op if is_free(op) => 0,
        sys::alloc_op_ALLOC_OP_REALLOC | sys::alloc_op_ALLOC_OP_REALLOCARRAY => 1,
        _ => 2,
    };
    let mut live: Vec<&Site> = sites.iter().filter(|s| s.alias_of.is_none()).collect();
    // Stable: within a rank, the sites keep their order.
    live.sort_by_key(rank);
    live.into_iter().map(|s| (s, programs(s)))
}

/// The programs of a site: malloc and free have their own, which know
/// their op without reading the attach cookie (a helper call per hit, on
/// the calls made most; see bpf/alloc.bpf.h), every other function the
/// generic ones.
fn programs(s: &Site) -> &'static [&'static str] {
    match (s.op, s.flags) {
        (OP_FREE, 0) => &["free_plain"],
        (sys::alloc_op_ALLOC_OP_MALLOC, 0) => &["malloc_enter", "malloc_return"],
        (op, _) if is_free(op) => &["free_enter"],
        _ => &["alloc_enter", "alloc_return"],
    }
}

/// Every program attach_order may name.
const PROGRAMS: [&str; 6] =
    ["alloc_enter", "alloc_return", "free_enter", "malloc_enter", "malloc_return", "free_plain"];

/// Attach the entry/return/free programs at every site.
pub fn attach(ebpf: &mut Ebpf, lib: &Path, sites: &[Site], pid: Option<u32>) -> Result<()> {
    let scope = match pid.and_then(NonZeroU32::new) {
        Some(p) => UProbeScope::OneProcess(p),
        None => UProbeScope::AllProcesses,
    };
    for prog in PROGRAMS {
        let p: &mut UProbe = bpf::program_mut(ebpf, prog)?;
        // Loaded once; attached once per allocator file and C++ runtime.
        if p.fd().is_err() {
            p.load().map_err(|e| bpf::load_error(prog, e))?;
        }
    }
    for site in sites {
        if let Some(alias) = site.alias_of {
            info!(
                "{} is the same function as {}: reported as {}",
                site.symbol,
                op_name(alias),
                op_name(alias)
            );
        }
    }
    for (site, progs) in attach_order(sites) {
        for prog in progs {
            let p: &mut UProbe = bpf::program_mut(ebpf, prog)?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(
                    site.file_offset + site.probe_offset,
                ),
                cookie: Some(u64::from(site.op | site.flags)),
            };
            p.attach(point, lib, scope).with_context(|| {
                format!("attaching {prog} to {}:{}", lib.display(), site.symbol)
            })?;
        }
        info!(
            "probe {}+{} at {}+{:#x} ({})",
            site.symbol,
            site.probe_offset,
            lib.display(),
            site.file_offset + site.probe_offset,
            site.why
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frees_attach_first_and_entries_before_returns() {
        let site = |op: u32, alias_of: Option<u32>| Site {
            op,
            symbol: op_name(op).into(),
            file_offset: 0,
            probe_offset: 0,
            why: String::new(),
            alias_of,
            flags: 0,
        };
        let malloc = sys::alloc_op_ALLOC_OP_MALLOC;
        let memalign = sys::alloc_op_ALLOC_OP_MEMALIGN;
        let realloc = sys::alloc_op_ALLOC_OP_REALLOC;
        let sites = [
            site(malloc, None),
            site(realloc, None),
            site(OP_FREE, None),
            site(memalign, None),
            site(sys::alloc_op_ALLOC_OP_ALIGNED_ALLOC, Some(memalign)),
            site(sys::alloc_op_ALLOC_OP_REALLOCARRAY, None),
            site(OP_MUNMAP, None),
        ];
        let order: Vec<(u32, &[&str])> = attach_order(&sites).map(|(s, p)| (s.op, p)).collect();
        let (free, alloc): (&[&str], &[&str]) = (&["free_enter"], &["alloc_enter", "alloc_return"]);
        assert_eq!(
            order,
            [
                (OP_FREE, &["free_plain"][..]),
                (OP_MUNMAP, free),
                (realloc, alloc),
                (sys::alloc_op_ALLOC_OP_REALLOCARRAY, alloc),
                (malloc, &["malloc_enter", "malloc_return"][..]),
                (memalign, alloc)
            ]
        );
        // Every program named is loaded.
        for (_, progs) in attach_order(&sites) {
            assert!(progs.iter().all(|p| PROGRAMS.contains(p)), "{progs:?}");
        }
    }

    #[test]
    fn malloc_and_free_have_programs_without_the_cookie() {
        let site = |op: u32, flags: u32| Site {
            op,
            symbol: op_name(op).into(),
            file_offset: 0,
            probe_offset: 0,
            why: String::new(),
            alias_of: None,
            flags,
        };
        let aligned = sys::ALLOC_COOKIE_ALIGNED;
        assert_eq!(programs(&site(OP_FREE, 0)), ["free_plain"]);
        assert_eq!(
            programs(&site(sys::alloc_op_ALLOC_OP_MALLOC, 0)),
            ["malloc_enter", "malloc_return"]
        );
        // The rest read the op (and the flags) from the cookie.
        assert_eq!(programs(&site(sys::alloc_op_ALLOC_OP_DELETE, 0)), ["free_enter"]);
        assert_eq!(programs(&site(OP_MUNMAP, 0)), ["free_enter"]);
        assert_eq!(
            programs(&site(sys::alloc_op_ALLOC_OP_NEW, aligned)),
            ["alloc_enter", "alloc_return"]
        );
        assert_eq!(
            programs(&site(sys::alloc_op_ALLOC_OP_CALLOC, 0)),
            ["alloc_enter", "alloc_return"]
        );
    }

    #[test]
    fn skips_test_to_reach_je() {
        // glibc free: test %rdi,%rdi; je +0xbf; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        let c = choose_probe_offset(&code, 0x1000);
        assert_eq!(c.offset, 3, "{c:?}");
    }

    #[test]
    fn push_first_stays_at_zero() {
        // malloc: push %r12; push %rbp
        let c = choose_probe_offset(&[0x41, 0x54, 0x55], 0x1000);
        assert_eq!(c.offset, 0);
    }

    #[test]
    fn register_writes_are_not_skipped() {
        // mov %ecx,%r10d; test ...; jne ...
        let code = [0x41, 0x89, 0xca, 0x41, 0xf7, 0xc1, 0xff, 0x0f, 0, 0, 0x75, 0x14];
        assert_eq!(choose_probe_offset(&code, 0x1000).offset, 0);
    }

    #[test]
    fn endbr_and_cmp_are_skipped() {
        // endbr64; cmpb $0,0x10(%rip); push %rbx
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x80, 0x3d, 0x10, 0, 0, 0, 0, 0x53];
        assert_eq!(choose_probe_offset(&code, 0x1000).offset, 11);
    }

    #[test]
    fn a_loop_back_to_the_site_forces_offset_zero() {
        // test %rdi,%rdi; je L (L = self); jmp back to offset 3
        let code = [0x48, 0x85, 0xff, 0x74, 0x00, 0xeb, 0xfc];
        assert_eq!(choose_probe_offset(&code, 0x1000).offset, 0);
    }
}
