//! Address → function, file and line, with everything expensive cached.
//!
//! Parsing an ELF file's symbol table and DWARF costs milliseconds to
//! seconds; answering one address from parsed tables costs a binary search.
//! So modules are loaded once (keyed by device and inode, so the same file
//! reached through /proc/PID/root or /proc/PID/map_files is loaded once), and
//! every answer is remembered per module address, since stacks repeat.
//! Failures are cached too: a missing file is looked for once, not once per
//! frame.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

use rustc_hash::FxHashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::elf::{self, ElfFile, LoadError, Reader};
use crate::kallsyms::Kallsyms;
use crate::line::write_str;
use leakd_common::procmaps::{self, MapEntry};
use leakd_common::text::push_hex_string;

/// Why a frame was left unresolved (the `reason` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The address is in no file mapping (anonymous memory, outside every
    /// segment of the module, or the process is gone and the frame has no
    /// module and offset).
    Unmapped,
    /// The file was found but has neither symbols nor DWARF for the address.
    NoSymbols,
    /// The file's build id differs from the frame's, and no debug file with
    /// the frame's build id was found.
    BuildIdMismatch,
    /// The file does not exist (or cannot be read).
    FileMissing,
    /// The file is not a valid ELF file.
    CorruptElf,
    /// The frame has only `addr` and `pid`, and that process is gone.
    NoProcess,
    /// The process's /proc/PID/maps cannot be read (not ours to read).
    NoPermission,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unmapped => "unmapped",
            Reason::NoSymbols => "no_symbols",
            Reason::BuildIdMismatch => "build_id_mismatch",
            Reason::FileMissing => "file_missing",
            Reason::CorruptElf => "corrupt_elf",
            Reason::NoProcess => "no_process",
            Reason::NoPermission => "no_permission",
        }
    }
}

/// One inlined call, as DWARF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    pub sym: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// What is known about one code address.
///
/// `file`/`line` are the location in the function `sym` itself: when code of
/// other functions was inlined there, that is the line of the outermost
/// inlined call, and `inlined` lists the inlined functions innermost first
/// (outermost last), each with the location within it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub sym: Option<Arc<str>>,
    pub sym_offset: Option<u64>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    pub inlined: Vec<Inlined>,
    /// The fields above as JSON object members, rendered once and copied
    /// into every frame with this answer.
    pub(crate) json: std::sync::OnceLock<Box<str>>,
}

impl Resolution {
    /// The same place, with `sym_offset` moved by `by` bytes: a return
    /// address is looked up one byte back (inside the call instruction, so
    /// file/line are those of the call), but its offset is reported as is.
    /// Module answers are cached shifted, so this runs once per address
    /// (kernel answers are not cached).
    pub fn shifted(self, by: u64) -> Resolution {
        Resolution {
            sym_offset: self.sym_offset.map(|o| o.wrapping_add(by)),
            json: Default::default(),
            ..self
        }
    }

    /// `"sym":...,"sym_offset":...` (no braces), as symres writes them into
    /// a frame. Rendered once per answer and reused for every frame.
    pub fn json_fields(&self) -> &str {
        self.json.get_or_init(|| self.render())
    }

    fn render(&self) -> Box<str> {
        // The parts, one after another in one buffer (a fresh vector for
        // each was a tenth of a cold run over a large build).
        let mut parts = Vec::with_capacity(512);
        let mut part = |sym: Option<&str>, file: Option<&str>, line: Option<u32>| {
            let start = parts.len();
            members_into(&mut parts, sym, file, line);
            start..parts.len()
        };
        let [sym, file, line] = [
            part(self.sym.as_deref(), None, None),
            part(None, self.file.as_deref(), None),
            part(None, None, self.line),
        ];
        let inlined: Vec<_> = self
            .inlined
            .iter()
            .map(|f| part(f.sym.as_deref(), f.file.as_deref(), f.line))
            .collect();
        let mut o = Vec::with_capacity(parts.len() + 64);
        write_answer(
            &mut o,
            &parts[sym],
            self.sym_offset,
            &parts[file],
            &parts[line],
            inlined.iter().map(|r| Some(&parts[r.clone()])),
        );
        String::from_utf8(o).unwrap_or_default().into_boxed_str()
    }
}

/// The members an answer adds to a frame, from their parts: `sym`,
/// `sym_offset`, `file`, `line` and `inlined`, in that order, each left
/// out when absent (an empty part). A part is member text as [`members`]
/// writes it; each inlined call is the members of one element of
/// `"inlined"`. Resolutions and index answers are both written by this,
/// so they agree byte for byte. False (and `o` as it was) when an inlined
/// part is missing (`None`, from a damaged index).
pub(crate) fn write_answer<'a>(
    o: &mut Vec<u8>,
    sym: &[u8],
    sym_offset: Option<u64>,
    file: &[u8],
    line: &[u8],
    inlined: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) -> bool {
    let base = o.len();
    let sep = |o: &mut Vec<u8>| {
        if o.len() > base {
            o.push(b',');
        }
    };
    o.extend_from_slice(sym);
    if let Some(x) = sym_offset {
        sep(o);
        o.extend_from_slice(b"\"sym_offset\":");
        push_hex_string(o, x);
    }
    for t in [file, line] {
        if !t.is_empty() {
            sep(o);
            o.extend_from_slice(t);
        }
    }
    if inlined.len() > 0 {
        sep(o);
        o.extend_from_slice(b"\"inlined\":[");
        for (i, t) in inlined.enumerate() {
            let Some(t) = t else {
                o.truncate(base);
                return false;
            };
            if i > 0 {
                o.push(b',');
            }
            o.push(b'{');
            o.extend_from_slice(t);
            o.push(b'}');
        }
        o.push(b']');
    }
    true
}

/// The known ones of `"sym"`, `"file"` and `"line"`, as object members
/// (empty when none is).
pub(crate) fn members(sym: Option<&str>, file: Option<&str>, line: Option<u32>) -> Vec<u8> {
    let mut o = Vec::new();
    members_into(&mut o, sym, file, line);
    o
}

/// `members`, appended to `o`.
fn members_into(o: &mut Vec<u8>, sym: Option<&str>, file: Option<&str>, line: Option<u32>) {
    let base = o.len();
    let key = |o: &mut Vec<u8>, k: &str| {
        if o.len() > base {
            o.push(b',');
        }
        write_str(o, k);
        o.push(b':');
    };
    for (k, v) in [("sym", sym), ("file", file)] {
        if let Some(v) = v {
            key(o, k);
            write_str(o, v);
        }
    }
    if let Some(l) = line {
        key(o, "line");
        // Cannot fail: writing to a Vec.
        let _ = write!(o, "{l}");
    }
}

pub type Outcome = Result<Arc<Resolution>, Reason>;

/// A frame resolved through a live process's maps: the module and file
/// offset found there, and the outcome.
#[derive(Debug, Clone)]
pub struct PidFrame<T = Arc<Resolution>> {
    pub module: Option<String>,
    pub offset: Option<u64>,
    pub outcome: Result<T, Reason>,
}

/// What symres writes into a frame of a line: an answer made from symbols
/// and DWARF, or one read ready-made from an index.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Made(Arc<Resolution>),
    /// JSON object members (checked, but not known to be UTF-8 if the
    /// index file changed since).
    Text(Arc<[u8]>),
    /// Such text, written at this range of the line's buffer of answers
    /// (a new frame's answer costs no allocation of its own).
    Written(std::ops::Range<usize>),
}

impl Answer {
    /// The answer as JSON object members (`texts`: the buffer `Written`
    /// answers are in).
    pub(crate) fn json<'a>(&'a self, texts: &'a [u8]) -> &'a [u8] {
        match self {
            Answer::Made(r) => r.json_fields().as_bytes(),
            Answer::Text(t) => t,
            Answer::Written(r) => texts.get(r.clone()).unwrap_or_default(),
        }
    }

