//! Address → function, file and line, with everything expensive cached.
//!
//! Parsing an ELF file's symbol table and DWARF costs milliseconds to
//! seconds; answering one address from parsed tables costs a binary search.
//! So modules are loaded once (keyed by device and inode, so the same file
//! reached through /proc/PID/root or /proc/PID/map_files is loaded once), and
//! every answer is remembered per module address, since stacks repeat.
//! Failures are cached too: a missing file is looked for once, not once per
//! frame.
//!
//! This module finds the module of a frame (by name, through a process's
//! maps, or the kernel's symbols) and keeps the caches keyed by what the
//! input names; its children do one job each and never import it:
//! `module` (one loaded file and its answers), `debuginfo` (separate debug
//! files), `pids` (processes' maps), `shared` (DWARF shared between
//! threads), `build_id` (frames' build ids).

mod build_id;
mod debuginfo;
mod module;
mod pids;
mod shared;
mod table;

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::answer::{Answer, Outcome, PidFrame, Reason, Resolution};
use crate::elf::{self, ElfFile};
use crate::index::Index;
use crate::kallsyms::Kallsyms;
use crate::log;
use crate::store::StoreDir;
use leakd_common::procmaps::{self, MapEntry};

pub use build_id::{parse_build_id, BuildId, LastBuildId};
use debuginfo::DebugDirs;
use module::{open_file, parse_elf, Module};
use pids::Pids;
pub use shared::ColdTarget;
use shared::{warm_units, FileKey, Shared};
use table::{ModuleId, ModuleTable};

#[derive(Debug, Clone)]
pub struct Options {
    /// Searched before /usr/lib/debug, the way gdb's debug-file-directory is.
    pub debug_dirs: Vec<PathBuf>,
    /// Report inlined functions (costs a little time per new address).
    pub inlined: bool,
    /// Where prebuilt indexes are looked for (`symres --build-index`);
    /// `None`: the default cache directory.
    pub index_dir: Option<PathBuf>,
    /// Threads that may parse the DWARF units one line needs at once, when
    /// lines come few at a time (see `AddrResolver::set_warm`); 0 or 1: none.
    pub warm_threads: usize,
    /// Answer from, and add to, the cache of answers in the index
    /// directory (see `crate::cache`), with inlined functions only; its
    /// files are kept under `cache_size` bytes. Off by default: a library
    /// user opts in, and writes it (`AddrResolver::write_cache`).
    pub cache: bool,
    pub cache_size: u64,
    /// Modules (ELF files) each resolver keeps open at most; the one used
    /// longest ago is closed to make room (and loaded again if needed).
    pub max_modules: usize,
}

/// `Options::max_modules` by default: a process maps tens of files, a
/// stream of many processes' stacks a few hundred, and each open module
/// costs its symbol table and answers (~100 KiB for a small library), a
/// file mapping (256 at most in all, see crate::mmap) and, for a large
/// debug build, its parsed DWARF.
pub const MAX_OPEN_MODULES: u32 = 128;

impl Default for Options {
    fn default() -> Self {
        Options {
            debug_dirs: Vec::new(),
            inlined: true,
            index_dir: None,
            warm_threads: 0,
            cache: false,
            cache_size: crate::cache::DEFAULT_SIZE,
            max_modules: MAX_OPEN_MODULES as usize,
        }
    }
}

/// A frame given by module and file offset (the frame format of an
/// exited process).
#[derive(Debug, Clone, Copy)]
pub struct ModuleFrame<'a> {
    /// The module as frames name it (by our tools' non-UTF-8 rule).
    pub module: &'a str,
    /// The file offset looked up.
    pub offset: u64,
    /// The frame is a return address `back` bytes after `offset`: its
    /// answer's `sym_offset` is moved by that much (see
    /// `Resolution::shifted`).
    pub back: u64,
    /// The frame's GNU build id, if known.
    pub build_id: Option<&'a [u8]>,
    /// With a pid, the module is first looked for inside that process's
    /// mount namespace (/proc/PID/root).
    pub pid: Option<u32>,
}

/// (pid, build id) a module name was looked up with, and the answer.
struct NameHit {
    pid: Option<u32>,
    build_id: Option<Vec<u8>>,
    module: Result<ModuleId, Reason>,
}

/// Entries kept in each cache keyed by what the input names (paths, module
/// names, build ids not installed): a long run meets new ones without end
/// (a path per process under /proc), and each is cheap to find again (a
/// file already loaded is found by its identity).
const MAX_KEYS: usize = 1 << 14;

pub struct AddrResolver {
    opts: Options,
    debug_dirs: DebugDirs,
    modules: ModuleTable,
    by_inode: HashMap<FileKey, ModuleId>,
    /// Path as given (or as built from /proc) → loaded module or failure.
    by_path: HashMap<PathBuf, Result<ModuleId, Reason>>,
    /// Debug file by build id → module, or `None` when not installed.
    by_build_id: HashMap<Vec<u8>, Option<ModuleId>>,
    pids: Pids,
    kallsyms: Option<Result<Kallsyms, Reason>>,
    /// Incremented per input line; bounds /proc/PID/maps rereads.
    generation: u64,
    /// Module name as written in frames → (pid, build id, module), so a
    /// frame costs one hash of its module string, not path building and
    /// file-system calls.
    by_name: FxHashMap<String, Vec<NameHit>>,
    /// The last build id parsed: a stream repeats a handful of ids.
    last_build_id: LastBuildId,
    /// DWARF units, shared with the resolvers made by
    /// [`AddrResolver::fresh`].
    shared: Shared,
    /// Whether lines now come few at a time (see `set_warm`).
    warm: bool,
    /// `prefetch`'s list of modules and addresses, kept for the next line.
    prefetching: Vec<(ModuleId, u64)>,
}

