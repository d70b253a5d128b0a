//! DWARF lookups that parse only the compilation units they need.
//!
//! `addr2line::Context::from_dwarf` walks every unit header up front (and
//! the whole line program of units without address ranges); for a debug
//! build with hundreds of units that alone cost tens of milliseconds before
//! the first answer. Most units are covered by .debug_aranges, so an
//! address is first mapped to its unit through a sorted table built from
//! that section, and answered by a context made over that unit alone (its
//! bytes of .debug_info, every other section whole). Such a context gives
//! the same answers as the full one only when the unit is self-contained:
//! no reference into other units (DW_FORM_ref_addr and the like, which
//! would be read against the wrong offsets) and not a split-DWARF skeleton.
//! Units that are not and addresses outside .debug_aranges go to the full
//! context, built on first need, and only those (a self-contained unit
//! answers the same either way, and the full context has a single lock;
//! see below). Addresses outside .debug_aranges don't when it covers every
//! unit with code (a Rust build's functions without line info): no unit
//! knows them, and the full context would only say so. An address its unit
//! knows nothing about (code without line info) is left without DWARF: no
//! other unit covers it.
//!
//! Parsing a unit's lines and functions is most of the cost of a new
//! address in a large binary, so resolving threads share one `Units` per
//! file: a unit is parsed once, by the first thread that needs it, and
//! each context is used under its own lock (addr2line parses lazily inside
//! lookups, so a context is not `Sync` by itself).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rustc_hash::FxHashMap;

use gimli::Reader as _;

use crate::elf::{DwarfSections, Reader};
use crate::log::log;
use crate::prefetch::prefetch_ptr;

type Ctx = addr2line::Context<Reader>;

/// An address range [begin, end) of .debug_aranges and the index of its
/// unit in `units` (`AMBIGUOUS` when two claim it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnitRange {
    begin: u64,
    end: u64,
    unit: u32,
}

/// Unit index of an address range claimed by more than one unit.
const AMBIGUOUS: u32 = u32::MAX;

/// Ranges per block of the two-level search (see `Units::top`): 16 ranges
/// of 24 bytes, six cache lines.
const TOP: usize = 16;

/// A context, parsed further by each lookup that needs more of it.
type Slot = OnceLock<Option<Box<Mutex<Ctx>>>>;

/// A unit and its context, built on first use (`None`: the unit is not
/// self-contained, ask the full context).
struct UnitSlot {
    offset: usize,
    ctx: Slot,
    /// Its set listed some code (addr2line takes the unit's ranges from
    /// elsewhere when it did not).
    listed: bool,
    /// Bytes of code its set lists: what its parse costs goes with it.
    code_bytes: u64,
}

pub struct Units {
    secs: DwarfSections,
    /// Sorted by begin, not overlapping.
    ranges: Vec<UnitRange>,
    /// Every `TOP`th range's begin: searched first, it stays in cache and
    /// names the block of `ranges` (a few cache lines) that holds an
    /// address's range, which a line's lookups fetch together ahead of
    /// their searches (`prefetch`). Searched whole, a large build's 50k
    /// ranges (1.2 MB) missed the cache at the last steps of each search,
    /// one miss after another: 5% of a cold run.
    top: Vec<u64>,
    units: Vec<UnitSlot>,
    /// The context over all units, built on first need (`None`: it cannot
    /// be built).
    full: Slot,
    /// Whether .debug_aranges covers every unit with code (see
    /// `aranges_complete`), found out on first need.
    complete: OnceLock<bool>,
    /// The names demangled by the resolving threads (each keeps its own
    /// too, asked first): a name one demangled is not demangled again by
    /// another. Names lie in `secs`, which this holds (see `NameCache`).
    names: Mutex<NameCache>,
}

// Shared between resolving threads (checked at compile time).
const _: () = {
    const fn sync<T: Send + Sync>() {}
    sync::<Units>()
};