    /// The answer standing on its own (to be kept past the line).
    pub(crate) fn owned(&self, texts: &[u8]) -> Answer {
        match self {
            Answer::Written(_) => Answer::Text(self.json(texts).into()),
            a => a.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Searched before /usr/lib/debug, the way gdb's debug-file-directory is.
    pub debug_dirs: Vec<PathBuf>,
    /// Report inlined functions (costs a little time per new address).
    pub inlined: bool,
    /// Where prebuilt indexes are looked for (`symres --build-index`);
    /// `None`: the default cache directory.
    pub index_dir: Option<PathBuf>,
    pub verbose: u8,
    /// Threads that may parse the DWARF units one line needs at once, when
    /// lines come few at a time (see `Resolver::set_warm`); 0 or 1: none.
    pub warm_threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debug_dirs: Vec::new(),
            inlined: true,
            index_dir: None,
            verbose: 0,
            warm_threads: 0,
        }
    }
}

const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";
/// Answers remembered per module before the cache is reset.
const MAX_CACHED_ANSWERS: usize = 1 << 20;

type ModuleId = usize;
/// (pid, build id) a module name was looked up with, and the answer.
type NameHit = (Option<u32>, Option<Vec<u8>>, Result<ModuleId, Reason>);
/// (function, file, line) of one DWARF frame.
pub(crate) type DwarfFrame = (Option<Arc<str>>, Option<Arc<str>>, Option<u32>);

struct Module {
    /// Build id of the file whose segments are used (the binary, or the debug
    /// file when the binary itself is gone).
    build_id: Option<Vec<u8>>,
    segments: Vec<elf::Segment>,
    symbols: elf::SymbolTable,
    /// Built when the first address is looked up; `None` inside when the
    /// module has no (usable) DWARF.
    dwarf: Option<DwarfState>,
    /// Where the DWARF index is shared with other resolvers.
    shared: Shared,
    /// Prebuilt answers for the whole module, when an index was found for
    /// its build id: lines are then answered from it, without symbols or
    /// DWARF (the structured answers of `resolve_*` still come from those).
    index: Option<crate::index::Index>,
    /// By address looked up, and how far back from the frame's (see
    /// `Resolution::shifted`).
    answers: FxHashMap<(u64, u64), Outcome>,
    demangled: FxHashMap<elf::SymName, Arc<str>>,
    files: FxHashMap<String, Arc<str>>,
    /// DWARF (linkage) names, demangled, since the same inlined functions
    /// turn up at many addresses.
    dwarf_names: NameCache,
}

enum DwarfState {
    /// Not needed yet; the file's identity, when known, names its index
    /// among the shared ones.
    Pending(elf::DwarfSections, Option<FileKey>),
    Ready(Arc<crate::dwarf::Index>),
    Absent,
}

pub struct Resolver {
    opts: Options,
    modules: Vec<Module>,
    by_inode: HashMap<FileKey, ModuleId>,
    /// Path as given (or as built from /proc) → loaded module or failure.
    by_path: HashMap<PathBuf, Result<ModuleId, Reason>>,
    /// Debug file by build id → module, or `None` when not installed.
    by_build_id: HashMap<Vec<u8>, Option<ModuleId>>,
    pids: HashMap<u32, PidMaps>,
    kallsyms: Option<Result<Kallsyms, Reason>>,
    /// Incremented per input line; bounds /proc/PID/maps rereads.
    generation: u64,
    /// Module name as written in frames → (pid, build id, module), so a
    /// frame costs one hash of its module string, not path building and
    /// file-system calls.
    by_name: FxHashMap<String, Vec<NameHit>>,
    /// The last build id parsed, as written and as bytes: a stream repeats
    /// a handful of ids, frame after frame.
    last_build_id: Option<(String, BuildId)>,
    /// DWARF indexes and messages, shared with the resolvers made by
    /// [`Resolver::fresh`].
    shared: Shared,
    /// Whether lines now come few at a time (see `set_warm`).
    warm: bool,
}

struct PidMaps {
    /// Why not, when the maps cannot be read.
    entries: Result<Vec<MapEntry>, Reason>,
    modules: Vec<Option<Result<ModuleId, Reason>>>,
    /// When the maps were read, and when last used (input lines).
    generation: u64,
    used: u64,
}

/// Processes whose maps are kept: a long run meets processes without end,
/// but those still in the stream are the ones used lately (the half used
/// longest ago goes when full; an exited one's maps cannot be read again).
const MAX_PIDS: usize = 4096;

/// Entries kept in each cache keyed by what the input names (paths, module
/// names, build ids not installed, messages said under -v): a long run
/// meets new ones without end (a path per process under /proc), and each
/// is cheap to find again (a file already loaded is found by its
/// identity).
const MAX_KEYS: usize = 1 << 14;

impl Resolver {
    pub fn new(opts: Options) -> Self {
        Self::sharing(opts, Shared::default())
    }

    /// A resolver with caches of its own but for the DWARF indexes in
    /// `shared`.
    fn sharing(opts: Options, shared: Shared) -> Self {
        Resolver {
            warm: true,
            opts,
            modules: Vec::new(),
            by_inode: HashMap::new(),
            by_path: HashMap::new(),
            by_build_id: HashMap::new(),
            pids: HashMap::new(),
            kallsyms: None,
            generation: 0,
            by_name: FxHashMap::default(),
            last_build_id: None,
            shared,
        }
    }

    /// Another resolver with the same options that shares this one's
    /// DWARF indexes (for another thread: the parsed DWARF of a large
    /// binary is most of what a new address costs).
    pub fn fresh(&self) -> Self {
        Self::sharing(self.opts.clone(), self.shared.clone())
    }

    /// Whether the next lines parse the DWARF units each needs at once
    /// (`Options::warm_threads`): worth it when lines come few at a time
    /// and a first line waits for every unit it needs; with many lines at
    /// hand, the resolving threads are busy with them already.
    pub(crate) fn set_warm(&mut self, on: bool) {
        self.warm = on;
    }

    /// Whether a line's units are parsed at once now (see `set_warm`).
    pub(crate) fn warms(&self) -> bool {
        self.warm && self.opts.warm_threads > 1
    }

    /// Mark the start of a new batch of frames (one input line): a process's
    /// maps are reread at most once per batch when an address is missing.
    pub fn next_generation(&mut self) {
        self.generation += 1;
    }

    /// [`parse_build_id`] for a frame, reusing the last answer when the
    /// frame repeats the last id.
    pub fn parse_build_id(&mut self, s: &str) -> Result<Option<BuildId>, String> {
        if let Some((text, id)) = &self.last_build_id {
            if text == s.trim() {
                return Ok(Some(*id));
            }
        }
        let id = parse_build_id(s)?;
        if let Some(id) = id {
            self.last_build_id = Some((s.trim().to_string(), id));
        }
        Ok(id)
    }

    /// A message under -v, once: each thread's resolver meets the same
    /// files and the same failures (each is cached per resolver).
    fn log(&self, level: u8, msg: impl FnOnce() -> String) {
        if self.opts.verbose >= level {
            let msg = msg();
            if self.shared.first_time(&msg) {
                eprintln!("symres: {msg}");
            }
        }
    }

    /// Resolve a file offset within `module` (the frame format of an exited
    /// process). `build_id` is the lower-case hex GNU build id, if known.
    /// With `pid`, the module is first looked for inside that process's mount
    /// namespace (/proc/PID/root).
    /// `back`: the frame is a return address, `back` bytes after the
    /// address looked up (`offset`).
    pub fn resolve_module_offset(
        &mut self,
        module: &str,
        offset: u64,
        back: u64,
        build_id: Option<&[u8]>,
        pid: Option<u32>,
    ) -> Outcome {
        self.module_offset_with(module, offset, back, build_id, pid, Resolver::lookup_offset)
    }