impl AddrResolver {
    pub fn new(opts: Options) -> Self {
        Self::sharing(opts, Shared::default())
    }

    /// A resolver with caches of its own but for the DWARF units in
    /// `shared`.
    fn sharing(opts: Options, shared: Shared) -> Self {
        AddrResolver {
            warm: true,
            prefetching: Vec::new(),
            debug_dirs: DebugDirs::new(opts.debug_dirs.clone()),
            modules: ModuleTable::new(opts.max_modules),
            opts,
            by_inode: HashMap::new(),
            by_path: HashMap::new(),
            by_build_id: HashMap::new(),
            pids: Pids::default(),
            kallsyms: None,
            generation: 0,
            by_name: FxHashMap::default(),
            last_build_id: LastBuildId::default(),
            shared,
        }
    }

    /// Another resolver with the same options that shares this one's
    /// DWARF units (for another thread: the parsed DWARF of a large
    /// binary is most of what a new address costs).
    pub fn fresh(&self) -> Self {
        Self::sharing(self.opts.clone(), self.shared.clone())
    }

    /// Whether the next lines parse the DWARF units each needs at once
    /// (`Options::warm_threads`): worth it when lines come few at a time
    /// and a first line waits for every unit it needs; with many lines at
    /// hand, the resolving threads are busy with them already.
    pub fn set_warm(&mut self, on: bool) {
        self.warm = on;
    }

    /// Whether a line's units are parsed at once now (see `set_warm`).
    pub fn warms(&self) -> bool {
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
        self.last_build_id.parse(s)
    }

    /// Resolve a frame given by module and file offset.
    pub fn resolve_module_offset(&mut self, f: &ModuleFrame<'_>) -> Outcome {
        let inlined = self.opts.inlined;
        self.module_offset_with(f, |m, offset, back| m.lookup_offset(offset, back, inlined))
    }

    /// `resolve_module_offset` for a line: from the module's index when it
    /// has one, written to `texts`.
    pub fn answer_module_offset(
        &mut self,
        f: &ModuleFrame<'_>,
        texts: &mut Vec<u8>,
    ) -> Result<Answer, Reason> {
        let inlined = self.opts.inlined;
        self.module_offset_with(f, |m, offset, back| m.answer_offset(offset, back, inlined, texts))
    }

