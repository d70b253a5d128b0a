//! One loaded ELF file (with its debug file, if any), and the answers
//! made from its symbols and DWARF.
//!
//! Parsing costs milliseconds to seconds and an answer from parsed tables
//! a binary search, so everything a lookup makes is kept here: answers by
//! address, demangled names, interned file names.
//!
//! But for an answer from a symbol alone (no line info there), which is
//! kept per symbol, not per address: the symbol's name and its `sym`
//! member are made once, and the rest of such an answer is its offset. A
//! line gets it written as found; making, rendering and keeping an answer
//! for each of a large C++ binary's addresses cost more than finding it.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::shared::{FileKey, Shared};
use crate::answer::{Answer, Inlined, Outcome, Reason, Resolution, SymText};
use crate::demangle::demangle_with;
use crate::dwarf::{dwarf_frames, DwarfFrame, NameCache, Units};
use crate::elf::{self, ElfFile, LoadError};
use crate::files;
use crate::index::Index;
use crate::log;
use leakd_common::text::push_hex_string;

/// Answers remembered per module before the cache is reset.
const MAX_CACHED_ANSWERS: usize = 1 << 20;

pub struct Module {
    /// The identity of the file it was loaded from, when known.
    pub key: Option<FileKey>,
    /// Build id of the file whose segments are used (the binary, or the debug
    /// file when the binary itself is gone).
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<elf::Segment>,
    pub symbols: elf::SymbolTable,
    /// Built when the first address is looked up; `None` inside when the
    /// module has no (usable) DWARF.
    pub dwarf: Option<DwarfState>,
    /// Where the DWARF units are shared with other resolvers.
    shared: Shared,
    /// Prebuilt answers for the whole module, when an index was found for
    /// its build id: lines are then answered from it, without symbols or
    /// DWARF (the structured answers of `resolve_*` still come from those).
    pub index: Option<Index>,
    /// The answers earlier runs made (see `crate::cache`), when there is
    /// no index: looked up first, as an index is, but an address it does
    /// not know is looked up in the symbols and DWARF.
    pub cache: Option<crate::cache::CacheFile>,
    /// What the answers are made from (`cache::provenance`), and the
    /// answers made in this run, when they are to be cached (the module
    /// has a build id and no index, and the cache is on).
    pub provenance: Vec<u8>,
    pub learn: bool,
    pub learned: Vec<(u64, u64, Outcome)>,
    /// Answers from a symbol alone, learned as written (see
    /// `answer_offset`): the address, the symbol's start and its `sym`
    /// member; the first `learned_syms_apart` of them at distinct
    /// addresses (see `sort_out_repeats`).
    pub learned_syms: Vec<LearnedSym>,
    learned_syms_apart: usize,
    /// Frames answered from the cache.
    pub cache_hits: u64,
    /// By address looked up, and how far back from the frame's (see
    /// `Resolution::shifted`).
    pub answers: FxHashMap<(u64, u64), Outcome>,
    files: FxHashMap<String, Arc<str>>,
    /// DWARF (linkage) names, demangled, since the same inlined functions
    /// turn up at many addresses.
    dwarf_names: NameCache,
    /// `lookup_vaddr`'s frames, kept for the next lookup.
    frames: Vec<DwarfFrame>,
}

pub enum DwarfState {
    /// Not needed yet; the module's provenance (`cache::provenance`), when
    /// the file's identity is known, names its units among the shared ones.
    Pending(elf::DwarfSections, Option<Vec<u8>>),
    Ready(Arc<Units>),
    Absent,
}

/// Open a file a frame leads to (regular files only, without blocking,
/// inside a process's root: see crate::files), with its identity; why not
/// is said under -v.
pub fn open_file(path: &Path) -> Result<(File, FileKey), Reason> {
    let opened = files::open_regular(path).and_then(|f| {
        let md = f.metadata()?;
        Ok((f, FileKey::of(&md)))
    });
    opened.map_err(|e| {
        log::once(1, || format!("{}: {e}", path.display()));
        Reason::FileMissing
    })
}