    /// `resolve_module_offset` for a line: from the module's index when it
    /// has one, written to `texts`.
    pub(crate) fn answer_module_offset(
        &mut self,
        module: &str,
        offset: u64,
        back: u64,
        build_id: Option<&[u8]>,
        pid: Option<u32>,
        texts: &mut Vec<u8>,
    ) -> Result<Answer, Reason> {
        self.module_offset_with(module, offset, back, build_id, pid, |r, id, offset, back| {
            r.answer_offset(id, offset, back, texts)
        })
    }

    /// `warm_units` on `Options::warm_threads` threads (said under -vv).
    pub(crate) fn warm(&self, targets: Vec<ColdTarget>) {
        let threads = self.opts.warm_threads;
        let n = warm_units(targets, threads, self.opts.inlined, self.opts.verbose);
        if n > 0 && self.opts.verbose > 1 {
            eprintln!("symres: parsing {n} DWARF units at once on {} threads", threads.min(n));
        }
    }

    /// Where answering the frame (`module`, `offset`, ...) would parse a
    /// DWARF unit for the first time: the file's DWARF index, the address,
    /// and the unit (one that .debug_aranges names). `None` otherwise: the
    /// module has an index, the answer is cached, the unit's context is
    /// made already, or there is no such module, code or DWARF.
    pub(crate) fn cold_target(
        &mut self,
        module: &str,
        offset: u64,
        back: u64,
        build_id: Option<&[u8]>,
        pid: Option<u32>,
    ) -> Option<ColdTarget> {
        let found =
            self.module_offset_with(module, offset, back, build_id, pid, |r, id, offset, back| {
                let m = &mut r.modules[id];
                let vaddr = elf::offset_to_vaddr(&m.segments, offset)
                    .filter(|&v| elf::is_code(&m.segments, v));
                let Some(vaddr) =
                    vaddr.filter(|&v| m.index.is_none() && !m.answers.contains_key(&(v, back)))
                else {
                    return Ok(None);
                };
                dwarf_index(&mut m.dwarf, &m.shared);
                let Some(DwarfState::Ready(index)) = &m.dwarf else { return Ok(None) };
                Ok(index.cold_unit(vaddr).map(|u| (index.clone(), vaddr, u)))
            });
        found.ok().flatten()
    }

    /// The module, then `look` (module, file offset, `back`) for the answer.
    /// `module` is the name as frames write it, and the key of its cache: a
    /// hit costs one hash, and only a miss turns it into a path.
    fn module_offset_with<T>(
        &mut self,
        module: &str,
        offset: u64,
        back: u64,
        build_id: Option<&[u8]>,
        pid: Option<u32>,
        look: impl FnOnce(&mut Resolver, ModuleId, u64, u64) -> Result<T, Reason>,
    ) -> Result<T, Reason> {
        if let Some(hit) = self.by_name.get(module) {
            if let Some((_, _, r)) =
                hit.iter().find(|(p, b, _)| *p == pid && b.as_deref() == build_id)
            {
                let r = *r;
                return r.and_then(|id| look(self, id, offset, back));
            }
        }
        let r = self.module_for_name(&module_path(module), build_id, pid);
        if self.by_name.len() >= MAX_KEYS && !self.by_name.contains_key(module) {
            self.by_name.clear();
        }
        let list = self.by_name.entry(module.to_string()).or_default();
        // Bounded: many PIDs naming one module are fine, unbounded growth is not.
        if list.len() >= 64 {
            list.clear();
        }
        list.push((pid, build_id.map(<[u8]>::to_vec), r));
        r.and_then(|id| look(self, id, offset, back))
    }

    fn module_for_name(
        &mut self,
        module: &Path,
        build_id: Option<&[u8]>,
        pid: Option<u32>,
    ) -> Result<ModuleId, Reason> {
        let mut candidates = Vec::with_capacity(2);
        if let Some(pid) = pid {
            if module.is_absolute() {
                candidates.push(procmaps::under_root(pid, module));
            }
        }
        candidates.push(module.to_path_buf());
        self.module_for(&candidates, module, build_id)
    }

    /// Resolve an address of live process `pid` through /proc/PID/maps
    /// (`back` as for `resolve_module_offset`; the offset returned is the
    /// frame's, `back` bytes after `addr`'s).
    pub fn resolve_pid_addr(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
    ) -> PidFrame {
        self.pid_addr_with(pid, addr, back, build_id, Resolver::lookup_offset)
    }

    /// `resolve_pid_addr` for a line: from the module's index when it has
    /// one.
    pub(crate) fn answer_pid_addr(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
        texts: &mut Vec<u8>,
    ) -> PidFrame<Answer> {
        self.pid_addr_with(pid, addr, back, build_id, |r, id, offset, back| {
            r.answer_offset(id, offset, back, texts)
        })
    }

    /// The mapping, then `look` (module, file offset, `back`) for the answer.
    fn pid_addr_with<T>(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
        look: impl FnOnce(&mut Resolver, ModuleId, u64, u64) -> Result<T, Reason>,
    ) -> PidFrame<T> {
        let generation = self.generation;
        let stale = match self.pids.get_mut(&pid) {
            None => true,
            Some(m) => {
                m.used = generation;
                m.generation != generation
                    && m.entries.as_deref().map_or(true, |e| procmaps::find(e, addr).is_none())
            }
        };
        if stale {
            let entries = procmaps::read_maps(pid).map_err(|e| {
                self.log(1, || format!("process {pid}: cannot read /proc/{pid}/maps: {e}"));
                match e.kind() {
                    std::io::ErrorKind::NotFound => Reason::NoProcess,
                    std::io::ErrorKind::PermissionDenied => Reason::NoPermission,
                    _ => Reason::Unmapped,
                }
            });
            let n = entries.as_ref().map_or(0, Vec::len);
            if self.pids.len() >= MAX_PIDS && !self.pids.contains_key(&pid) {
                let mut used: Vec<u64> = self.pids.values().map(|p| p.used).collect();
                let mid = used.len() / 2;
                let median = *used.select_nth_unstable(mid).1;
                self.pids.retain(|_, p| p.used > median);
            }
            self.pids.insert(
                pid,
                PidMaps { entries, modules: vec![None; n], generation, used: generation },
            );
        }
        let Some(pm) = self.pids.get(&pid) else {
            return PidFrame { module: None, offset: None, outcome: Err(Reason::Unmapped) };
        };
        let entries = match &pm.entries {
            Ok(e) => e,
            Err(reason) => return PidFrame { module: None, offset: None, outcome: Err(*reason) },
        };
        let Some(idx) = procmaps::find(entries, addr) else {
            return PidFrame { module: None, offset: None, outcome: Err(Reason::Unmapped) };
        };
        let Some(entry) = entries.get(idx) else {
            return PidFrame { module: None, offset: None, outcome: Err(Reason::Unmapped) };
        };
        let Some(path) = entry.path.as_deref() else {
            return PidFrame { module: None, offset: None, outcome: Err(Reason::Unmapped) };
        };
        let module_name = leakd_common::text::bytes_to_string(path.as_os_str().as_bytes());
        let offset = (addr - entry.start).wrapping_add(entry.offset);
        if module_name.starts_with('[') {
            // [vdso], [vsyscall]: code without a file.
            return PidFrame {
                module: Some(module_name),
                offset: None,
                outcome: Err(Reason::NoSymbols),
            };
        }
        let id = match pm.modules.get(idx).copied().flatten() {
            Some(r) => r,
            None => {
                // The mapping is copied only when its module is first loaded.
                let entry = entry.clone();
                let r = match entry.path.as_deref() {
                    Some(p) => self.module_of_mapping(pid, &entry, p, build_id),
                    None => Err(Reason::Unmapped),
                };
                if let Some(slot) = self.pids.get_mut(&pid).and_then(|pm| pm.modules.get_mut(idx)) {
                    *slot = Some(r);
                }
                r
            }
        };
        let outcome = id.and_then(|id| look(self, id, offset, back));
        PidFrame { module: Some(module_name), offset: Some(offset.wrapping_add(back)), outcome }
    }