    /// Start fetching what answering `frames` (a line's) from caches of
    /// answers or symbol tables will read, stage by stage for all of them
    /// (see `Module::prefetch`), so that their cache misses overlap.
    pub fn prefetch(&mut self, frames: &[ModuleFrame<'_>]) {
        let mut targets = std::mem::take(&mut self.prefetching);
        targets.clear();
        // A line's frames name one module or a few, one after another.
        let mut last: Option<(&ModuleFrame, Option<ModuleId>)> = None;
        for f in frames {
            let id = match last {
                Some((l, id))
                    if l.module == f.module && l.build_id == f.build_id && l.pid == f.pid =>
                {
                    id
                }
                _ => self.module_id(f),
            };
            last = Some((f, id));
            let m = id.and_then(|id| Some((id, self.modules.get_mut(id)?)));
            if let Some((id, v)) = m.and_then(|(id, m)| Some((id, m.prefetch_vaddr(f.offset)?))) {
                targets.push((id, v));
            }
        }
        for stage in 0..3 {
            for &(id, vaddr) in &targets {
                if let Some(m) = self.modules.get_mut(id) {
                    m.prefetch(vaddr, stage);
                }
            }
        }
        self.prefetching = targets;
    }

    /// The open module of the frame `f` (loaded if need be).
    fn module_id(&mut self, f: &ModuleFrame<'_>) -> Option<ModuleId> {
        let find = |r: &Self| {
            let hits = r.by_name.get(f.module)?;
            let hit =
                hits.iter().find(|h| h.pid == f.pid && h.build_id.as_deref() == f.build_id)?;
            hit.module.ok().filter(|&id| r.modules.is_open(id))
        };
        if let Some(id) = find(self) {
            return Some(id);
        }
        let _ = self.module_offset_with(f, |_, _, _| Ok(()));
        find(self)
    }

    /// `warm_units` on `Options::warm_threads` threads (said under -vv).
    pub fn warm(&self, targets: Vec<ColdTarget>) {
        let threads = self.opts.warm_threads;
        let n = warm_units(targets, threads, self.opts.inlined);
        if n > 0 {
            log::log!(2, "parsing {n} DWARF units at once on {} threads", threads.min(n));
        }
    }

    /// Where answering the frame `f` would parse a DWARF unit for the first
    /// time: the file's DWARF units, the address, and the unit (one that
    /// .debug_aranges names). `None` otherwise: the module has an index,
    /// the answer is cached, the unit's context is made already, or there
    /// is no such module, code or DWARF.
    pub fn cold_target(&mut self, f: &ModuleFrame<'_>) -> Option<ColdTarget> {
        let found = self.module_offset_with(f, |m, offset, back| {
            let vaddr =
                elf::offset_to_vaddr(&m.segments, offset).filter(|&v| elf::is_code(&m.segments, v));
            let Some(vaddr) = vaddr.filter(|&v| {
                m.index.is_none() && !m.answers.contains_key(&(v, back)) && !m.cached(v)
            }) else {
                return Ok(None);
            };
            let Some(units) = m.units() else { return Ok(None) };
            Ok(units.cold_unit(vaddr).map(|unit| ColdTarget { units: units.clone(), vaddr, unit }))
        });
        found.ok().flatten()
    }

    /// The module, then `look` (module, file offset, `back`) for the answer.
    /// The module is named as frames write it, and that is the key of its
    /// cache: a hit costs one hash, and only a miss turns it into a path.
    fn module_offset_with<T>(
        &mut self,
        f: &ModuleFrame<'_>,
        look: impl FnOnce(&mut Module, u64, u64) -> Result<T, Reason>,
    ) -> Result<T, Reason> {
        let ModuleFrame { module, offset, back, build_id, pid } = *f;
        if let Some(hits) = self.by_name.get(module) {
            if let Some(hit) =
                hits.iter().find(|h| h.pid == pid && h.build_id.as_deref() == build_id)
            {
                match hit.module {
                    Err(r) => return Err(r),
                    Ok(id) => {
                        if let Some(m) = self.modules.get_mut(id) {
                            return look(m, offset, back);
                        }
                        // Closed since: looked for again below.
                    }
                }
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
        list.retain(|h| h.pid != pid || h.build_id.as_deref() != build_id);
        list.push(NameHit { pid, build_id: build_id.map(<[u8]>::to_vec), module: r });
        self.look_in(r, offset, back, look)
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
    /// (`back` as in `ModuleFrame`; the offset returned is the frame's,
    /// `back` bytes after `addr`'s).
    pub fn resolve_pid_addr(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
    ) -> PidFrame {
        let inlined = self.opts.inlined;
        self.pid_addr_with(pid, addr, back, build_id, |m, offset, back| {
            m.lookup_offset(offset, back, inlined)
        })
    }

    /// `resolve_pid_addr` for a line: from the module's index when it has
    /// one.
    pub fn answer_pid_addr(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
        texts: &mut Vec<u8>,
    ) -> PidFrame<Answer> {
        let inlined = self.opts.inlined;
        self.pid_addr_with(pid, addr, back, build_id, |m, offset, back| {
            m.answer_offset(offset, back, inlined, texts)
        })
    }

    /// The mapping, then `look` (module, file offset, `back`) for the answer.
    fn pid_addr_with<T>(
        &mut self,
        pid: u32,
        addr: u64,
        back: u64,
        build_id: Option<&[u8]>,
        look: impl FnOnce(&mut Module, u64, u64) -> Result<T, Reason>,
    ) -> PidFrame<T> {
        let unmapped = |reason| PidFrame { module: None, offset: None, outcome: Err(reason) };
        let mapping = match self.pids.mapping(pid, addr, self.generation) {
            Ok(m) => m,
            Err(reason) => return unmapped(reason),
        };
        let entry = mapping.entry;
        let Some(path) = entry.path.as_deref() else { return unmapped(Reason::Unmapped) };
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
        let id = match mapping
            .module
            .filter(|r| r.is_err() || r.is_ok_and(|id| self.modules.is_open(id)))
        {
            Some(r) => r,
            None => {
                // The mapping is copied only when its module is first loaded.
                let (slot, entry) = (mapping.slot, entry.clone());
                let r = match entry.path.as_deref() {
                    Some(p) => self.module_of_mapping(pid, &entry, p, build_id),
                    None => Err(Reason::Unmapped),
                };
                self.pids.set_module(pid, slot, r);
                r
            }
        };
        let outcome = self.look_in(id, offset, back, look);
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
            && crate::files::open_regular(&rooted)
                .and_then(|f| f.metadata())
                .is_ok_and(|m| m.ino() == entry.inode || entry.inode == 0);
        let candidates = if same_file { vec![rooted, map_file] } else { vec![map_file, rooted] };
        self.module_for(&candidates, path, build_id)
    }

    /// Kernel text address, through /proc/kallsyms (`back` as in
    /// `ModuleFrame`).
    pub fn resolve_kernel(&mut self, addr: u64, back: u64) -> Outcome {
        if self.kallsyms.is_none() {
            let k = Kallsyms::load(Path::new("/proc/kallsyms"));
            if let Err(r) = &k {
                log::once(1, || format!("/proc/kallsyms: {}", r.as_str()));
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
                    let have = self.modules.get(id).and_then(|m| m.build_id.as_deref());
                    match (build_id, have) {
                        (Some(want), Some(have)) if want != have => {
                            // The file may have been replaced since it was loaded.
                            if let Ok(id2) = self.reload_if_changed(path, nominal, id) {
                                let have =
                                    self.modules.get(id2).and_then(|m| m.build_id.as_deref());
                                if have == Some(want) {
                                    return Ok(id2);
                                }
                            }
                            log::once(1, || {
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
        let (_, key) = open_file(path)?;
        if self.by_inode.get(&key) == Some(&old) {
            return Ok(old);
        }
        self.by_path.remove(path);
        self.load_path(path, nominal)
    }

    fn load_path(&mut self, path: &Path, nominal: &Path) -> Result<ModuleId, Reason> {
        if let Some(&r) = self.by_path.get(path) {
            if r.is_err() || r.is_ok_and(|id| self.modules.is_open(id)) {
                return r;
            }
        }
        let r = self.load_path_uncached(path, nominal);
        if self.by_path.len() >= MAX_KEYS {
            self.by_path.clear();
        }
        self.by_path.insert(path.to_path_buf(), r);
        r
    }

    fn load_path_uncached(&mut self, path: &Path, nominal: &Path) -> Result<ModuleId, Reason> {
        let (file, key) = open_file(path)?;
        if let Some(&id) = self.by_inode.get(&key) {
            if self.modules.is_open(id) {
                return Ok(id);
            }
        }
        let elf = parse_elf(path, file)?;
        let debug = if elf.dwarf.is_none() {
            self.debug_dirs.find_debug_file(&elf, nominal, path)
        } else {
            None
        };
        let id = self.add_module(elf, debug, Some(key));
        self.by_inode.insert(key, id);
        Ok(id)
    }

    /// `key`: the identity of the file (the same file gives the same
    /// DWARF), under which its DWARF units are shared.
    fn add_module(
        &mut self,
        elf: ElfFile,
        debug: Option<ElfFile>,
        key: Option<FileKey>,
    ) -> ModuleId {
        let index = elf.build_id.as_deref().and_then(|id| self.load_index(id));
        let mut m = Module::new(elf, debug, key, &self.shared, index);
        if self.opts.cache && self.opts.inlined && m.index.is_none() && !m.provenance.is_empty() {
            if let (Some(id), Some(dir)) = (m.build_id.as_deref(), self.index_dir()) {
                m.learn = true;
                let load = || match StoreDir::open(&dir) {
                    Ok(store) => crate::cache::load(&store, id, &m.provenance),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        log::once(1, || format!("cache: {e}"));
                        None
                    }
                };
                m.cache = self.shared.cache_file(id, &m.provenance, load);
            }
        }
        let (id, closed) = self.modules.insert(m);
        if let Some(mut m) = closed {
            // What it learned for the cache is kept.
            self.hand_over(&mut m);
            log::log!(
                2,
                "closed a module used longest ago ({} open at most)",
                self.opts.max_modules
            );
            if let Some(k) = m.key {
                if self.by_inode.get(&k).is_some_and(|&i| !self.modules.is_open(i)) {
                    self.by_inode.remove(&k);
                }
            }
            if self.by_build_id.values().any(|m| m.is_some_and(|i| !self.modules.is_open(i))) {
                let modules = &self.modules;
                self.by_build_id.retain(|_, m| m.is_none_or(|i| modules.is_open(i)));
            }
        }
        id
    }

    /// `look` in module `id` (a module found just now: open).
    fn look_in<T>(
        &mut self,
        id: Result<ModuleId, Reason>,
        offset: u64,
        back: u64,
        look: impl FnOnce(&mut Module, u64, u64) -> Result<T, Reason>,
    ) -> Result<T, Reason> {
        match self.modules.get_mut(id?) {
            Some(m) => look(m, offset, back),
            None => Err(Reason::FileMissing),
        }
    }

    /// Hand what this resolver's modules learned to the cache's writer
    /// (`write_cache`, on any resolver of the stream), once its last line
    /// is answered.
    pub fn finish_cache(&mut self) {
        for m in self.modules.iter_mut() {
            hand_over(&self.shared, m);
        }
    }

    /// `finish_cache` for one module (one being closed, say).
    fn hand_over(&self, m: &mut Module) {
        hand_over(&self.shared, m);
    }

    /// Write what the resolvers of this stream learned (`finish_cache`) to
    /// the cache directory, merged with what is there.
    pub fn write_cache(&mut self) {
        if let Some(mut w) = self.take_cache_write() {
            w.run();
        }
    }

    /// What `write_cache` would write, taken out of the resolvers of this
    /// stream (`finish_cache`), to be written by `CacheWrite::run` later or
    /// elsewhere (in a child process, after the output is out); `None`
    /// without a cache.
    pub fn take_cache_write(&mut self) -> Option<CacheWrite> {
        self.finish_cache();
        let (hits, learned) = self.shared.take_learned();
        if !self.opts.cache {
            return None;
        }
        log::log!(1, "cache: {hits} frames answered from the cache");
        // One entry per build id: each thread's answers together.
        let mut by_id: Vec<crate::cache::Learned> = Vec::new();
        for l in learned {
            match by_id
                .iter_mut()
                .find(|b| b.build_id == l.build_id && b.provenance == l.provenance)
            {
                Some(b) => {
                    b.points.extend(l.points);
                    b.syms.extend(l.syms);
                }
                None => by_id.push(l),
            }
        }
        let dir = self.index_dir()?;
        Some(CacheWrite { dir, size: self.opts.cache_size, learned: by_id })
    }

    fn index_dir(&self) -> Option<PathBuf> {
        self.opts.index_dir.clone().or_else(crate::index::default_dir)
    }

    /// The prebuilt index of a module, if there is a usable one. An index
    /// holds the answers with inlined functions, and only those.
    fn load_index(&self, build_id: &[u8]) -> Option<Index> {
        if !self.opts.inlined {
            return None;
        }
        let dir = self.index_dir()?;
        let store = match StoreDir::open(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::once(1, || format!("index directory: {e}"));
                return None;
            }
        };
        match Index::load(&store, build_id) {
            Ok(Some(ix)) => {
                log::once(1, || {
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
                log::once(1, || e);
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
        let dir = self
            .index_dir()
            .ok_or("no index directory (set HOME, XDG_CACHE_HOME or --index-dir)")?;
        const CLOSED: &str = "closed while indexed";
        let m = self.modules.get_mut(id).ok_or(CLOSED)?;
        let build_id = m.build_id.clone().ok_or("no build id to name its index by")?;
        let mut addrs: Vec<u64> = m.symbols.boundaries().collect();
        if let Some(units) = m.units() {
            units.boundaries(&mut addrs, threads).map_err(|e| format!("unreadable DWARF: {e}"))?;
        }
        // The other threads' resolvers share this one's DWARF.
        let mut others = Vec::new();
        for _ in 1..threads {
            let mut r = self.fresh();
            let id = r.load_path(path, path).map_err(cannot_load)?;
            others.push((r, id));
        }
        type Answerer<'a> = Box<dyn FnMut(u64) -> Result<Resolution, Reason> + Send + 'a>;
        let m = self.modules.get_mut(id).ok_or(CLOSED)?;
        let mut answerers: Vec<Answerer> = vec![Box::new(|a| m.lookup_vaddr(a, true))];
        for (r, id) in &mut others {
            let m = r.modules.get_mut(*id).ok_or(CLOSED)?;
            answerers.push(Box::new(|a| m.lookup_vaddr(a, true)));
        }
        let ix = crate::index::Built::new_threaded(addrs, answerers);
        let bytes = ix.to_bytes(&build_id).ok_or("too large for an index (offsets are 32-bit)")?;
        // Written aside and renamed: a reader never sees half an index,
        // and nothing planted in the directory is written through.
        let store = StoreDir::create(&dir).map_err(|e| e.to_string())?;
        let name = crate::index::file_name(&build_id);
        let mut tmp = store.create_temp(&name).map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut tmp.file, &bytes)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = store.commit(tmp, &name).map_err(|e| e.to_string())?;
        Ok((file, ix.pieces()))
    }

    /// A module built from the debug file alone (the binary is gone or has
    /// changed): debug files keep the program headers, symbols and DWARF.
    fn debug_module_by_build_id(&mut self, id: &[u8]) -> Option<ModuleId> {
        if let Some(&r) = self.by_build_id.get(id) {
            if r.is_none_or(|m| self.modules.is_open(m)) {
                return r;
            }
        }
        let mut found = None;
        for p in self.debug_dirs.build_id_paths(id) {
            let Ok((file, key)) = open_file(&p) else { continue };
            if let Ok(d) = parse_elf(&p, file) {
                if d.build_id.as_deref() == Some(id) && !d.segments.is_empty() {
                    log::once(1, || format!("using debug file {} by build id", p.display()));
                    found = Some(self.add_module(d, None, Some(key)));
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
}

/// A write of the cache of answers (`AddrResolver::take_cache_write`):
/// what a stream's resolvers learned, for its cache directory.
pub struct CacheWrite {
    dir: PathBuf,
    size: u64,
    learned: Vec<crate::cache::Learned>,
}

impl CacheWrite {
    /// Whether there is nothing to write: running it only keeps the
    /// directory under its size (a listing), which costs too little to
    /// hand elsewhere.
    pub fn is_light(&self) -> bool {
        self.learned.iter().all(crate::cache::Learned::is_empty)
    }

    /// Write it, merged with what the directory holds now (the answers
    /// stay, to be dropped or not by the caller: a child process about to
    /// exit need not write to every answer's count of references, each a
    /// page copied from its parent).
    pub fn run(&mut self) {
        let t0 = std::time::Instant::now();
        crate::cache::write(&self.dir, self.size, &mut self.learned);
        log::log!(2, "cache: written in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
}

/// Hand what `m` learned, and its count of frames answered from the
/// cache, to the cache's writer.
fn hand_over(shared: &Shared, m: &mut Module) {
    shared.cache_hits(std::mem::take(&mut m.cache_hits));
    if let Some(l) = m.take_learned() {
        shared.learned(l);
    }
}

/// Parse `data` as an ELF file and resolve addresses in it the way a frame
/// would be: for the fuzz target and the mutation test.
pub fn fuzz_elf(data: &[u8]) {
    let Ok(elf) = ElfFile::parse(data) else { return };
    let mut r = AddrResolver::new(Options::default());
    let mut probes: Vec<u64> =
        elf.segments.iter().flat_map(|s| [s.offset, s.offset.wrapping_add(s.filesz / 2)]).collect();
    probes.extend((0..16u64).map(|i| i * 0x40 + 0x1000));
    let id = r.add_module(elf, None, None);
    let Some(m) = r.modules.get_mut(id) else { return };
    for off in probes {
        let _ = m.lookup_offset(off, 0, true);
        let _ = m.lookup_offset(off.wrapping_add(3), 1, true);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A long run meets new processes, paths, module names and build ids
    /// without end: what is kept of them stays bounded, and a process still
    /// in the stream keeps its maps.
    #[test]
    fn caches_keyed_by_input_stay_bounded() {
        let mut r = AddrResolver::new(Options::default());
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
                r.resolve_module_offset(&ModuleFrame {
                    module: &gone,
                    offset: 0x10,
                    back: 0,
                    build_id: Some(&i.to_le_bytes()),
                    pid: Some(me),
                })
                .err(),
                Some(Reason::FileMissing)
            );
            sizes = (
                sizes.0.max(r.pids.maps.len()),
                sizes.1.max(r.by_path.len()),
                sizes.2.max(r.by_name.len()),
                sizes.3.max(r.by_build_id.len()),
            );
        }
        // Each bound reached, none passed (paths come two per frame: rooted
        // and as given).
        assert_eq!((sizes.0, sizes.2, sizes.3), (pids::MAX_PIDS, MAX_KEYS, MAX_KEYS));
        assert!((MAX_KEYS - 1..=MAX_KEYS).contains(&sizes.1), "{} paths", sizes.1);
        assert!(r.pids.maps.contains_key(&me), "the process in use lost its maps");
        assert_eq!(r.pids.maps[&me].generation, 1, "its maps were read again");
    }

    /// This test binary without its DWARF (symbols only), in a fresh
    /// directory `name`-PID: (the directory, the binary).
    fn stripped_test_binary(name: &str) -> (PathBuf, PathBuf) {
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stripped = dir.join("stripped");
        let ok = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&exe)
            .arg(&stripped)
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "objcopy --strip-debug");
        (dir, stripped)
    }

    /// An answer from a symbol alone is written as found (see
    /// `Module::answer_offset`), not made: its text is byte for byte the
    /// answer `lookup_offset` makes and renders, in a binary without DWARF
    /// (every answer so written) and in one with DWARF (those from DWARF
    /// made as before), for return addresses and not.
    #[test]
    fn answers_written_from_symbols_are_the_answers_made() {
        let exe = std::env::current_exe().unwrap();
        let (dir, stripped) = stripped_test_binary("symres-symtext");
        for (path, all_written) in [(&stripped, true), (&exe, false)] {
            let (mut a, mut b) =
                (AddrResolver::new(Options::default()), AddrResolver::new(Options::default()));
            let (ia, ib) = (a.load_path(path, path).unwrap(), b.load_path(path, path).unwrap());
            let ma = a.modules.get_mut(ia).unwrap();
            let mb = b.modules.get_mut(ib).unwrap();
            let segs = ma.segments.clone();
            let offsets: Vec<u64> = ma
                .symbols
                .boundaries()
                .step_by(5)
                .flat_map(|v| [v, v + 1, v.wrapping_sub(1)])
                .filter_map(|v| {
                    let s = segs.iter().find(|s| s.vaddr <= v && v - s.vaddr < s.filesz)?;
                    Some(v - s.vaddr + s.offset)
                })
                .collect();
            let (mut written, mut made) = (0, 0);
            for &off in &offsets {
                for back in [0, 1] {
                    let mut texts = b"x".to_vec();
                    let got = ma.answer_offset(off, back, true, &mut texts);
                    let want = mb.lookup_offset(off, back, true);
                    match (&got, &want) {
                        (Ok(g), Ok(w)) => {
                            match g {
                                Answer::Written(_) => written += 1,
                                _ => made += 1,
                            }
                            assert_eq!(
                                String::from_utf8_lossy(g.json(&texts)),
                                w.json_fields(),
                                "{} at {off:#x}",
                                path.display()
                            );
                        }
                        (Err(g), Err(w)) => assert_eq!(g, w),
                        _ => panic!("at {off:#x}: {got:?}, {want:?}"),
                    }
                }
            }
            assert!(written + made > 1000, "{written} + {made} answers");
            if all_written {
                assert_eq!(made, 0, "{written} written");
            } else {
                assert!(made > 1000, "{made} made, {written} written");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An answer from a symbol alone is not kept by address, so a frame
    /// met on many lines is looked up (and learned) again on each: the
    /// repeats must not fill what a module may learn for the cache
    /// (`MAX_LEARNED`), or every address met after them goes unlearned
    /// (an answer made, or one from a symbol) and the next run does not
    /// find it in the cache.
    #[test]
    fn repeated_answers_from_symbols_leave_room_to_learn() {
        let (dir, stripped) = stripped_test_binary("symres-symlearn");
        let mut r = AddrResolver::new(Options::default());
        let id = r.load_path(&stripped, &stripped).unwrap();
        let m = r.modules.get_mut(id).unwrap();
        m.learn = true;
        let segs = m.segments.clone();
        let mut texts = Vec::new();
        // Inside functions, each answered from its symbol (written).
        let inside: Vec<u64> = m
            .symbols
            .boundaries()
            .step_by(7)
            .filter_map(|v| {
                let s = segs.iter().find(|s| s.exec && s.vaddr <= v && v - s.vaddr < s.filesz)?;
                Some(v - s.vaddr + s.offset + 1)
            })
            .collect();
        let offsets: Vec<u64> = inside
            .into_iter()
            .filter(|&off| {
                matches!(m.answer_offset(off, 1, true, &mut texts), Ok(Answer::Written(_)))
            })
            .take(10)
            .collect();
        assert_eq!(offsets.len(), 10);
        let _ = m.take_learned();
        let (hot, new) = offsets.split_at(8);
        let mut answer = |m: &mut Module, off: u64| {
            texts.clear();
            let a = m.answer_offset(off, 1, true, &mut texts);
            assert!(matches!(a, Ok(Answer::Written(_))), "at {off:#x}: {a:?}");
        };
        // As many lookups of 8 hot frames as a module may learn answers.
        for _ in 0..crate::cache::MAX_LEARNED / hot.len() {
            for &off in hot {
                answer(m, off);
            }
        }
        // Then an answer made, and one written.
        assert!(m.lookup_offset(new[0], 0, true).is_ok());
        answer(m, new[1]);
        let learned = m.take_learned().unwrap();
        assert_eq!(learned.points.len(), 1, "the answer made is learned");
        let mut at: Vec<u64> = learned.syms.iter().map(|s| s.0).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), 9, "addresses learned: {at:x?}");
        // Nor, handed over, what the stream may learn (`Shared::hand_over`,
        // for all modules and threads): a list not yet full is handed over
        // without its repeats.
        for _ in 0..crate::cache::MAX_LEARNED / 4 / hot.len() {
            for &off in hot {
                answer(m, off);
            }
        }
        assert_eq!(m.take_learned().unwrap().syms.len(), 8);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Units parsed at once on three threads answer as units parsed on
    /// first use: the same answers as a resolver of its own, and no unit
    /// left cold.
    #[test]
    fn units_warmed_at_once_answer_the_same() {
        let exe = std::env::current_exe().unwrap();
        let mut a = AddrResolver::new(Options::default());
        let mut other = AddrResolver::new(Options::default());
        let id = a.load_path(&exe, &exe).unwrap();
        let addrs: Vec<u64> =
            a.modules.get_mut(id).unwrap().symbols.boundaries().step_by(53).collect();
        let Some(index) = a.modules.get_mut(id).unwrap().units().cloned() else {
            panic!("no DWARF index")
        };
        let targets: Vec<ColdTarget> = addrs
            .iter()
            .filter_map(|&vaddr| {
                index.cold_unit(vaddr).map(|unit| ColdTarget { units: index.clone(), vaddr, unit })
            })
            .collect();
        let units = warm_units(targets, 3, true);
        assert!(units > 20, "{units} units warmed");
        assert!(addrs.iter().all(|&v| index.cold_unit(v).is_none()), "a unit left cold");
        let other_id = other.load_path(&exe, &exe).unwrap();
        for &v in &addrs {
            assert_eq!(
                a.modules.get_mut(id).unwrap().lookup_vaddr(v, true),
                other.modules.get_mut(other_id).unwrap().lookup_vaddr(v, true),
                "at {v:#x}"
            );
        }
    }

    /// Resolvers made by `fresh` use one parsed DWARF index and one sorted
    /// symbol table per file, made by whichever asks first, and answer the same from it; a resolver
    /// made anew has its own.
    #[test]
    fn fresh_resolvers_share_parsed_dwarf() {
        let exe = std::env::current_exe().unwrap();
        let mut a = AddrResolver::new(Options::default());
        let mut b = a.fresh();
        let mut other = AddrResolver::new(Options::default());
        let ia = a.load_path(&exe, &exe).unwrap();
        // Every 11th symbol: inlined frames are rare in this debug build,
        // and a sparser sample found 3 or fewer once the binary held
        // LLVM's demangler (many small C++ functions).
        let addrs: Vec<u64> =
            a.modules.get_mut(ia).unwrap().symbols.boundaries().step_by(11).collect();
        let mut with_lines = 0;
        for r in [&mut a, &mut b, &mut other] {
            let id = r.load_path(&exe, &exe).unwrap();
            let answers: Vec<_> = addrs
                .iter()
                .map(|&v| r.modules.get_mut(id).unwrap().lookup_vaddr(v, true))
                .collect();
            with_lines =
                answers.iter().filter(|x| x.as_ref().is_ok_and(|x| x.line.is_some())).count();
            assert!(with_lines > 20, "{with_lines} of {} answers have a line", addrs.len());
        }
        let index = |r: &mut AddrResolver| {
            let id = r.load_path(&exe, &exe).unwrap();
            match r.modules.get(id).and_then(|m| m.dwarf.as_ref()) {
                Some(module::DwarfState::Ready(ix)) => ix.clone(),
                _ => panic!("no DWARF index after {with_lines} lookups"),
            }
        };
        assert!(Arc::ptr_eq(&index(&mut a), &index(&mut b)));
        assert!(!Arc::ptr_eq(&index(&mut a), &index(&mut other)));
        // So is the sorted symbol table (sorted once, by `a`'s first use).
        let sorted = |r: &mut AddrResolver| {
            let id = r.load_path(&exe, &exe).unwrap();
            r.modules.get(id).unwrap().symbols.shared()
        };
        assert!(Arc::ptr_eq(&sorted(&mut a), &sorted(&mut b)));
        assert!(!Arc::ptr_eq(&sorted(&mut a), &sorted(&mut other)));
        let (ida, idb) = (a.load_path(&exe, &exe).unwrap(), b.load_path(&exe, &exe).unwrap());
        let mut inlined_shared = 0;
        for &v in &addrs {
            let (x, y) = (
                a.modules.get_mut(ida).unwrap().lookup_vaddr(v, true),
                b.modules.get_mut(idb).unwrap().lookup_vaddr(v, true),
            );
            assert_eq!(x, y, "at {v:#x}");
            // So are DWARF's names of inlined functions.
            if let (Ok(x), Ok(y)) = (&x, &y) {
                for (i, j) in x.inlined.iter().zip(&y.inlined) {
                    if let (Some(i), Some(j)) = (&i.sym, &j.sym) {
                        assert!(Arc::ptr_eq(i, j), "{i} demangled twice");
                        inlined_shared += 1;
                    }
                }
            }
            // Symbol names are demangled once for both (one string), not
            // for the other stream's resolver.
            let ido = other.load_path(&exe, &exe).unwrap();
            let z = other.modules.get_mut(ido).unwrap().lookup_vaddr(v, true);
            let from_symbols = a.modules.get_mut(ida).unwrap().symbols.lookup(v).is_some();
            if let (true, Ok(Some(x)), Ok(Some(y)), Ok(Some(z))) =
                (from_symbols, x.map(|r| r.sym), y.map(|r| r.sym), z.map(|r| r.sym))
            {
                assert!(Arc::ptr_eq(&x, &y), "{x} demangled twice");
                assert!(!Arc::ptr_eq(&x, &z), "{x} shared with another stream");
            }
        }
        assert!(inlined_shared > 3, "{inlined_shared} inlined names compared");
    }

    /// Outside code (the ELF header, read-only data) DWARF knows only the
    /// functions the linker dropped, left at address 0: a Rust debug build
    /// (this test binary) has them. Nothing is answered from them.
    #[test]
    fn no_dwarf_answers_outside_code() {
        let exe = std::env::current_exe().unwrap();
        let mut r = AddrResolver::new(Options::default());
        let id = r.load_path(&exe, &exe).unwrap();
        let m = r.modules.get_mut(id).unwrap();
        let data: Vec<u64> = m
            .segments
            .iter()
            .filter(|s| !s.exec)
            .flat_map(|s| [s.vaddr, s.vaddr + 0x10, s.vaddr + s.filesz / 2])
            .collect();
        assert!(data.len() >= 3, "{:?}", m.segments);
        for v in data {
            let a = m.lookup_vaddr(v, true);
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
            .filter(|&&a| m.lookup_vaddr(a, true).is_ok_and(|a| a.file.is_some()))
            .count();
        assert!(with_file * 2 > starts.len(), "{with_file} of {}", starts.len());
    }

    /// Issue 18, item 10: a stream naming many distinct files keeps at most
    /// `max_modules` of them open (and their DWARF), closing the one used
    /// longest ago; a closed one is loaded again when named again, with the
    /// same answer.
    #[test]
    fn open_modules_stay_within_their_bound() {
        let dir = std::env::temp_dir().join(format!("symres-lru-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("prog");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/symres/prog.c");
        let ok =
            std::process::Command::new("gcc").args(["-g", "-O1", "-o"]).arg(&bin).arg(src).status();
        assert!(ok.is_ok_and(|s| s.success()), "gcc builds the fixture");
        // Distinct files (inodes) with the same contents.
        let copies: Vec<String> = (0..12)
            .map(|i| {
                let p = dir.join(format!("copy{i}"));
                std::fs::copy(&bin, &p).unwrap();
                p.to_str().unwrap().to_string()
            })
            .collect();
        let mut r = AddrResolver::new(Options { max_modules: 3, ..Options::default() });
        fn frame(module: &str, offset: u64) -> ModuleFrame<'_> {
            ModuleFrame { module, offset, back: 0, build_id: None, pid: None }
        }
        let offset = (0x1000..0x2000)
            .step_by(8)
            .find(|&o| {
                r.resolve_module_offset(&frame(&copies[0], o)).is_ok_and(|a| a.line.is_some())
            })
            .expect("an offset with a line");
        let first = r.resolve_module_offset(&frame(&copies[0], offset)).unwrap();
        let mut most = (0, 0);
        for c in &copies {
            let a = r.resolve_module_offset(&frame(c, offset)).unwrap();
            assert_eq!(a, first, "{c}");
            most = (most.0.max(r.modules.open()), most.1.max(r.shared.dwarf_held()));
        }
        assert_eq!(most, (3, 3), "(modules open, DWARF held) at most");
        assert_eq!(r.by_inode.len(), 3);
        // The first was closed long ago: loaded again, the same answer.
        assert_eq!(r.resolve_module_offset(&frame(&copies[0], offset)).unwrap(), first);
        assert_eq!(r.modules.open(), 3);
        let _ = std::fs::remove_dir_all(&dir);
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
}