/// A context in use (the lock held while a lookup parses it further).
pub type CtxGuard<'a> = MutexGuard<'a, Ctx>;

/// Lock a context. A thread that panicked while holding it (caught per
/// line) left it as addr2line's lazy cells are after an unwind: parts
/// not yet parsed are parsed again.
fn lock(m: &Mutex<Ctx>) -> CtxGuard<'_> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Units {
    /// Cheap: reads .debug_aranges only (a malformed one just means every
    /// address goes to the full context).
    pub fn new(secs: DwarfSections) -> Units {
        let (ranges, units) = aranges(&secs).unwrap_or_default();
        let top = ranges.iter().step_by(TOP).map(|r| r.begin).collect();
        Units {
            secs,
            ranges,
            top,
            units,
            full: OnceLock::new(),
            complete: OnceLock::new(),
            names: Mutex::default(),
        }
    }

    /// The names demangled by the threads that share these units.
    pub fn names(&self) -> &Mutex<NameCache> {
        &self.names
    }

    /// The context that answers `vaddr`, locked: its unit's when that one
    /// is usable, else the full one. `None` when no unit can know it (it is
    /// outside .debug_aranges, which lists all code), or the full context
    /// cannot be built.
    pub fn context_for(&self, vaddr: u64) -> Option<CtxGuard<'_>> {
        // Unit contexts even once the full one exists: its one lock would
        // make threads take turns.
        if let Some(c) = self.unit_of(vaddr).and_then(|u| self.unit_ctx(u)) {
            return Some(lock(c));
        }
        // Outside every range of .debug_aranges, only a unit it leaves out
        // could know the address; when there is none, building the full
        // context (a walk over every unit, a fifth of a cold run over a
        // large build) would only say that no unit does.
        let i = self.ranges.partition_point(|r| r.begin <= vaddr);
        let outside = i == 0 || vaddr >= self.ranges[i - 1].end;
        if outside
            && *self.complete.get_or_init(|| {
                aranges_complete(&self.secs, &self.units, &self.ranges).unwrap_or(false)
            })
        {
            return None;
        }
        self.full(vaddr).map(lock)
    }

    /// The context of unit `u`, `None` when it is not self-contained.
    fn unit_ctx(&self, u: usize) -> Option<&Mutex<Ctx>> {
        let slot = &self.units[u];
        slot.ctx
            .get_or_init(|| {
                let c = unit_context(&self.secs, slot.offset).map(|c| Box::new(Mutex::new(c)));
                if c.is_none() {
                    log!(2, "DWARF unit at {:#x} is not self-contained", slot.offset);
                }
                c
            })
            .as_deref()
    }

    /// The context over all units, built on first use.
    fn full(&self, vaddr: u64) -> Option<&Mutex<Ctx>> {
        self.full
            .get_or_init(|| {
                log!(2, "parsing all DWARF units ({vaddr:#x})");
                match self.secs.context() {
                    Ok(c) => Some(Box::new(Mutex::new(c))),
                    Err(e) => {
                        log!(1, "unusable DWARF: {e}");
                        None
                    }
                }
            })
            .as_deref()
    }

    /// Every address where a DWARF answer may change: the unit ranges of
    /// .debug_aranges (which unit answers), line-table rows, and the ranges
    /// of functions and inlined calls (for `symres --build-index`). Units
    /// are read by `threads` threads, in turn.
    pub fn boundaries(&self, out: &mut Vec<u64>, threads: usize) -> gimli::Result<()> {
        out.extend(self.ranges.iter().flat_map(|r| [r.begin, r.end]));
        let dwarf = &self.secs.dwarf()?;
        let mut headers = Vec::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            headers.push(header);
        }
        let threads = threads.clamp(1, headers.len().max(1));
        let headers = &headers;
        let parts: Vec<gimli::Result<Vec<u64>>> = std::thread::scope(|scope| {
            let each = (0..threads).map(|t| {
                scope.spawn(move || unit_boundaries(dwarf, headers.iter().skip(t).step_by(threads)))
            });
            each.collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for p in parts {
            out.extend(p?);
        }
        Ok(())
    }

    /// The unit of `vaddr` when its context is not made yet (a first use
    /// will parse it): by which a line's first uses are told apart.
    pub fn cold_unit(&self, vaddr: u64) -> Option<usize> {
        self.unit_of(vaddr).filter(|&u| self.units[u].ctx.get().is_none())
    }

    /// How much code .debug_aranges lists for unit `u`: the larger, the
    /// longer its parse.
    pub fn unit_code_bytes(&self, u: usize) -> u64 {
        self.units.get(u).map_or(0, |s| s.code_bytes)
    }

    /// The block of `ranges` that holds the last range beginning at or
    /// below `vaddr`: the last block whose first range does.
    fn block_of(&self, vaddr: u64) -> Option<(usize, &[UnitRange])> {
        let from = self.top.partition_point(|&b| b <= vaddr).checked_sub(1)? * TOP;
        Some((from, self.ranges.get(from..(from + TOP).min(self.ranges.len()))?))
    }

    /// Start fetching what `context_for(vaddr)` will search first: its
    /// block of ranges.
    pub fn prefetch(&self, vaddr: u64) {
        let Some((_, block)) = self.block_of(vaddr) else { return };
        let p: *const u8 = block.as_ptr().cast();
        for at in (0..std::mem::size_of_val(block)).step_by(64) {
            prefetch_ptr(p.wrapping_add(at));
        }
    }

    fn unit_of(&self, vaddr: u64) -> Option<usize> {
        let (from, block) = self.block_of(vaddr)?;
        let i = from + block.partition_point(|r| r.begin <= vaddr).checked_sub(1)?;
        let r = *self.ranges.get(i)?;
        (vaddr < r.end && r.unit != AMBIGUOUS).then_some(r.unit as usize)
    }
}