    /// The file behind a mapping: through /proc/PID/root (other mount
    /// namespaces) when it is still the mapped file, else through
    /// /proc/PID/map_files (deleted or replaced files).
    fn module_of_mapping(
        &mut self,
        pid: u32,
        entry: &MapEntry,
        path: &Path,
        build_id: Option<&[u8]>,
    ) -> Result<ModuleId, Reason> {
        let rooted = procmaps::under_root(pid, path);
        let map_file =
            PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end));
        let same_file = !entry.deleted
            && std::fs::metadata(&rooted).is_ok_and(|m| m.ino() == entry.inode || entry.inode == 0);
        let candidates = if same_file { vec![rooted, map_file] } else { vec![map_file, rooted] };
        self.module_for(&candidates, path, build_id)
    }

    /// Kernel text address, through /proc/kallsyms (`back` as for
    /// `resolve_module_offset`).
    pub fn resolve_kernel(&mut self, addr: u64, back: u64) -> Outcome {
        if self.kallsyms.is_none() {
            let k = Kallsyms::load(Path::new("/proc/kallsyms"));
            if let Err(r) = &k {
                self.log(1, || format!("/proc/kallsyms: {}", r.as_str()));
            }
            self.kallsyms = Some(k);
        }
        match self.kallsyms.as_ref() {
            Some(Ok(k)) => k.lookup(addr).map(|r| Arc::new(r.shifted(back))),
            Some(Err(r)) => Err(*r),
            None => Err(Reason::FileMissing),
        }
    }

    /// Find (loading if needed) the first candidate file whose build id
    /// matches; failing that, the debug file with that build id.
    fn module_for(
        &mut self,
        candidates: &[PathBuf],
        nominal: &Path,
        build_id: Option<&[u8]>,
    ) -> Result<ModuleId, Reason> {
        let mut failure = Reason::FileMissing;
        for path in candidates {
            match self.load_path(path, nominal) {
                Ok(id) => {
                    let have = self.modules[id].build_id.as_deref();
                    match (build_id, have) {
                        (Some(want), Some(have)) if want != have => {
                            // The file may have been replaced since it was loaded.
                            if let Ok(id2) = self.reload_if_changed(path, nominal, id) {
                                if self.modules[id2].build_id.as_deref() == Some(want) {
                                    return Ok(id2);
                                }
                            }
                            self.log(1, || {
                                format!("{}: build id differs from the frame's", path.display())
                            });
                            failure = Reason::BuildIdMismatch;
                        }
                        _ => return Ok(id),
                    }
                }
                Err(Reason::FileMissing) => {}
                Err(r) => {
                    if failure == Reason::FileMissing {
                        failure = r;
                    }
                }
            }
        }
        if let Some(want) = build_id {
            if let Some(id) = self.debug_module_by_build_id(want) {
                return Ok(id);
            }
        }
        Err(failure)
    }

    fn reload_if_changed(
        &mut self,
        path: &Path,
        nominal: &Path,
        old: ModuleId,
    ) -> Result<ModuleId, Reason> {
        let md = std::fs::metadata(path).map_err(|_| Reason::FileMissing)?;
        if self.by_inode.get(&file_key(&md)) == Some(&old) {
            return Ok(old);
        }
        self.by_path.remove(path);
        self.load_path(path, nominal)
    }

    fn load_path(&mut self, path: &Path, nominal: &Path) -> Result<ModuleId, Reason> {
        if let Some(r) = self.by_path.get(path) {
            return *r;
        }
        let r = self.load_path_uncached(path, nominal);
        if self.by_path.len() >= MAX_KEYS {
            self.by_path.clear();
        }
        self.by_path.insert(path.to_path_buf(), r);
        r
    }

    fn load_path_uncached(&mut self, path: &Path, nominal: &Path) -> Result<ModuleId, Reason> {
        let md = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(Reason::FileMissing),
            Err(e) => {
                self.log(1, || format!("{}: {e}", path.display()));
                return Err(Reason::FileMissing);
            }
        };
        let key = file_key(&md);
        if let Some(&id) = self.by_inode.get(&key) {
            return Ok(id);
        }
        let elf = self.open_elf(path)?;
        let debug =
            if elf.dwarf.is_none() { self.find_debug_file(&elf, nominal, path) } else { None };
        let id = self.add_module(elf, debug, Some(key));
        self.by_inode.insert(key, id);
        Ok(id)
    }

    fn open_elf(&self, path: &Path) -> Result<ElfFile, Reason> {
        // goblin is fuzzed and its errors are handled, but a panic deep in a
        // parser must cost one frame, not the whole stream.
        let r = std::panic::catch_unwind(|| ElfFile::open(path))
            .unwrap_or_else(|_| Err(LoadError::Corrupt("parser panicked".into())));
        match r {
            Ok(e) => {
                self.log(1, || {
                    format!(
                        "loaded {}: {} symbols, {}DWARF{}",
                        path.display(),
                        e.symbols.len(),
                        if e.dwarf.is_some() { "" } else { "no " },
                        e.dwarf_error.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()
                    )
                });
                Ok(e)
            }
            Err(LoadError::Missing(err)) => {
                self.log(1, || format!("{}: {err}", path.display()));
                Err(Reason::FileMissing)
            }
            Err(e @ LoadError::Corrupt(_)) => {
                self.log(1, || format!("{}: {e}", path.display()));
                Err(Reason::CorruptElf)
            }
        }
    }

    /// `key`: the identity of the file (the same file gives the same
    /// DWARF), under which its DWARF index is shared.
    fn add_module(
        &mut self,
        elf: ElfFile,
        debug: Option<ElfFile>,
        key: Option<FileKey>,
    ) -> ModuleId {
        let ElfFile { build_id, segments, symbols, dwarf, .. } = elf;
        let index = build_id.as_deref().and_then(|id| self.load_index(id));
        let (symbols, dwarf) = match debug {
            Some(d) => {
                let symbols = if d.symbols.len() > symbols.len() { d.symbols } else { symbols };
                (symbols, dwarf.or(d.dwarf))
            }
            None => (symbols, dwarf),
        };
        self.modules.push(Module {
            build_id,
            segments,
            symbols,
            dwarf: Some(dwarf.map_or(DwarfState::Absent, |mut d| {
                d.verbose = self.opts.verbose;
                DwarfState::Pending(d, key)
            })),
            shared: self.shared.clone(),
            index,
            answers: FxHashMap::default(),
            demangled: FxHashMap::default(),
            files: FxHashMap::default(),
            dwarf_names: FxHashMap::default(),
        });
        self.modules.len() - 1
    }

    fn index_dir(&self) -> Option<PathBuf> {
        self.opts.index_dir.clone().or_else(crate::index::default_dir)
    }

    /// The prebuilt index of a module, if there is a usable one. An index
    /// holds the answers with inlined functions, and only those.
    fn load_index(&self, build_id: &[u8]) -> Option<crate::index::Index> {
        if !self.opts.inlined {
            return None;
        }
        let dir = self.index_dir()?;
        match crate::index::Index::load(&dir, build_id) {
            Ok(Some(ix)) => {
                self.log(1, || {
                    format!(
                        "using the index {}/{} ({} pieces)",
                        dir.display(),
                        crate::index::file_name(build_id),
                        ix.pieces()
                    )
                });
                Some(ix)
            }
            Ok(None) => None,
            Err(e) => {
                self.log(1, || e);
                None
            }
        }
    }

    /// Build the index of the file at `path` and write it to the index
    /// directory, with `threads` threads looking up; returns the index's
    /// path and its number of pieces.
    pub fn build_index(&mut self, path: &Path, threads: usize) -> Result<(PathBuf, usize), String> {
        let cannot_load = |r: Reason| format!("cannot load: {}", r.as_str().replace('_', " "));
        let id = self.load_path(path, path).map_err(cannot_load)?;
        let verbose = self.opts.verbose;
        let dir = self
            .index_dir()
            .ok_or("no index directory (set HOME, XDG_CACHE_HOME or --index-dir)")?;
        let m = &mut self.modules[id];
        let build_id = m.build_id.clone().ok_or("no build id to name its index by")?;
        let mut addrs: Vec<u64> = m.symbols.boundaries().collect();
        if let Some(dwarf) = dwarf_index(&mut m.dwarf, &m.shared) {
            dwarf.boundaries(&mut addrs, threads).map_err(|e| format!("unreadable DWARF: {e}"))?;
        }
        // The other threads' resolvers share this one's DWARF.
        let mut others = Vec::new();
        for _ in 1..threads {
            let mut r = self.fresh();
            let id = r.load_path(path, path).map_err(cannot_load)?;
            others.push((r, id));
        }
        type Answerer<'a> = Box<dyn FnMut(u64) -> Result<Resolution, Reason> + Send + 'a>;
        let m = &mut self.modules[id];
        let mut answerers: Vec<Answerer> = vec![Box::new(|a| m.lookup_vaddr(a, true, verbose))];
        for (r, id) in &mut others {
            let m = &mut r.modules[*id];
            answerers.push(Box::new(|a| m.lookup_vaddr(a, true, verbose)));
        }
        let ix = crate::index::Built::new_threaded(addrs, answerers);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join(crate::index::file_name(&build_id));
        // Written aside and renamed: a reader never sees half an index.
        let tmp =
            dir.join(format!(".{}.{}", crate::index::file_name(&build_id), std::process::id()));
        let bytes = ix.to_bytes(&build_id).ok_or("too large for an index (offsets are 32-bit)")?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok((file, ix.pieces()))
    }

    fn debug_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.opts.debug_dirs.clone();
        dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
        dirs
    }

    fn build_id_paths(&self, id: &[u8]) -> Vec<PathBuf> {
        if id.len() < 2 {
            return Vec::new();
        }
        let hex = leakd_common::text::hex_bytes(id);
        self.debug_dirs()
            .into_iter()
            .map(|d| d.join(".build-id").join(&hex[..2]).join(format!("{}.debug", &hex[2..])))
            .collect()
    }

    /// The separate debug file of a stripped binary, searched the way gdb
    /// does: by build id, then by .gnu_debuglink (checking its CRC).
    fn find_debug_file(&self, elf: &ElfFile, nominal: &Path, actual: &Path) -> Option<ElfFile> {
        if let Some(id) = &elf.build_id {
            for p in self.build_id_paths(id) {
                if !p.is_file() {
                    continue;
                }
                match self.open_elf(&p) {
                    Ok(d) if d.build_id.as_deref() == Some(id.as_slice()) => return Some(d),
                    Ok(_) => {
                        self.log(1, || format!("{}: build id does not match, ignored", p.display()))
                    }
                    Err(_) => {}
                }
            }
        }
        let (name, crc) = elf.debuglink.as_ref()?;
        let mut paths = Vec::new();
        for base in [nominal, actual] {
            if let Some(dir) = base.parent() {
                paths.push(dir.join(name));
                paths.push(dir.join(".debug").join(name));
                for d in self.debug_dirs() {
                    paths.push(d.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
                }
            }
        }
        for d in &self.opts.debug_dirs {
            paths.push(d.join(name));
        }
        for p in paths {
            if p == actual || p == nominal || !p.is_file() {
                continue;
            }
            let Ok(data) = std::fs::read(&p) else { continue };
            if elf::crc32(&data) != *crc {
                self.log(1, || {
                    format!("{}: CRC does not match .gnu_debuglink, ignored", p.display())
                });
                continue;
            }
            match std::panic::catch_unwind(move || ElfFile::parse_owned(data)) {
                Ok(Ok(d)) => {
                    self.log(1, || format!("using debug file {}", p.display()));
                    return Some(d);
                }
                _ => self.log(1, || format!("{}: unusable debug file", p.display())),
            }
        }
        None
    }

    /// A module built from the debug file alone (the binary is gone or has
    /// changed): debug files keep the program headers, symbols and DWARF.
    fn debug_module_by_build_id(&mut self, id: &[u8]) -> Option<ModuleId> {
        if let Some(r) = self.by_build_id.get(id) {
            return *r;
        }
        let mut found = None;
        for p in self.build_id_paths(id) {
            if !p.is_file() {
                continue;
            }
            if let Ok(d) = self.open_elf(&p) {
                if d.build_id.as_deref() == Some(id) && !d.segments.is_empty() {
                    self.log(1, || format!("using debug file {} by build id", p.display()));
                    let key = std::fs::metadata(&p).ok().map(|md| file_key(&md));
                    found = Some(self.add_module(d, None, key));
                    break;
                }
            }
        }
        if self.by_build_id.len() >= MAX_KEYS {
            // Those found stay: each names a module (made once).
            self.by_build_id.retain(|_, m| m.is_some());
        }
        self.by_build_id.insert(id.to_vec(), found);
        found
    }

    /// `lookup_offset` as text for a line: read from the module's index
    /// when it has one (as fast as the cache of answers, which it skips),
    /// and written to `texts`.
    fn answer_offset(
        &mut self,
        id: ModuleId,
        offset: u64,
        back: u64,
        texts: &mut Vec<u8>,
    ) -> Result<Answer, Reason> {
        let m = &mut self.modules[id];
        if let Some(ix) = &mut m.index {
            let vaddr = elf::offset_to_vaddr(&m.segments, offset).ok_or(Reason::Unmapped)?;
            let start = texts.len();
            return ix.answer(vaddr, back, texts).map(|()| Answer::Written(start..texts.len()));
        }
        self.lookup_offset(id, offset, back).map(Answer::Made)
    }

    /// The answer at file offset `offset`, for a frame `back` bytes
    /// further (a return address).
    fn lookup_offset(&mut self, id: ModuleId, offset: u64, back: u64) -> Outcome {
        let verbose = self.opts.verbose;
        let inlined = self.opts.inlined;
        let m = &mut self.modules[id];
        let Some(vaddr) = elf::offset_to_vaddr(&m.segments, offset) else {
            return Err(Reason::Unmapped);
        };
        if let Some(r) = m.answers.get(&(vaddr, back)) {
            return r.clone();
        }
        let r = m.lookup_vaddr(vaddr, inlined, verbose).map(|r| Arc::new(r.shifted(back)));
        if m.answers.len() >= MAX_CACHED_ANSWERS {
            m.answers.clear();
        }
        m.answers.insert((vaddr, back), r.clone());
        r
    }
}