/// Open and parse an ELF file, saying under -v what it holds or why not.
pub fn open_elf(path: &Path) -> Result<ElfFile, Reason> {
    let (file, _) = open_file(path)?;
    parse_elf(path, file)
}

/// Parse the ELF file `file` (opened from `path`), saying under -v what
/// it holds or why not.
pub fn parse_elf(path: &Path, file: File) -> Result<ElfFile, Reason> {
    // goblin is fuzzed and its errors are handled, but a panic deep in a
    // parser must cost one frame, not the whole stream.
    let r = std::panic::catch_unwind(|| ElfFile::of_file(file))
        .unwrap_or_else(|_| Err(LoadError::Corrupt("parser panicked".into())));
    match r {
        Ok(e) => {
            log::once(1, || {
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
            log::once(1, || format!("{}: {err}", path.display()));
            Err(Reason::FileMissing)
        }
        Err(e @ LoadError::Corrupt(_)) => {
            log::once(1, || format!("{}: {e}", path.display()));
            Err(Reason::CorruptElf)
        }
    }
}

impl Module {
    /// A module from a binary and its separate debug file; `key`: the
    /// identity of the file, which with what was taken from the debug file
    /// (the provenance) names its symbols and DWARF units among the shared
    /// ones; `index`: its prebuilt answers.
    pub fn new(
        elf: ElfFile,
        debug: Option<ElfFile>,
        key: Option<FileKey>,
        shared: &Shared,
        index: Option<Index>,
    ) -> Module {
        let ElfFile { build_id, segments, symbols, dwarf, .. } = elf;
        let provenance = crate::cache::provenance(
            key.map(|k| k.describe()).as_deref(),
            dwarf.is_some(),
            symbols.len(),
            debug.as_ref().map(|d| {
                (d.build_id.as_deref().unwrap_or_default(), d.symbols.len(), d.dwarf.is_some())
            }),
        );
        let (mut symbols, dwarf) = match debug {
            Some(d) => {
                let symbols = if d.symbols.len() > symbols.len() { d.symbols } else { symbols };
                (symbols, dwarf.or(d.dwarf))
            }
            None => (symbols, dwarf),
        };
        if key.is_some() {
            symbols.share(shared.symbols(&provenance, symbols.shared()));
        }
        Module {
            key,
            build_id,
            segments,
            symbols,
            dwarf: Some(dwarf.map_or(DwarfState::Absent, |d| {
                DwarfState::Pending(d, key.map(|_| provenance.clone()))
            })),
            shared: shared.clone(),
            index,
            cache: None,
            provenance,
            learn: false,
            learned: Vec::new(),
            learned_syms: Vec::new(),
            learned_syms_apart: 0,
            cache_hits: 0,
            answers: FxHashMap::default(),
            files: FxHashMap::default(),
            dwarf_names: FxHashMap::default(),
            frames: Vec::new(),
        }
    }

    /// The module's DWARF lookup structures, set up on first use (or found
    /// among the shared ones).
    pub fn units(&mut self) -> Option<&Arc<Units>> {
        units_of(&mut self.dwarf, &self.shared)
    }

    /// `lookup_offset` as text for a line: read from the module's index
    /// when it has one (as fast as the cache of answers, which it skips),
    /// and written to `texts`.
    pub fn answer_offset(
        &mut self,
        offset: u64,
        back: u64,
        inlined: bool,
        texts: &mut Vec<u8>,
    ) -> Result<Answer, Reason> {
        if let Some(ix) = &mut self.index {
            let vaddr = elf::offset_to_vaddr(&self.segments, offset).ok_or(Reason::Unmapped)?;
            let start = texts.len();
            return ix.answer(vaddr, back, texts).map(|()| Answer::Written(start..texts.len()));
        }
        if let Some(c) = &mut self.cache {
            let vaddr = elf::offset_to_vaddr(&self.segments, offset).ok_or(Reason::Unmapped)?;
            let start = texts.len();
            if let Some(r) = c.lookup(vaddr, back, texts) {
                self.cache_hits += 1;
                return r.map(|()| Answer::Written(start..texts.len()));
            }
        }
        let vaddr = elf::offset_to_vaddr(&self.segments, offset).ok_or(Reason::Unmapped)?;
        if let Some(r) = self.answers.get(&(vaddr, back)) {
            return r.clone().map(Answer::Made);
        }
        // An answer from the symbol alone (DWARF knows nothing there: all
        // of them in a binary without line info) is written as it is
        // found: its symbol's `sym` member, made once, and its offset. Not
        // an answer made, rendered and kept per address, which cost node's
        // 100k addresses a fifth of their time. A repeat of the frame is
        // answered by the line's cache of frames, a repeat of the address
        // elsewhere by looking it up again.
        let Module { symbols, segments, dwarf, shared, dwarf_names, files, frames, .. } = self;
        let mut found = std::mem::take(frames);
        let parts = (dwarf, &*shared, dwarf_names, files);
        let sym = look(symbols, segments, parts, vaddr, inlined, &mut found);
        if let Some((st, start)) =
            sym.as_ref().filter(|(st, _)| !st.json.is_empty() && found.is_empty())
        {
            let at = texts.len();
            texts.extend_from_slice(&st.json);
            texts.extend_from_slice(b",\"sym_offset\":");
            push_hex_string(texts, (vaddr - start).wrapping_add(back));
            if self.learn {
                let (syms, apart) = (&mut self.learned_syms, &mut self.learned_syms_apart);
                sort_out_repeats(syms, apart, self.learned.len());
                if room_to_learn(self.learned.len(), syms.len()) {
                    syms.push((vaddr, *start, st.json.clone()));
                }
            }
            self.frames = found;
            return Ok(Answer::Written(at..texts.len()));
        }
        let sym = sym.map(|(st, start)| (st.name.clone(), start));
        let r = self.resolution(vaddr, sym, found).map(|r| Arc::new(r.shifted(back)));
        self.keep(vaddr, back, &r);
        r.map(Answer::Made)
    }

    /// The address file offset `offset` is answered at from the cache of
    /// earlier runs or the symbols, if the module has no index.
    pub fn prefetch_vaddr(&self, offset: u64) -> Option<u64> {
        self.index.is_none().then_some(())?;
        elf::offset_to_vaddr(&self.segments, offset)
    }

    /// Start fetching what answering `vaddr` will read: from the cache of
    /// earlier runs (see `CacheFile::prefetch`, stages 0 and 1) when the
    /// module has one, from its symbols otherwise (`SymbolTable::prefetch`,
    /// stages 0 to 2).
    pub fn prefetch(&mut self, vaddr: u64, stage: u8) {
        match &mut self.cache {
            Some(c) if stage < 2 => c.prefetch(vaddr, stage),
            Some(_) => {}
            None => {
                self.symbols.prefetch(vaddr, stage);
                // And where its DWARF unit is found, once DWARF is in use.
                if let (0, Some(DwarfState::Ready(units))) = (stage, &self.dwarf) {
                    units.prefetch(vaddr);
                }
            }
        }
    }

    /// Whether the answer at `vaddr` is in the cache of earlier runs.
    pub fn cached(&self, vaddr: u64) -> bool {
        self.cache.as_ref().is_some_and(|c| c.knows(vaddr))
    }

    /// What this run learned, for the cache (emptied).
    pub fn take_learned(&mut self) -> Option<crate::cache::Learned> {
        let points = std::mem::take(&mut self.learned);
        let mut syms = std::mem::take(&mut self.learned_syms);
        // Handed over, repeats would count against what the stream may
        // learn (`Shared::hand_over`), at the expense of other modules and
        // threads: dropped from a list long enough to hold many (a short
        // one is not sorted here, on the run's last steps; the write sorts
        // it anyway).
        if syms.len() > crate::cache::MAX_LEARNED / 8 && syms.len() > self.learned_syms_apart {
            syms.sort_unstable_by_key(|s| s.0);
            syms.dedup_by_key(|s| s.0);
        }
        self.learned_syms_apart = 0;
        let build_id = self.build_id.clone().filter(|_| !points.is_empty() || !syms.is_empty())?;
        Some(crate::cache::Learned { build_id, provenance: self.provenance.clone(), points, syms })
    }

    /// The answer at file offset `offset`, for a frame `back` bytes
    /// further (a return address).
    pub fn lookup_offset(&mut self, offset: u64, back: u64, inlined: bool) -> Outcome {
        let Some(vaddr) = elf::offset_to_vaddr(&self.segments, offset) else {
            return Err(Reason::Unmapped);
        };
        if let Some(r) = self.answers.get(&(vaddr, back)) {
            return r.clone();
        }
        let r = self.lookup_vaddr(vaddr, inlined).map(|r| Arc::new(r.shifted(back)));
        self.keep(vaddr, back, &r);
        r
    }

    /// Keep the answer `r` at `vaddr` (for a frame `back` bytes further),
    /// and learn it for the cache.
    fn keep(&mut self, vaddr: u64, back: u64, r: &Outcome) {
        if self.answers.len() >= MAX_CACHED_ANSWERS {
            self.answers.clear();
        }
        self.answers.insert((vaddr, back), r.clone());
        if self.learn {
            let (syms, apart) = (&mut self.learned_syms, &mut self.learned_syms_apart);
            sort_out_repeats(syms, apart, self.learned.len());
            if room_to_learn(self.learned.len(), syms.len()) {
                self.learned.push((vaddr, back, r.clone()));
            }
        }
    }

    pub fn lookup_vaddr(&mut self, vaddr: u64, want_inlined: bool) -> Result<Resolution, Reason> {
        // The frames' vector is the module's, used again: one allocation
        // less per new address.
        let Module { symbols, segments, dwarf, shared, dwarf_names, files, frames, .. } = self;
        let mut found = std::mem::take(frames);
        let parts = (dwarf, &*shared, dwarf_names, files);
        let sym = look(symbols, segments, parts, vaddr, want_inlined, &mut found)
            .map(|(st, start)| (st.name.clone(), start));
        self.resolution(vaddr, sym, found)
    }

    /// The answer at `vaddr` from its symbol (its name, "" for none, and
    /// start) and DWARF's `frames` there (outermost last; the vector is
    /// kept for the next lookup).
    fn resolution(
        &mut self,
        vaddr: u64,
        sym: Option<(Arc<str>, u64)>,
        mut frames: Vec<DwarfFrame>,
    ) -> Result<Resolution, Reason> {
        let mut res = Resolution::default();
        if let Some((name, start)) = sym {
            // A name the file does not hold reads as "": DWARF may name it.
            res.sym = (!name.is_empty()).then_some(name);
            res.sym_offset = Some(vaddr - start);
        }
        if let Some(outer) = frames.pop() {
            res.file = outer.file;
            res.line = outer.line;
            if res.sym.is_none() {
                res.sym = outer.sym;
            }
            res.inlined = frames
                .drain(..)
                .map(|f| Inlined { sym: f.sym, file: f.file, line: f.line })
                .collect();
        }
        self.frames = frames;
        if res.sym.is_none() && res.file.is_none() {
            return Err(Reason::NoSymbols);
        }
        Ok(res)
    }
}

/// An answer from a symbol alone, learned (see `Module::learned_syms`).
type LearnedSym = (u64, u64, Arc<[u8]>);

/// Make room in what a module learned, when it is full
/// (`cache::MAX_LEARNED`: `points` answers made and `syms`, the first
/// `apart` of which are at distinct addresses), by dropping the repeats of
/// `syms` (sorted out), again whenever an eighth of it came since. Answers
/// from a symbol alone are not kept by address, so an address is learned
/// again on every line that has it: kept, a frame met on every line of a
/// long stream filled the list, and no address met after it was learned
/// (nor answered by the next run's cache). Only when full: a run that does
/// not fill it pays nothing (the write sorts them anyway).
fn sort_out_repeats(syms: &mut Vec<LearnedSym>, apart: &mut usize, points: usize) {
    if points + syms.len() >= crate::cache::MAX_LEARNED && syms.len() - *apart > *apart / 8 {
        syms.sort_unstable_by_key(|s| s.0);
        syms.dedup_by_key(|s| s.0);
        *apart = syms.len();
    }
}

/// Whether a module that learned `points` answers made and `syms` may
/// learn one more.
fn room_to_learn(points: usize, syms: usize) -> bool {
    points + syms < crate::cache::MAX_LEARNED
}

/// What a module's DWARF lookups use besides its symbols: its DWARF, where
/// it is shared, and the names it made (see `Module`).
type DwarfParts<'a> = (
    &'a mut Option<DwarfState>,
    &'a Shared,
    &'a mut NameCache,
    &'a mut FxHashMap<String, Arc<str>>,
);

/// The symbol at `vaddr` (its names, made once per symbol, and its start)
/// and, into `frames` (emptied first), DWARF's frames there, outermost
/// last.
fn look<'s>(
    symbols: &'s elf::SymbolTable,
    segments: &[elf::Segment],
    (dwarf, shared, dwarf_names, files): DwarfParts<'_>,
    vaddr: u64,
    want_inlined: bool,
    frames: &mut Vec<DwarfFrame>,
) -> Option<(std::borrow::Cow<'s, SymText>, u64)> {
    frames.clear();
    let sym = symbols.find(vaddr).map(|hit| {
        // Each symbol's name is demangled once, by whichever thread meets
        // it first (C++ names cost microseconds each); the few found
        // before the table is sorted are demangled each time.
        let make = || demangle_with(&symbols.name(hit.name), SymText::new);
        let st = match hit.demangled {
            Some(cell) => std::borrow::Cow::Borrowed(cell.get_or_init(make)),
            None => std::borrow::Cow::Owned(make()),
        };
        (st, hit.start)
    });
    // Outside code, DWARF knows only the ranges of functions the linker
    // dropped, which it leaves at address 0 (addr2line answers "??").
    let code = elf::is_code(segments, vaddr);
    if let Some(units) = units_of(dwarf, shared).filter(|_| code) {
        // A unit that .debug_aranges names but that knows nothing of the
        // address (code without line info) is the answer: no other unit
        // covers it, and asking the full context would parse them all.
        if let Some(ctx) = units.context_for(vaddr) {
            // The outermost function is the symbol's, when there is one.
            let outer_name = sym.as_ref().is_none_or(|(st, _)| st.name.is_empty());
            dwarf_frames(
                &ctx,
                vaddr,
                want_inlined,
                outer_name,
                (dwarf_names, Some(units.names())),
                files,
                frames,
            );
        }
    }
    sym
}

/// `Module::units`, borrowing only the fields it needs (a lookup goes on to
/// fill the module's other caches while it holds the units).
fn units_of<'a>(dwarf: &'a mut Option<DwarfState>, shared: &Shared) -> Option<&'a Arc<Units>> {
    if let Some(DwarfState::Pending(..)) = dwarf {
        if let Some(DwarfState::Pending(secs, key)) = dwarf.take() {
            *dwarf = Some(DwarfState::Ready(shared.dwarf(key.as_deref(), secs)));
        }
    }
    match dwarf {
        Some(DwarfState::Ready(units)) => Some(units),
        _ => None,
    }
}