/// `Units::boundaries` of some units.
fn unit_boundaries<'a>(
    dwarf: &gimli::Dwarf<Reader>,
    headers: impl Iterator<Item = &'a gimli::UnitHeader<Reader>>,
) -> gimli::Result<Vec<u64>> {
    let mut out = Vec::new();
    for header in headers {
        let unit = dwarf.unit(header.clone())?;
        if let Some(program) = unit.line_program.clone() {
            let mut rows = program.rows();
            while let Some((_, row)) = rows.next_row()? {
                out.push(row.address());
            }
        }
        let mut entries = unit.entries();
        while let Some((_, entry)) = entries.next_dfs()? {
            if matches!(entry.tag(), gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine) {
                let mut ranges = dwarf.die_ranges(&unit, entry)?;
                while let Some(r) = ranges.next()? {
                    out.extend([r.begin, r.end]);
                }
            }
        }
    }
    Ok(out)
}

/// Sorted address ranges of .debug_aranges, and the units they name.
fn aranges(secs: &DwarfSections) -> gimli::Result<(Vec<UnitRange>, Vec<UnitSlot>)> {
    let Some(section) = secs.section(".debug_aranges") else { return Ok(Default::default()) };
    // Read through a plain slice: the shared reader's clones cost an
    // atomic count per entry, and a large build has tens of thousands.
    let aranges = gimli::DebugAranges::new(section.bytes(), section.endian());
    // At least 16 bytes per entry: one allocation.
    let mut ranges = Vec::with_capacity(section.len() / 16);
    let mut units: Vec<UnitSlot> = Vec::new();
    let mut by_offset = rustc_hash::FxHashMap::default();
    let mut headers = aranges.headers();
    while let Some(h) = headers.next()? {
        let offset = h.debug_info_offset().0;
        let u = *by_offset.entry(offset).or_insert_with(|| {
            units.push(UnitSlot { offset, ctx: OnceLock::new(), listed: false, code_bytes: 0 });
            units.len() - 1
        });
        let Some(u) = u32::try_from(u).ok().filter(|&u| u != AMBIGUOUS) else { break };
        let mut entries = h.entries();
        // As addr2line reads a set: an entry whose end overflows is skipped
        // (rustc writes one for a unit holding a single variable); a
        // malformed one ends the set.
        loop {
            match entries.next() {
                Ok(Some(e)) if e.length() != 0 => {
                    let r = e.range();
                    ranges.push(UnitRange { begin: r.begin, end: r.end, unit: u });
                    let slot = &mut units[u as usize];
                    slot.listed = true;
                    slot.code_bytes = slot.code_bytes.saturating_add(e.length());
                }
                Ok(Some(_)) | Err(gimli::Error::AddressOverflow) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    merge_spans(&mut ranges);
    Ok((ranges, units))
}

/// Sort `spans` by begin and merge those that overlap; addresses claimed by
/// two units are ambiguous: the merged span goes to the full context.
/// Merged in place: a second table of a large build's tens of thousands of
/// ranges cost a page fault per 4 KiB written.
fn merge_spans(spans: &mut Vec<UnitRange>) {
    spans.sort_unstable_by_key(|r| r.begin);
    spans.dedup_by(|r, last| {
        if r.begin >= last.end {
            return false;
        }
        if last.unit != r.unit {
            last.unit = AMBIGUOUS;
        }
        last.end = last.end.max(r.end);
        true
    });
}

/// Whether .debug_aranges lists all the code addr2line knows of every unit
/// (`units`' sets, `spans` their ranges): the units without a set listing
/// code are type or partial units, or compilation units that declare no
/// code (no DW_AT_low_pc, DW_AT_ranges, nor rows in their line program,
/// from which addr2line would take their ranges), and the DW_AT_ranges of a
/// unit with a set (which addr2line prefers to the set) are all in the
/// spans. Only code counts: outside it, DWARF knows the ranges of dropped
/// functions, which no set lists. A split-DWARF skeleton counts as left
/// out.
fn aranges_complete(
    secs: &DwarfSections,
    units: &[UnitSlot],
    spans: &[UnitRange],
) -> gimli::Result<bool> {
    let covered: rustc_hash::FxHashSet<usize> =
        units.iter().filter(|u| u.listed).map(|u| u.offset).collect();
    let dwarf = secs.dwarf()?;
    let mut headers = dwarf.units();
    while let Some(header) = headers.next()? {
        match header.type_() {
            gimli::UnitType::Compilation => {}
            gimli::UnitType::Skeleton(_) | gimli::UnitType::SplitCompilation(_) => {
                return Ok(false)
            }
            _ => continue,
        }
        let has_set =
            header.offset().as_debug_info_offset().is_some_and(|o| covered.contains(&o.0));
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        let Some((_, root)) = entries.next_dfs()? else { continue };
        if has_set {
            // addr2line takes a unit's code from DW_AT_ranges before its set
            // (and from its set before DW_AT_low_pc and DW_AT_high_pc).
            let Some(value) = root.attr_value(gimli::DW_AT_ranges)? else { continue };
            let Some(offset) = dwarf.attr_ranges_offset(&unit, value)? else { continue };
            let mut ranges = dwarf.ranges(&unit, offset)?;
            while let Some(r) = ranges.next()? {
                if !in_spans(r, &secs.code, spans) {
                    return Ok(false);
                }
            }
            continue;
        }
        for at in [gimli::DW_AT_low_pc, gimli::DW_AT_high_pc, gimli::DW_AT_ranges] {
            if root.attr(at)?.is_some() {
                return Ok(false);
            }
        }
        if let Some(program) = unit.line_program.clone() {
            if program.rows().next_row()?.is_some() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether the part of `r` inside `code` is covered by `spans` (sorted,
/// not overlapping, perhaps adjacent).
fn in_spans(r: gimli::Range, code: &[(u64, u64)], spans: &[UnitRange]) -> bool {
    code.iter().all(|&(cb, ce)| {
        let (mut at, end) = (r.begin.max(cb), r.end.min(ce));
        while at < end {
            let i = spans.partition_point(|s| s.begin <= at);
            if i == 0 || at >= spans[i - 1].end {
                return false;
            }
            at = spans[i - 1].end;
        }
        true
    })
}

/// A context over the single unit at `offset` of .debug_info, when that
/// unit is self-contained (see the module docs).
fn unit_context(secs: &DwarfSections, offset: usize) -> Option<Ctx> {
    let info = secs.section(".debug_info")?;
    let header = gimli::DebugInfo::from(info.clone())
        .header_from_offset(gimli::DebugInfoOffset(offset))
        .ok()?;
    if !matches!(header.type_(), gimli::UnitType::Compilation) {
        return None;
    }
    let abbrev = secs.section(".debug_abbrev")?;
    if !self_contained(abbrev, header.debug_abbrev_offset().0)? {
        return None;
    }
    let mut unit = info;
    unit.skip(offset).ok()?;
    unit.truncate(header.length_including_self()).ok()?;
    secs.context_with(|name| match name {
        ".debug_info" => Some(unit.clone()),
        // Keyed by .debug_info offsets, which are relative to the slice now.
        ".debug_aranges" => None,
        _ => secs.section(name),
    })
    .ok()
}

/// Whether the abbreviations at `offset` use no form that refers outside
/// the unit. `None` when they cannot be read.
fn self_contained(mut r: Reader, offset: usize) -> Option<bool> {
    r.skip(offset).ok()?;
    loop {
        let code = r.read_uleb128().ok()?;
        if code == 0 {
            return Some(true);
        }
        let _tag = r.read_uleb128().ok()?;
        let _children = r.read_u8().ok()?;
        loop {
            let name = r.read_uleb128().ok()?;
            let form = r.read_uleb128().ok()?;
            if name == 0 && form == 0 {
                break;
            }
            match u16::try_from(form).map(gimli::DwForm) {
                Ok(
                    gimli::DW_FORM_ref_addr
                    | gimli::DW_FORM_indirect
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
                    | gimli::DW_FORM_GNU_ref_alt,
                ) => return Some(false),
                Ok(gimli::DW_FORM_implicit_const) => {
                    r.read_sleb128().ok()?;
                }
                _ => {}
            }
        }
    }
}

/// One DWARF frame: function, file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwarfFrame {
    pub sym: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// Demangled DWARF names by where their bytes lie (address, length), so
/// that a hit costs neither a UTF-8 check nor hashing a long mangled name.
/// Every name lies in the buffers of one module's DWARF index (the file's
/// mapping, or sections inflated from it), which the module holds as long
/// as this cache: an address is never reused for another name. Never share
/// one cache between modules.
pub type NameCache = FxHashMap<(usize, usize), Arc<str>>;

/// The frames addr2line reports at `vaddr`, innermost first (only the
/// location, as one frame, without `want_inlined`). The outermost frame is
/// named only with `outer_name`.
pub fn dwarf_frames(
    ctx: &Ctx,
    vaddr: u64,
    want_inlined: bool,
    outer_name: bool,
    (names, shared): (&mut NameCache, Option<&Mutex<NameCache>>),
    files: &mut FxHashMap<String, Arc<str>>,
    frames: &mut Vec<DwarfFrame>,
) {
    if want_inlined {
        if let Ok(mut it) = ctx.find_frames(vaddr).skip_all_loads() {
            // Each frame is named once the next one shows it is not the last.
            let mut unnamed: Option<Reader> = None;
            while let Ok(Some(f)) = it.next() {
                if let (Some(raw), Some(last)) = (unnamed.take(), frames.last_mut()) {
                    last.sym = Some(demangle_cached(names, shared, &raw));
                }
                unnamed = f.function.map(|n| n.name);
                let (file, line) = match f.location {
                    Some(l) => (l.file.map(|s| intern(files, s)), l.line),
                    None => (None, None),
                };
                frames.push(DwarfFrame { sym: None, file, line });
                if frames.len() >= 256 {
                    break;
                }
            }
            if let (true, Some(raw), Some(last)) = (outer_name, unnamed, frames.last_mut()) {
                last.sym = Some(demangle_cached(names, shared, &raw));
            }
        }
    } else if let Ok(Some(l)) = ctx.find_location(vaddr) {
        frames.push(DwarfFrame { sym: None, file: l.file.map(|s| intern(files, s)), line: l.line });
    }
}

/// The name `raw` demangled: from `cache`, else from `shared` (the
/// other threads'), else demangled (unlocked) and kept in both.
fn demangle_cached(
    cache: &mut NameCache,
    shared: Option<&Mutex<NameCache>>,
    raw: &Reader,
) -> Arc<str> {
    let bytes = raw.bytes();
    let key = (bytes.as_ptr() as usize, bytes.len());
    if let Some(n) = cache.get(&key) {
        return n.clone();
    }
    fn lock(m: &Mutex<NameCache>) -> MutexGuard<'_, NameCache> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
    let found = shared.and_then(|m| lock(m).get(&key).cloned());
    let n = found.unwrap_or_else(|| {
        let n: Arc<str> = Arc::from(crate::demangle::demangle(&leakd_common::text::to_text(bytes)));
        match shared {
            Some(m) => lock(m).entry(key).or_insert(n).clone(),
            None => n,
        }
    });
    cache.insert(key, n.clone());
    n
}

fn intern(files: &mut FxHashMap<String, Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = files.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    files.insert(s.to_string(), a.clone());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::ElfFile;

    /// This test binary's symbols, full DWARF context and index: a real
    /// Rust debug build with hundreds of units (test builds carry DWARF, the
    /// dev profile's default).
    fn this_test_binary() -> (crate::elf::SymbolTable, Ctx, Units) {
        let exe = std::env::current_exe().unwrap();
        let Ok(elf) = ElfFile::open(&exe) else { panic!("cannot read {}", exe.display()) };
        let Some(dwarf) = elf.dwarf else { panic!("{} has no DWARF", exe.display()) };
        let full = dwarf.context().unwrap();
        (elf.symbols, full, Units::new(dwarf))
    }

    /// The frames symres reports at `a` (with inlined ones).
    fn frames(ctx: &Ctx, a: u64) -> Vec<DwarfFrame> {
        let mut out = Vec::new();
        dwarf_frames(
            ctx,
            a,
            true,
            true,
            (&mut Default::default(), None),
            &mut Default::default(),
            &mut out,
        );
        out
    }

    /// The two-level search finds the unit a search of every range finds,
    /// at each range's begin and end and next to them, and between blocks.
    #[test]
    fn unit_found_in_two_steps_is_the_units() {
        let (_, _, units) = this_test_binary();
        let r = &units.ranges;
        assert!(r.len() > 10 * TOP, "{} ranges", r.len());
        let plain = |a: u64| {
            let i = r.partition_point(|x| x.begin <= a).checked_sub(1)?;
            (a < r[i].end && r[i].unit != AMBIGUOUS).then_some(r[i].unit as usize)
        };
        let mut found = 0;
        for x in r {
            for a in [x.begin.wrapping_sub(1), x.begin, x.begin + 1, x.end - 1, x.end, x.end + 1] {
                assert_eq!(units.unit_of(a), plain(a), "at {a:#x}");
                found += usize::from(plain(a).is_some());
                units.prefetch(a);
            }
        }
        assert!(found > 3 * r.len(), "{found} addresses in a unit");
        assert_eq!(units.unit_of(0), plain(0));
        assert_eq!(units.unit_of(u64::MAX), plain(u64::MAX));
    }

    /// Code outside .debug_aranges (functions without line info) in a Rust
    /// debug build whose units all have a set: no DWARF, as the full
    /// context says too, without building it.
    #[test]
    fn outside_complete_aranges_no_full_context() {
        let (mut symbols, full, index) = this_test_binary();
        let outside: Vec<u64> = symbols
            .boundaries()
            .step_by(2)
            .filter(|&a| {
                let i = index.ranges.partition_point(|r| r.begin <= a);
                i == 0 || a >= index.ranges[i - 1].end
            })
            .collect();
        assert!(!outside.is_empty(), "every function is in .debug_aranges");
        for &a in &outside {
            assert!(index.context_for(a).is_none(), "{a:#x}");
            assert_eq!(frames(&full, a), vec![], "{a:#x}");
        }
        assert_eq!(index.complete.get(), Some(&true));
        assert!(index.full.get().is_none(), "the full context was built");
    }

    #[test]
    fn overlapping_spans_merge_and_two_units_make_them_ambiguous() {
        let r = |begin, end, unit| UnitRange { begin, end, unit };
        let mut spans = vec![
            r(0x60, 0x70, 2),
            r(0x10, 0x20, 0),
            r(0x30, 0x40, 1),
            r(0x18, 0x28, 0),
            r(0x28, 0x30, 1),
            r(0x38, 0x50, 1),
            r(0x65, 0x68, 2),
            r(0x68, 0x80, 3),
        ];
        merge_spans(&mut spans);
        // Adjacent spans stay apart; one inside another (0x65) merges
        // into it; a second unit's makes the whole span ambiguous.
        assert_eq!(
            spans,
            vec![r(0x10, 0x28, 0), r(0x28, 0x30, 1), r(0x30, 0x50, 1), r(0x60, 0x80, AMBIGUOUS)]
        );
    }

    /// Each unit's code is the sum of its set's entries: at least what its
    /// own merged spans cover, and nothing for a unit whose set lists none.
    #[test]
    fn units_code_bytes_are_their_sets() {
        let (_, _, index) = this_test_binary();
        let mut spanned = vec![0u64; index.units.len()];
        for r in &index.ranges {
            if r.unit != AMBIGUOUS {
                spanned[r.unit as usize] += r.end - r.begin;
            }
        }
        let mut compared = 0;
        for (u, slot) in index.units.iter().enumerate() {
            assert_eq!(slot.listed, index.unit_code_bytes(u) > 0, "unit {u}");
            assert!(
                index.unit_code_bytes(u) >= spanned[u],
                "unit {u}: {} < {}",
                index.unit_code_bytes(u),
                spanned[u]
            );
            compared += usize::from(spanned[u] > 0);
        }
        assert!(compared > 50, "{compared} units with spans");
        assert_eq!(index.unit_code_bytes(index.units.len()), 0);
    }

    /// A unit context must answer exactly as the full one does, on a real
    /// Rust debug build (this test binary) with hundreds of units.
    #[test]
    fn unit_contexts_answer_like_the_full_context() {
        let (_, full, index) = this_test_binary();
        let addrs: Vec<u64> = index
            .ranges
            .iter()
            .filter(|r| r.unit != AMBIGUOUS)
            .flat_map(|r| [r.begin, r.begin + (r.end - r.begin) / 2])
            .step_by(13)
            .collect();
        assert!(addrs.len() > 50, "too few aranges: {}", addrs.len());
        let (mut by_unit, mut compared) = (0, 0);
        for a in addrs {
            // Only addresses a unit context answers (not the full one).
            let Some(ctx) = index.unit_of(a).and_then(|u| index.unit_ctx(u)) else { continue };
            by_unit += 1;
            let mine = frames(&lock(ctx), a);
            if mine.is_empty() {
                continue;
            }
            assert_eq!(mine, frames(&full, a), "at {a:#x}");
            compared += 1;
        }
        assert!(compared > 50 && compared * 2 > by_unit, "{compared} of {by_unit} compared");
    }
}