/// Identity of a file: device, inode, size and modification time.
type FileKey = (u64, u64, u64, i64);

fn file_key(md: &std::fs::Metadata) -> FileKey {
    (md.dev(), md.ino(), md.size(), md.mtime())
}

/// What the resolvers made from one another by [`Resolver::fresh`] share.
#[derive(Clone, Default)]
struct Shared(Arc<SharedInner>);

#[derive(Default)]
struct SharedInner {
    /// The DWARF indexes of the files loaded so far.
    dwarf: Mutex<FxHashMap<FileKey, Arc<crate::dwarf::Index>>>,
    /// Messages said under -v, so that a file loaded by each thread is
    /// reported once.
    said: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    /// The DWARF index of the file `key`, made from `secs` unless another
    /// resolver already made it.
    fn dwarf(&self, key: Option<FileKey>, secs: elf::DwarfSections) -> Arc<crate::dwarf::Index> {
        let lock = || self.0.dwarf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = key.and_then(|k| lock().get(&k).cloned()) {
            return index;
        }
        // Made unlocked (it reads .debug_aranges): the other threads go on
        // with other files; should two make one at once, the first kept wins.
        let index = Arc::new(crate::dwarf::Index::new(secs));
        let Some(key) = key else { return index };
        lock().entry(key).or_insert(index).clone()
    }

    /// Whether `msg` is said for the first time, as far as the last
    /// `MAX_KEYS` messages go: a long run under -v meets a message per
    /// process that exits, and keeping them all would grow without bound.
    fn first_time(&self, msg: &str) -> bool {
        let mut said = self.0.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.contains(msg) {
            return false;
        }
        if said.len() >= MAX_KEYS {
            said.clear();
        }
        said.insert(msg.to_string())
    }
}

/// A module's DWARF lookup structures, set up on first use (or found
/// among the shared ones).
fn dwarf_index<'a>(
    dwarf: &'a mut Option<DwarfState>,
    shared: &Shared,
) -> Option<&'a crate::dwarf::Index> {
    if let Some(DwarfState::Pending(..)) = dwarf {
        if let Some(DwarfState::Pending(secs, key)) = dwarf.take() {
            *dwarf = Some(DwarfState::Ready(shared.dwarf(key, secs)));
        }
    }
    match dwarf {
        Some(DwarfState::Ready(index)) => Some(index),
        _ => None,
    }
}

impl Module {
    fn lookup_vaddr(
        &mut self,
        vaddr: u64,
        want_inlined: bool,
        verbose: u8,
    ) -> Result<Resolution, Reason> {
        let mut res = Resolution::default();
        if let Some((i, start)) = self.symbols.lookup(vaddr) {
            let name = match self.demangled.get(&i) {
                Some(n) => n.clone(),
                None => {
                    let n: Arc<str> = Arc::from(demangle(&self.symbols.name(i)));
                    self.demangled.insert(i, n.clone());
                    n
                }
            };
            // A name the file does not hold reads as "": DWARF may name it.
            res.sym = (!name.is_empty()).then_some(name);
            res.sym_offset = Some(vaddr - start);
        }
        // Outside code, DWARF knows only the ranges of functions the linker
        // dropped, which it leaves at address 0 (addr2line answers "??").
        let code = elf::is_code(&self.segments, vaddr);
        if let Some(index) = dwarf_index(&mut self.dwarf, &self.shared).filter(|_| code) {
            let mut frames: Vec<DwarfFrame> = Vec::new();
            // A unit that .debug_aranges names but that knows nothing of the
            // address (code without line info) is the answer: no other unit
            // covers it, and asking the full context would parse them all.
            if let Some(ctx) = index.context_for(vaddr, verbose) {
                // The outermost function is the symbol's, when there is one.
                let outer_name = res.sym.is_none();
                dwarf_frames(
                    &ctx,
                    vaddr,
                    want_inlined,
                    outer_name,
                    &mut self.dwarf_names,
                    &mut self.files,
                    &mut frames,
                );
            }
            if let Some((name, file, line)) = frames.pop() {
                res.file = file;
                res.line = line;
                if res.sym.is_none() {
                    res.sym = name;
                }
                res.inlined = frames
                    .into_iter()
                    .map(|(sym, file, line)| Inlined { sym, file, line })
                    .collect();
            }
        }
        if res.sym.is_none() && res.file.is_none() {
            return Err(Reason::NoSymbols);
        }
        Ok(res)
    }
}

/// Parse `data` as an ELF file and resolve addresses in it the way a frame
/// would be: for the fuzz target and the mutation test.
pub fn fuzz_elf(data: &[u8]) {
    let Ok(elf) = ElfFile::parse(data) else { return };
    let mut r = Resolver::new(Options::default());
    let mut probes: Vec<u64> =
        elf.segments.iter().flat_map(|s| [s.offset, s.offset.wrapping_add(s.filesz / 2)]).collect();
    probes.extend((0..16u64).map(|i| i * 0x40 + 0x1000));
    let id = r.add_module(elf, None, None);
    for off in probes {
        let _ = r.lookup_offset(id, off, 0);
        let _ = r.lookup_offset(id, off.wrapping_add(3), 1);
    }
}

/// The file a frame's `module` names: read back by the rule our tools
/// write non-UTF-8 names by (each bad byte as `\xHH`).
fn module_path(module: &str) -> Cow<'_, Path> {
    match leakd_common::text::string_to_bytes(module) {
        Some(bytes) => Cow::Owned(PathBuf::from(std::ffi::OsString::from_vec(bytes))),
        None => Cow::Borrowed(Path::new(module)),
    }
}

/// A DWARF unit a line will use for the first time: the file's index, an
/// address in the unit, and the unit.
pub(crate) type ColdTarget = (Arc<crate::dwarf::Index>, u64, usize);

/// Parse the units of `targets` for their first use with up to `threads`
/// threads, this one among them, so that a line needing many units waits
/// for the slowest parse rather than for their sum. Each unit is parsed as
/// answering its address parses it (its context and line program, and with
/// `inlined` its functions), and so only once: the answers that follow find
/// it ready. Returns how many units were aimed at (0: too few to bother).
pub(crate) fn warm_units(
    mut targets: Vec<ColdTarget>,
    threads: usize,
    inlined: bool,
    verbose: u8,
) -> usize {
    // Largest first: each thread takes the next unit when it is done, so
    // the longest parses start at once and the short ones fill in after
    // (one thread taking the two largest in turn took as long as no
    // threads at all). A unit's targets end up side by side, to keep one.
    targets.sort_by_key(|t| (std::cmp::Reverse(t.0.unit_code_bytes(t.2)), Arc::as_ptr(&t.0), t.2));
    targets.dedup_by_key(|t| (Arc::as_ptr(&t.0), t.2));
    if targets.len() < 2 || threads < 2 {
        return 0;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        while let Some((index, vaddr, _)) =
            targets.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        {
            let Some(ctx) = index.context_for(*vaddr, verbose) else { continue };
            if !inlined {
                let _ = ctx.find_location(*vaddr);
            } else if let Ok(mut frames) = ctx.find_frames(*vaddr).skip_all_loads() {
                while let Ok(Some(_)) = frames.next() {}
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(targets.len()) {
            // A thread that cannot be made leaves its share to the others.
            if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                break;
            }
        }
        work();
    });
    targets.len()
}

/// Demangled DWARF names by where their bytes lie (address, length), so
/// that a hit costs neither a UTF-8 check nor hashing a long mangled name.
/// Every name lies in the buffers of one module's DWARF index (the file's
/// mapping, or sections inflated from it), which the module holds as long
/// as this cache: an address is never reused for another name. Never share
/// one cache between modules.
pub(crate) type NameCache = FxHashMap<(usize, usize), Arc<str>>;

/// The frames addr2line reports at `vaddr`, innermost first (only the
/// location, as one frame, without `want_inlined`). The outermost frame is
/// named only with `outer_name`.
pub(crate) fn dwarf_frames(
    ctx: &addr2line::Context<Reader>,
    vaddr: u64,
    want_inlined: bool,
    outer_name: bool,
    names: &mut NameCache,
    files: &mut FxHashMap<String, Arc<str>>,
    frames: &mut Vec<DwarfFrame>,
) {
    if want_inlined {
        if let Ok(mut it) = ctx.find_frames(vaddr).skip_all_loads() {
            // Each frame is named once the next one shows it is not the last.
            let mut unnamed: Option<Reader> = None;
            while let Ok(Some(f)) = it.next() {
                if let (Some(raw), Some(last)) = (unnamed.take(), frames.last_mut()) {
                    last.0 = Some(demangle_cached(names, &raw));
                }
                unnamed = f.function.map(|n| n.name);
                let (file, line) = match f.location {
                    Some(l) => (l.file.map(|s| intern(files, s)), l.line),
                    None => (None, None),
                };
                frames.push((None, file, line));
                if frames.len() >= 256 {
                    break;
                }
            }
            if let (true, Some(raw), Some(last)) = (outer_name, unnamed, frames.last_mut()) {
                last.0 = Some(demangle_cached(names, &raw));
            }
        }
    } else if let Ok(Some(l)) = ctx.find_location(vaddr) {
        frames.push((None, l.file.map(|s| intern(files, s)), l.line));
    }
}

fn demangle_cached(cache: &mut NameCache, raw: &Reader) -> Arc<str> {
    let bytes = raw.bytes();
    cache
        .entry((bytes.as_ptr() as usize, bytes.len()))
        .or_insert_with(|| Arc::from(demangle(&leakd_common::text::to_text(bytes))))
        .clone()
}

fn intern(files: &mut FxHashMap<String, Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = files.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    files.insert(s.to_string(), a.clone());
    a
}

/// Rust (legacy and v0) and C++ (Itanium) names, readable. Rust's legacy
/// scheme is a subset of C++'s, so it is tried first; its hash is dropped.
pub fn demangle(name: &str) -> String {
    if name.starts_with("_R") || name.starts_with("_ZN") || name.starts_with("__ZN") {
        if let Ok(d) = rustc_demangle::try_demangle(name) {
            let s = format!("{d:#}");
            // A C++ nested name also parses as legacy Rust; only trust it when
            // it was Rust's (a v0 name, or one ending in a 17h<hash>E path).
            if name.starts_with("_R") || looks_like_rust_legacy(name) {
                return s;
            }
        }
    }
    if name.contains('$') && !name.starts_with("_Z") {
        if let Some(d) = decode_rust_escapes(name) {
            return d;
        }
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle() {
                return s;
            }
        }
    }
    name.to_string()
}

/// DWARF gives some Rust functions (inlined closures, trait impls) by their
/// unmangled-but-escaped name, `_$LT$T$u20$as$u20$a..B$GT$::f`. Decode the
/// escapes the legacy scheme uses; `None` when it is not such a name.
fn decode_rust_escapes(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for (i, seg) in name.split("::").enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        let mut rest = seg.strip_prefix("_$").map_or(seg, |r| &seg[seg.len() - r.len() - 1..]);
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                out.push_str("::");
                rest = r;
            } else if let Some(r) = rest.strip_prefix('$') {
                let end = r.find('$')?;
                let esc = &r[..end];
                let c = match esc {
                    "SP" => '@',
                    "BP" => '*',
                    "RF" => '&',
                    "LT" => '<',
                    "GT" => '>',
                    "LP" => '(',
                    "RP" => ')',
                    "C" => ',',
                    _ => char::from_u32(u32::from_str_radix(esc.strip_prefix('u')?, 16).ok()?)?,
                };
                out.push(c);
                rest = &r[end + 1..];
            } else {
                let n = rest.find(['$', '.']).unwrap_or(rest.len()).max(1);
                out.push_str(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
    Some(out)
}

fn looks_like_rust_legacy(name: &str) -> bool {
    // ...17h<16 hex digits>E, at the end or before a suffix such as ".llvm.123".
    let b = name.as_bytes();
    name.match_indices("17h").any(|(i, _)| {
        let hash = b.get(i + 3..i + 19);
        hash.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            && b.get(i + 19) == Some(&b'E')
            && matches!(b.get(i + 20), None | Some(b'.'))
    })
}

/// The longest build id accepted, in bytes (GNU ids are 20; 64 leaves room
/// for any hash a linker may use).
const BUILD_ID_MAX: usize = 64;

/// A build id parsed from a frame's hex string. Kept inline: it is parsed
/// for every frame, so parsing must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildId {
    len: u8,
    bytes: [u8; BUILD_ID_MAX],
}

impl std::ops::Deref for BuildId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Parse a hex build id; `None` when empty.
pub fn parse_build_id(s: &str) -> Result<Option<BuildId>, String> {
    let s = s.trim().as_bytes();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() % 2 != 0 || s.len() > 2 * BUILD_ID_MAX {
        return Err(format!(
            "build_id must be an even number of hex digits, at most {}",
            2 * BUILD_ID_MAX
        ));
    }
    let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(|| "build_id is not hex".to_string());
    let mut id = BuildId { len: (s.len() / 2) as u8, bytes: [0; BUILD_ID_MAX] };
    for (b, pair) in id.bytes.iter_mut().zip(s.chunks_exact(2)) {
        *b = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_legacy_v0_and_cpp() {
        assert_eq!(demangle("_ZN4core3fmt5write17h0123456789abcdefE"), "core::fmt::write");
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(
            demangle("_RNvMNtCs21hi0yVfW1J_5tests5innerNtB2_6Struct3foo"),
            "<tests::inner::Struct>::foo"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("_Z3addii"), "add(int, int)");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(
            demangle(
                "_$LT$$u5b$u8$u5d$$u20$as$u20$scroll..pread..Pread$LT$Ctx$C$E$GT$$GT$::gread_with"
            ),
            "<[u8] as scroll::pread::Pread<Ctx,E>>::gread_with"
        );
        assert_eq!(demangle("a$b"), "a$b");
        assert_eq!(
            demangle("_ZN65_$LT$cpp_demangle..ast..LambdaSig$u20$as$u20$core..fmt..Debug$GT$3fmt17h1e8ad53145852c9fE"),
            "<cpp_demangle::ast::LambdaSig as core::fmt::Debug>::fmt"
        );
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE.llvm.42"), "foo::bar");
    }

    /// A long run meets new processes, paths, module names and build ids
    /// without end: what is kept of them stays bounded, and a process still
    /// in the stream keeps its maps.
    #[test]
    fn caches_keyed_by_input_stay_bounded() {
        let mut r = Resolver::new(Options::default());
        let me = std::process::id();
        let addr = caches_keyed_by_input_stay_bounded as *const () as u64;
        let mut sizes = (0, 0, 0, 0);
        for i in 0..(MAX_KEYS + 100) as u32 {
            r.next_generation();
            assert!(r.resolve_pid_addr(me, addr, 0, None).outcome.is_ok());
            // Above any pid_max: no such process, whose failure is kept too.
            assert_eq!(
                r.resolve_pid_addr(0x4000_0000 + i, 0x1000, 0, None).outcome.err(),
                Some(Reason::NoProcess)
            );
            let gone = format!("/no/such/dir/{i}");
            assert_eq!(
                r.resolve_module_offset(&gone, 0x10, 0, Some(&i.to_le_bytes()), Some(me)).err(),
                Some(Reason::FileMissing)
            );
            sizes = (
                sizes.0.max(r.pids.len()),
                sizes.1.max(r.by_path.len()),
                sizes.2.max(r.by_name.len()),
                sizes.3.max(r.by_build_id.len()),
            );
        }
        // Each bound reached, none passed (paths come two per frame: rooted
        // and as given).
        assert_eq!((sizes.0, sizes.2, sizes.3), (MAX_PIDS, MAX_KEYS, MAX_KEYS));
        assert!((MAX_KEYS - 1..=MAX_KEYS).contains(&sizes.1), "{} paths", sizes.1);
        assert!(r.pids.contains_key(&me), "the process in use lost its maps");
        assert_eq!(r.pids[&me].generation, 1, "its maps were read again");
    }

    /// Said once, until so many others were said that the first is
    /// forgotten.
    #[test]
    fn messages_said_once_within_a_bound() {
        let shared = Shared::default();
        assert!(shared.first_time("a"));
        assert!(!shared.first_time("a"));
        for i in 1..MAX_KEYS {
            assert!(shared.first_time(&i.to_string()));
        }
        assert!(!shared.first_time("a"));
        assert!(shared.first_time("one too many"));
        assert!(shared.first_time("a"));
        assert!(shared.0.said.lock().unwrap().len() <= MAX_KEYS);
    }

    /// Units parsed at once on three threads answer as units parsed on
    /// first use: the same answers as a resolver of its own, and no unit
    /// left cold.
    #[test]
    fn units_warmed_at_once_answer_the_same() {
        let exe = std::env::current_exe().unwrap();
        let mut a = Resolver::new(Options::default());
        let mut other = Resolver::new(Options::default());
        let id = a.load_path(&exe, &exe).unwrap();
        let addrs: Vec<u64> = a.modules[id].symbols.boundaries().step_by(53).collect();
        let m = &mut a.modules[id];
        dwarf_index(&mut m.dwarf, &m.shared);
        let Some(DwarfState::Ready(index)) = &m.dwarf else { panic!("no DWARF index") };
        let index = index.clone();
        let targets: Vec<ColdTarget> = addrs
            .iter()
            .filter_map(|&v| index.cold_unit(v).map(|u| (index.clone(), v, u)))
            .collect();
        let units = warm_units(targets, 3, true, 0);
        assert!(units > 20, "{units} units warmed");
        assert!(addrs.iter().all(|&v| index.cold_unit(v).is_none()), "a unit left cold");
        let other_id = other.load_path(&exe, &exe).unwrap();
        for &v in &addrs {
            assert_eq!(
                a.modules[id].lookup_vaddr(v, true, 0),
                other.modules[other_id].lookup_vaddr(v, true, 0),
                "at {v:#x}"
            );
        }
    }

    /// Resolvers made by `fresh` use one parsed DWARF index per file, made
    /// by whichever asks first, and answer the same from it; a resolver
    /// made anew has its own.
    #[test]
    fn fresh_resolvers_share_parsed_dwarf() {
        let exe = std::env::current_exe().unwrap();
        let mut a = Resolver::new(Options::default());
        let mut b = a.fresh();
        let mut other = Resolver::new(Options::default());
        let ia = a.load_path(&exe, &exe).unwrap();
        let addrs: Vec<u64> = a.modules[ia].symbols.boundaries().step_by(97).collect();
        let mut with_lines = 0;
        for r in [&mut a, &mut b, &mut other] {
            let id = r.load_path(&exe, &exe).unwrap();
            let answers: Vec<_> =
                addrs.iter().map(|&v| r.modules[id].lookup_vaddr(v, true, 0)).collect();
            with_lines =
                answers.iter().filter(|x| x.as_ref().is_ok_and(|x| x.line.is_some())).count();
            assert!(with_lines > 20, "{with_lines} of {} answers have a line", addrs.len());
        }
        let index = |r: &Resolver| match r.modules.last().and_then(|m| m.dwarf.as_ref()) {
            Some(DwarfState::Ready(ix)) => ix.clone(),
            _ => panic!("no DWARF index after {with_lines} lookups"),
        };
        assert!(Arc::ptr_eq(&index(&a), &index(&b)));
        assert!(!Arc::ptr_eq(&index(&a), &index(&other)));
        for &v in &addrs {
            let id = a.modules.len() - 1;
            assert_eq!(
                a.modules[id].lookup_vaddr(v, true, 0),
                b.modules[id].lookup_vaddr(v, true, 0),
                "at {v:#x}"
            );
        }
    }

    /// Outside code (the ELF header, read-only data) DWARF knows only the
    /// functions the linker dropped, left at address 0: a Rust debug build
    /// (this test binary) has them. Nothing is answered from them.
    #[test]
    fn no_dwarf_answers_outside_code() {
        let exe = std::env::current_exe().unwrap();
        let mut r = Resolver::new(Options::default());
        let id = r.load_path(&exe, &exe).unwrap();
        let m = &mut r.modules[id];
        let data: Vec<u64> = m
            .segments
            .iter()
            .filter(|s| !s.exec)
            .flat_map(|s| [s.vaddr, s.vaddr + 0x10, s.vaddr + s.filesz / 2])
            .collect();
        assert!(data.len() >= 3, "{:?}", m.segments);
        for v in data {
            let a = m.lookup_vaddr(v, true, 0);
            assert!(
                a.as_ref()
                    .map_or(true, |a| a.file.is_none() && a.line.is_none() && a.inlined.is_empty()),
                "{v:#x}: {a:?}"
            );
        }
        // Code still is.
        let starts: Vec<u64> = m.symbols.boundaries().step_by(2).step_by(101).collect();
        let with_file = starts
            .iter()
            .filter(|&&a| m.lookup_vaddr(a, true, 0).is_ok_and(|a| a.file.is_some()))
            .count();
        assert!(with_file * 2 > starts.len(), "{with_file} of {}", starts.len());
    }

    /// A poor man's fuzzer that runs with every `cargo test`: a real binary
    /// with DWARF, truncated and with bytes flipped, must never panic.
    #[test]
    fn mutated_elf_files_never_panic() {
        let dir = std::env::temp_dir().join(format!("symres-mutate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("prog");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/symres/prog.c");
        // gcc is on every machine this builds on (the leaker needs it).
        let ok =
            std::process::Command::new("gcc").args(["-g", "-O1", "-o"]).arg(&bin).arg(src).status();
        assert!(ok.is_ok_and(|s| s.success()), "gcc builds the fixture");
        let orig = std::fs::read(&bin).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ElfFile::parse(&orig).is_ok(), "the unmutated file parses");
        fuzz_elf(&orig);
        let mut parsed = 0;
        let mut next = crate::testing::rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..400 {
            let mut data = orig.clone();
            if i % 10 == 0 {
                data.truncate((next() as usize) % orig.len());
            }
            for _ in 0..(1 + next() % 16) {
                let at = (next() as usize) % data.len().max(1);
                if let Some(b) = data.get_mut(at) {
                    *b = next() as u8;
                }
            }
            parsed += usize::from(ElfFile::parse(&data).is_ok());
            fuzz_elf(&data);
        }
        // Most flips miss the headers: the lookups must really have run.
        assert!(parsed > 100, "only {parsed} of 400 mutated files parsed");
    }

    #[test]
    fn json_fields_shift_only_the_offset() {
        let r = Resolution {
            sym: Some("f".into()),
            sym_offset: Some(0x10),
            file: Some("a.c".into()),
            line: Some(3),
            inlined: vec![Inlined { sym: Some("g".into()), file: None, line: Some(4) }],
            json: Default::default(),
        };
        assert_eq!(
            r.json_fields(),
            r#""sym":"f","sym_offset":"0x10","file":"a.c","line":3,"inlined":[{"sym":"g","line":4}]"#
        );
        assert_eq!(
            r.clone().shifted(1).json_fields(),
            r#""sym":"f","sym_offset":"0x11","file":"a.c","line":3,"inlined":[{"sym":"g","line":4}]"#
        );
        let bare = Resolution { file: Some("a.c".into()), ..Default::default() };
        assert_eq!(bare.json_fields(), r#""file":"a.c""#);
        let off = Resolution { sym_offset: Some(0), line: Some(1), ..Default::default() };
        assert_eq!(off.json_fields(), r#""sym_offset":"0x0","line":1"#);
    }

    #[test]
    fn build_ids() {
        assert_eq!(
            parse_build_id("ab01").map(|b| b.map(|b| b.to_vec())),
            Ok(Some(vec![0xab, 0x01]))
        );
        assert_eq!(parse_build_id(&"0f".repeat(64)).map(|b| b.map(|b| b.len())), Ok(Some(64)));
        assert!(parse_build_id(&"0f".repeat(65)).is_err());
        assert_eq!(parse_build_id(""), Ok(None));
        assert!(parse_build_id("abc").is_err());
        assert!(parse_build_id("zz").is_err());
        assert!(parse_build_id("é1").is_err());
        // The per-frame path reuses the last id, and only that one.
        let mut r = Resolver::new(Options::default());
        let bytes = |r: &mut Resolver, s: &str| r.parse_build_id(s).map(|b| b.map(|b| b.to_vec()));
        assert_eq!(bytes(&mut r, "ab01"), Ok(Some(vec![0xab, 0x01])));
        assert_eq!(bytes(&mut r, " ab01 "), Ok(Some(vec![0xab, 0x01])));
        assert_eq!(bytes(&mut r, "cd"), Ok(Some(vec![0xcd])));
        assert!(bytes(&mut r, "zz").is_err());
        assert_eq!(bytes(&mut r, ""), Ok(None));
    }
}
