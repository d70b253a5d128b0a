//! One ELF file, reduced to what symbolization needs and nothing that borrows
//! the file: load segments (to turn the file offsets our tools report into
//! ELF addresses), a sorted function table, the build id, the debug link, and
//! the DWARF sections as shared buffers for addr2line.
//!
//! The file is mapped (crate::mmap, which also makes a file truncated under
//! us read as zeros instead of killing us with SIGBUS) or, when it cannot
//! be, read into memory; either way it is one shared buffer, and the DWARF
//! sections addr2line reads are ranges of it, not copies: for a debug build
//! with tens of MB of DWARF, copying cost as much time as reading.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use gimli::{EndianReader, RunTimeEndian};
use goblin::elf::{
    program_header::{PF_X, PT_LOAD},
    section_header, sym, Elf,
};

use crate::answer::SymText;
use crate::prefetch::{prefetch, prefetch_ptr};

/// The reader addr2line works on: ranges of the file's bytes (or of a
/// decompressed section), shared by reference count.
pub type Reader = EndianReader<RunTimeEndian, Bytes>;

/// A shared, immutable byte buffer: the whole file (mapped, or read when it
/// cannot be mapped), or one decompressed section. Not `Arc<[u8]>`, which
/// could only be made from a `Vec` by copying it.
#[derive(Debug, Clone)]
pub struct Bytes(Arc<Backing>);

#[derive(Debug)]
enum Backing {
    Heap(Vec<u8>),
    Map(crate::mmap::Map),
}

impl Bytes {
    pub fn heap(v: Vec<u8>) -> Bytes {
        Bytes(Arc::new(Backing::Heap(v)))
    }

    /// A whole file: mapped (only the pages the parsers touch are ever
    /// read; see crate::mmap for why that is safe even if the file
    /// shrinks), or read when it cannot be mapped.
    /// An open file, as `open`; read no further than its size.
    pub fn of_file(mut f: std::fs::File) -> std::io::Result<Bytes> {
        let len = f.metadata()?.len();
        if let Some(m) = usize::try_from(len).ok().and_then(|n| crate::mmap::Map::new(&f, n)) {
            return Ok(Bytes(Arc::new(Backing::Map(m))));
        }
        let mut data = Vec::new();
        f.by_ref().take(len).read_to_end(&mut data)?;
        Ok(Bytes::heap(data))
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Backing::Heap(v) => v,
            Backing::Map(m) => m,
        }
    }
}

// SAFETY: `Bytes` derefs to the heap buffer of a `Vec` or to a mapping, both
// owned by the `Arc` and never mutated, moved or unmapped while it lives (the
// `Arc` is never unwrapped or made mutable), so the slice's address does not
// change when a `Bytes` is moved.
unsafe impl gimli::StableDeref for Bytes {}
// SAFETY: a clone shares the same `Arc`, hence derefs to the same buffer.
unsafe impl gimli::CloneStableDeref for Bytes {}

#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    /// Size in memory: a debug file's segments keep it, with no bytes in
    /// the file (p_filesz 0).
    pub memsz: u64,
    /// Executable (PF_X): code.
    pub exec: bool,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    addr: u64,
    size: u64,
    /// Where the NUL-terminated name starts: in `SymbolTable::arena`
    /// (`table` 0) or in the file, in string table `table` (1 or 2).
    name_at: u64,
    /// Order of appearance (.symtab first), for ties.
    seq: u32,
    rank: u8,
    table: u8,
}

/// Longest name used; a longer one (a string table without NULs) is cut.
const MAX_NAME: usize = 64 << 10;

/// A function table, sorted by address once it has answered a few lookups.
/// Names stay where they are in the file's string tables, found and checked
/// only when a symbol is used: a large binary has a hundred thousand names,
/// and copying and validating them all was a good part of the time to a
/// first answer. So was sorting, before it sorted by radix (`by_key`): a
/// single line (symres in a shell, one stack) asks a handful of addresses,
/// and a scan of the unsorted table answers each; now the sort costs about
/// as much as a few scans (node: 153k symbols, 0.3 ms a scan), so only the
/// first two lookups scan.
///
/// The sorted table is shared by the tables of one file (`share`): each
/// resolving thread loads the file, but it is sorted once, and each
/// symbol's name demangled once, by whichever thread meets it first.
#[derive(Default)]
#[allow(clippy::len_without_is_empty)]
pub struct SymbolTable {
    syms: Vec<Symbol>,
    /// Made from `syms` on first need, perhaps by another table of the
    /// same file.
    sorted: Arc<OnceLock<Sorted>>,
    /// Lookups answered by a scan so far.
    scans: std::cell::Cell<u32>,
    /// The file, for names in it.
    file: Option<Bytes>,
    /// Where string tables 1 and 2 end in the file: a name never runs past
    /// its table.
    table_end: [usize; 2],
    /// NUL-terminated names copied in (when the file's tables could not be
    /// used in place).
    arena: Vec<u8>,
    /// What `prefetch` found for the addresses of a line, by a hash of the
    /// address (see `hint_slot`): `find` and the later stages do not
    /// search again. Empty until the first `prefetch`.
    hints: Vec<Hint>,
}

/// An address `SymbolTable::prefetch` met: its block of `Sorted::addrs`,
/// and its place there (`NONE32` until stage 1).
#[derive(Clone, Copy)]
struct Hint {
    addr: u64,
    block: u32,
    at: u32,
}

/// `Hint`s kept: more than a line has frames, most of the time.
const HINTS: usize = 64;

const NONE32: u32 = u32::MAX;

/// The slot of `addr`'s hint.
fn hint_slot(addr: u64) -> usize {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % HINTS
}

/// The symbols by address, the best of those at one address only.
#[derive(Default)]
pub struct Sorted {
    /// The symbols' addresses, searched alone: a binary search then
    /// touches an eighth of the cache lines.
    addrs: Vec<u64>,
    /// Every `TOP`th of `addrs`: searched first, it is small enough to stay
    /// in cache, and leaves a search of one block of `addrs` (a few cache
    /// lines) instead of a miss at nearly every step over a large table.
    top: Vec<u64>,
    /// The rest of each symbol, by its place in `addrs`: one cache line
    /// gives the size, the name's place and the demangled name.
    entries: Vec<Entry>,
}

struct Entry {
    size: u64,
    name: SymName,
    /// The name demangled (and as JSON), once one lookup needed it.
    demangled: OnceLock<SymText>,
}

/// A symbol found by `SymbolTable::find`.
pub struct Hit<'a> {
    /// Where its name is, for `SymbolTable::name`.
    pub name: SymName,
    pub start: u64,
    /// Where its demangled name is kept, once the table is sorted.
    pub demangled: Option<&'a OnceLock<SymText>>,
}

/// A symbol `SymbolTable::lookup` found, for `SymbolTable::name`: where
/// its name is (the same whether the table was sorted yet or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SymName {
    at: u64,
    table: u8,
}

/// Symbols per block of the two-level search (see `Sorted::top`).
const TOP: usize = 32;

/// Lookups answered by scanning before the table is sorted: more cost more
/// than the sort (with 32, a cold run on node spent 6% of its time in
/// scans; a line of 16 frames took as long scanned as sorted).
const SCANS: u32 = 2;

impl Symbol {
    /// The sort key: address, then of symbols at the same address the best
    /// first (sized over unsized, global over weak over local, then the
    /// first seen). Total: `seq` is unique, and is the symbol's place.
    fn key(&self) -> u128 {
        u128::from(self.addr) << 64
            | u128::from(self.size == 0) << 48
            | u128::from(self.rank) << 32
            | u128::from(self.seq)
    }
}

impl SymbolTable {
    /// Function symbols kept (before symbols at one address are merged).
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    fn push(&mut self, name: &str, addr: u64, size: u64, rank: u8) {
        let name_at = self.arena.len() as u64;
        self.arena.extend_from_slice(name.as_bytes());
        self.arena.push(0);
        let seq = self.syms.len() as u32;
        self.syms.push(Symbol { addr, size, name_at, seq, rank, table: 0 });
    }

    /// A symbol whose name is at `offset` of the file, in string table
    /// `table` (1 or 2, see `table_end`).
    fn push_in_file(&mut self, table: u8, offset: usize, addr: u64, size: u64, rank: u8) {
        let seq = self.syms.len() as u32;
        self.syms.push(Symbol { addr, size, name_at: offset as u64, seq, rank, table });
    }

    /// The sorted table, to be shared with the other tables of the same
    /// file (which hold the same symbols).
    pub fn shared(&self) -> Arc<OnceLock<Sorted>> {
        self.sorted.clone()
    }

    /// Use `sorted` (another table's of the same file) as this one's.
    pub fn share(&mut self, sorted: Arc<OnceLock<Sorted>>) {
        self.sorted = sorted;
    }

    /// Sorted by address, keeping the best of symbols at one address (see
    /// `Symbol::key`).
    fn sort(&self) -> &Sorted {
        self.sorted.get_or_init(|| {
            let order = by_key(&self.syms);
            let mut addrs = Vec::with_capacity(order.len());
            let mut entries = Vec::with_capacity(order.len());
            for i in order {
                let Some(s) = self.syms.get(i as usize) else { continue };
                addrs.push(s.addr);
                let name = SymName { at: s.name_at, table: s.table };
                entries.push(Entry { size: s.size, name, demangled: OnceLock::new() });
            }
            let top = addrs.iter().step_by(TOP).copied().collect();
            Sorted { addrs, top, entries }
        })
    }

    /// The symbol the sorted table would find for `addr` (the best of those
    /// at the highest address not above it), by a scan.
    fn scan(&self, addr: u64) -> Option<&Symbol> {
        let mut best: Option<&Symbol> = None;
        for s in &self.syms {
            if s.addr <= addr
                && best.is_none_or(|b| s.addr > b.addr || (s.addr == b.addr && s.key() < b.key()))
            {
                best = Some(s);
            }
        }
        best
    }

    /// The function containing `addr`: its name's place, and its start
    /// address.
    #[cfg(test)]
    pub fn lookup(&self, addr: u64) -> Option<(SymName, u64)> {
        self.find(addr).map(|h| (h.name, h.start))
    }

    /// The function containing `addr`.
    pub fn find(&self, addr: u64) -> Option<Hit<'_>> {
        if self.sorted.get().is_none() && self.scans.get() < SCANS {
            self.scans.set(self.scans.get() + 1);
            let s = self.scan(addr)?;
            if s.size > 0 && addr - s.addr >= s.size {
                return None;
            }
            let name = SymName { at: s.name_at, table: s.table };
            return Some(Hit { name, start: s.addr, demangled: None });
        }
        let sorted = self.sort();
        let hint = self.hints.get(hint_slot(addr)).filter(|h| h.addr == addr && h.at != NONE32);
        let i = match hint {
            Some(h) => h.at as usize,
            None => sorted.position(addr)?,
        };
        let (start, e) = (*sorted.addrs.get(i)?, sorted.entries.get(i)?);
        if e.size > 0 && addr - start >= e.size {
            return None;
        }
        Some(Hit { name: e.name, start, demangled: Some(&e.demangled) })
    }

    /// Start fetching what `find(addr)` will read once the table is sorted,
    /// so that the lookups of a line wait for memory together rather than
    /// one after another (in a large binary each is a miss in `addrs`, one
    /// in `entries` and one in the names): at `stage` 0 its block of
    /// `addrs` (`top` stays cached), at 1 its entry (reading the block), at
    /// 2 its name, or once made its `sym` member and name (reading the
    /// entry). Nothing before the sort.
    pub fn prefetch(&mut self, addr: u64, stage: u8) {
        let Some(sorted) = self.sorted.get() else { return };
        if self.hints.is_empty() {
            self.hints = vec![Hint { addr: 0, block: NONE32, at: NONE32 }; HINTS];
        }
        let Some(hint) = self.hints.get_mut(hint_slot(addr)) else { return };
        let known = hint.addr == addr;
        match stage {
            0 => {
                let Some(block) = sorted.block(addr) else { return };
                *hint = Hint { addr, block: block as u32, at: NONE32 };
                let from = block * TOP;
                let end = (from + TOP).min(sorted.addrs.len());
                for a in sorted.addrs.get(from..end).unwrap_or_default().iter().step_by(8) {
                    prefetch_ptr(std::ptr::from_ref(a).cast());
                }
            }
            1 => {
                // A hint is of one address (its block and place), or of none.
                let block = if known && hint.block != NONE32 {
                    Some(hint.block as usize)
                } else {
                    sorted.block(addr)
                };
                let Some((block, i)) = block.and_then(|b| Some((b, sorted.within(b, addr)?)))
                else {
                    return;
                };
                *hint = Hint { addr, block: block as u32, at: i as u32 };
                if let Some(e) = sorted.entries.get(i) {
                    let p: *const u8 = std::ptr::from_ref(e).cast();
                    prefetch_ptr(p);
                    prefetch_ptr(p.wrapping_add(size_of::<Entry>() - 1));
                }
            }
            _ => {
                let i = if known && hint.at != NONE32 {
                    Some(hint.at as usize)
                } else {
                    sorted.position(addr)
                };
                let Some(e) = i.and_then(|i| sorted.entries.get(i)) else { return };
                if let Some(st) = e.demangled.get() {
                    // Made already: what the answer copies (its `sym`
                    // member) and counts a reference to (the name).
                    prefetch(&st.json);
                    prefetch(st.name.as_bytes());
                    return;
                }
                let src = match e.name.table {
                    0 => &self.arena[..],
                    _ => self.file.as_deref().unwrap_or_default(),
                };
                if let Some(name) = usize::try_from(e.name.at).ok().and_then(|at| src.get(at..)) {
                    prefetch(name);
                }
            }
        }
    }

    /// Every address where the symbol found may change: each symbol's
    /// start, and the end of each sized one.
    pub fn boundaries(&mut self) -> impl Iterator<Item = u64> + '_ {
        let sorted = self.sort();
        sorted.addrs.iter().zip(&sorted.entries).flat_map(|(&a, e)| [a, a.wrapping_add(e.size)])
    }

    /// The name of a symbol found, its bytes that are not UTF-8 written by
    /// our tools' rule (`\xHH`); "" when the file lied about where it is.
    pub fn name(&self, s: SymName) -> std::borrow::Cow<'_, str> {
        let (src, end): (&[u8], usize) = match s.table {
            0 => (&self.arena, self.arena.len()),
            t => (
                self.file.as_deref().unwrap_or_default(),
                self.table_end.get(usize::from(t) - 1).copied().unwrap_or(0),
            ),
        };
        let rest = usize::try_from(s.at)
            .ok()
            .and_then(|at| src.get(at..end.min(at.saturating_add(MAX_NAME))))
            .unwrap_or_default();
        let end = memchr::memchr(0, rest).unwrap_or(rest.len());
        leakd_common::text::to_text(&rest[..end])
    }
}

impl Sorted {
    /// The block of `addrs` (by `top`) that holds `addr`'s symbol.
    fn block(&self, addr: u64) -> Option<usize> {
        self.top.partition_point(|&a| a <= addr).checked_sub(1)
    }

    /// The last of `addrs` at or below `addr`: its block by `top`, then
    /// within the block.
    fn position(&self, addr: u64) -> Option<usize> {
        self.within(self.block(addr)?, addr)
    }

    /// `position` in block `block` (`addr`'s).
    fn within(&self, block: usize, addr: u64) -> Option<usize> {
        let from = block * TOP;
        let within = self.addrs.get(from..(from + TOP).min(self.addrs.len()))?;
        Some(from + within.partition_point(|&a| a <= addr).checked_sub(1)?)
    }
}

/// The places in `syms` of the best symbol at each address (see
/// `Symbol::key`), by address. The keys alone are sorted, as integers: a
/// comparison of two symbols computing their keys made the sort ten times
/// slower. Packed in 64 bits when they fit (addresses, ranks and places
/// of a binary are small), they are sorted by radix, a few passes over the
/// keys where a comparison sort of 128-bit keys took 36M instructions for
/// node's 150k symbols (a tenth of a cold run's lookups).
fn by_key(syms: &[Symbol]) -> Vec<u32> {
    let bits = |x: u64| 64 - x.leading_zeros();
    let max_addr = syms.iter().map(|s| s.addr).max().unwrap_or(0);
    let max_rank = syms.iter().map(|s| s.rank).max().unwrap_or(0);
    let (sb, rb) = (bits(syms.len() as u64), bits(max_rank.into()));
    let low = 1 + rb + sb;
    if bits(max_addr) + low > 64 {
        let mut keys: Vec<u128> = syms.iter().map(Symbol::key).collect();
        keys.sort_unstable();
        keys.dedup_by_key(|k| (*k >> 64) as u64);
        return keys.into_iter().map(|k| k as u32).collect();
    }
    let mut keys: Vec<u64> = syms
        .iter()
        .map(|s| {
            s.addr << low
                | u64::from(s.size == 0) << (rb + sb)
                | u64::from(s.rank) << sb
                | u64::from(s.seq)
        })
        .collect();
    radix_sort(&mut keys, bits(max_addr) + low);
    keys.dedup_by_key(|k| *k >> low);
    let seq = (1u64 << sb) - 1;
    keys.into_iter().map(|k| (k & seq) as u32).collect()
}

/// Sort `keys` (of `bits` bits) by their bytes, least significant first;
/// a byte that is the same in every key costs no pass.
fn radix_sort(keys: &mut Vec<u64>, bits: u32) {
    let mut other = vec![0u64; keys.len()];
    for shift in (0..bits).step_by(8) {
        let mut at = [0usize; 256];
        for &k in keys.iter() {
            at[(k >> shift) as usize & 0xff] += 1;
        }
        if at.contains(&keys.len()) {
            continue;
        }
        let mut sum = 0;
        for c in &mut at {
            (*c, sum) = (sum, sum + *c);
        }
        for &k in keys.iter() {
            let d = (k >> shift) as usize & 0xff;
            if let Some(slot) = other.get_mut(at[d]) {
                *slot = k;
            }
            at[d] += 1;
        }
        std::mem::swap(keys, &mut other);
    }
}

/// Why a file could not be used.
#[derive(Debug)]
pub enum LoadError {
    Missing(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing(e) => write!(f, "{e}"),
            LoadError::Corrupt(e) => write!(f, "not a usable ELF file: {e}"),
        }
    }
}

pub struct ElfFile {
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<Segment>,
    pub symbols: SymbolTable,
    /// (file name, CRC32) from .gnu_debuglink.
    pub debuglink: Option<(String, u32)>,
    /// DWARF sections by name, present only when the file has .debug_info.
    pub dwarf: Option<DwarfSections>,
    /// Set when the debug sections were there but unusable.
    pub dwarf_error: Option<String>,
}

pub struct DwarfSections {
    /// Section name → its bytes: a checked range of the file's buffer, or
    /// of a copy inflated on first use.
    sections: Vec<(String, Section)>,
    endian: RunTimeEndian,
    /// The file's executable segments, [begin, end) addresses: the only
    /// addresses symres asks DWARF about.
    pub code: Vec<(u64, u64)>,
}

/// A compressed section (SHF_COMPRESSED) is inflated on first use: some are
/// never read (.debug_loc), and a resolving thread that loads a file another
/// one has loaded uses that one's DWARF and drops its own unread.
enum Section {
    Plain(Reader),
    Compressed { raw: Reader, chdr: Chdr, inflated: std::sync::OnceLock<Result<Reader, String>> },
}

impl DwarfSections {
    /// A section by name, `None` when the file does not have it or its
    /// compressed data is corrupt (its header was checked on loading).
    pub fn section(&self, name: &str) -> Option<Reader> {
        match &self.sections.iter().find(|(s, _)| s == name)?.1 {
            Section::Plain(r) => Some(r.clone()),
            Section::Compressed { raw, chdr, inflated } => inflated
                .get_or_init(|| {
                    let r = inflate(raw.bytes(), *chdr)
                        .map(|b| EndianReader::new(Bytes::heap(b), self.endian));
                    if let Err(e) = &r {
                        crate::log::log!(1, "{name}: {e}, left out");
                    }
                    r
                })
                .clone()
                .ok(),
        }
    }

    /// The context over all units.
    pub fn context(&self) -> Result<addr2line::Context<Reader>, gimli::Error> {
        self.context_with(|name| self.section(name))
    }

    /// A context over the sections `get` gives by name (missing ones empty).
    pub fn context_with(
        &self,
        get: impl Fn(&str) -> Option<Reader>,
    ) -> Result<addr2line::Context<Reader>, gimli::Error> {
        addr2line::Context::from_dwarf(self.dwarf_with(get)?)
    }

    /// The sections for gimli itself.
    pub fn dwarf(&self) -> Result<gimli::Dwarf<Reader>, gimli::Error> {
        self.dwarf_with(|name| self.section(name))
    }

    fn dwarf_with(
        &self,
        get: impl Fn(&str) -> Option<Reader>,
    ) -> Result<gimli::Dwarf<Reader>, gimli::Error> {
        let empty = Bytes::heap(Vec::new());
        gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
            Ok(get(id.name()).unwrap_or_else(|| EndianReader::new(empty.clone(), self.endian)))
        })
    }
}

impl ElfFile {
    /// Read and parse `path`. Never panics on malformed files (goblin's
    /// parser is additionally fenced off with catch_unwind by the caller).
    #[cfg(test)]
    pub fn open(path: &std::path::Path) -> Result<ElfFile, LoadError> {
        ElfFile::of_file(crate::files::open_regular(path).map_err(LoadError::Missing)?)
    }

    /// An open file (see crate::files for how frames' files are opened).
    pub fn of_file(file: std::fs::File) -> Result<ElfFile, LoadError> {
        ElfFile::parse_shared(Bytes::of_file(file).map_err(LoadError::Missing)?)
    }

    pub fn parse(data: &[u8]) -> Result<ElfFile, LoadError> {
        ElfFile::parse_shared(Bytes::heap(data.to_vec()))
    }

    /// Like `parse`, keeping `data` instead of copying it.
    pub fn parse_owned(data: Vec<u8>) -> Result<ElfFile, LoadError> {
        ElfFile::parse_shared(Bytes::heap(data))
    }

    /// Parse a file already in memory; DWARF sections keep `file` alive and
    /// point into it.
    pub fn parse_shared(file: Bytes) -> Result<ElfFile, LoadError> {
        let data: &[u8] = &file;
        let (elf, raw_tables) = match parse_lazily(data) {
            Some(x) => x,
            None => {
                let elf = Elf::parse(data).map_err(|e| LoadError::Corrupt(e.to_string()))?;
                (elf, None)
            }
        };
        let names = raw_tables.map(|r| r.names);
        let endian = if elf.little_endian { RunTimeEndian::Little } else { RunTimeEndian::Big };

        let loads: Vec<&goblin::elf::ProgramHeader> =
            elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD).collect();
        // A debug file whose program headers lost their offsets: its code
        // sections are there without their bytes, and so is some of its code
        // segment (headers kept as they were are read as they are).
        let debug_only =
            elf.section_headers.iter().any(|sh| {
                sh.sh_type == section_header::SHT_NOBITS
                    && sh.sh_flags & u64::from(section_header::SHF_EXECINSTR) != 0
                    && sh.sh_size > 0
            }) && loads.iter().any(|p| p.p_flags & PF_X != 0 && p.p_filesz < p.p_memsz);
        let segments: Vec<Segment> = if debug_only {
            binary_layout(&loads)
        } else {
            let seg = |p: &&goblin::elf::ProgramHeader| Segment {
                offset: p.p_offset,
                vaddr: p.p_vaddr,
                filesz: p.p_filesz,
                memsz: p.p_memsz,
                exec: p.p_flags & PF_X != 0,
            };
            loads.iter().map(seg).collect()
        };

        let mut symbols = SymbolTable { file: Some(file.clone()), ..SymbolTable::default() };
        let is_func = |s: &sym::Sym| {
            let t = s.st_type();
            (t == sym::STT_FUNC || t == sym::STT_GNU_IFUNC) && s.st_shndx != 0 && s.st_value != 0
        };
        // Sized up front: growing by doubling copied megabytes. Room for
        // every symbol: the pages of the unused part are never touched.
        symbols.syms.reserve(elf.syms.len() + elf.dynsyms.len());
        let tables = [
            (&elf.syms, &elf.strtab, names.map(|n| n[0])),
            (&elf.dynsyms, &elf.dynstrtab, names.map(|n| n[1])),
        ];
        for (t, (syms, strtab, raw)) in tables.into_iter().enumerate() {
            // Where the raw table starts in the file: names are used in place.
            // (An absent table is an empty slice from elsewhere: no base.)
            let base = raw.and_then(|r| (r.as_ptr() as usize).checked_sub(data.as_ptr() as usize));
            if let (Some(r), Some(b)) = (raw, base) {
                symbols.table_end[t] = b + r.len();
            }
            if let (Some(r), Some(base), Some(tables), true, true) =
                (raw, base, raw_tables, elf.is_64, elf.little_endian)
            {
                // As below, from the table's bytes.
                for f in funcs_le64(tables.syms[t]) {
                    if f.name != 0 && f.name < r.len() {
                        symbols.push_in_file(t as u8 + 1, base + f.name, f.value, f.size, f.rank);
                    }
                }
                continue;
            }
            for s in syms.iter().filter(is_func) {
                let rank = rank(s.st_bind());
                match (raw, base) {
                    (Some(r), Some(base)) => {
                        // Checked here only as far as "named, in the table",
                        // without reading the name: reading every symbol's
                        // first byte touched the whole string table (node's
                        // is megabytes), a quarter of a single line's time.
                        // An empty name is offset 0 (ELF's empty string); one
                        // elsewhere reads as "" when used, as no name.
                        if s.st_name != 0 && s.st_name < r.len() {
                            symbols.push_in_file(
                                t as u8 + 1,
                                base + s.st_name,
                                s.st_value,
                                s.st_size,
                                rank,
                            );
                        }
                    }
                    _ => {
                        if let Some(name) = strtab.get_at(s.st_name).filter(|n| !n.is_empty()) {
                            symbols.push(name, s.st_value, s.st_size, rank);
                        }
                    }
                }
            }
        }

        let build_id = build_id(&elf, data);

        let mut debuglink = None;
        let mut debug_secs = Vec::new();
        let mut has_info = false;
        let mut dwarf_error = None;
        for sh in &elf.section_headers {
            let Some(name) = elf.shdr_strtab.get_at(sh.sh_name) else { continue };
            if name == ".gnu_debuglink" {
                debuglink =
                    section_bytes(data, sh).and_then(|b| parse_debuglink(b, elf.little_endian));
                continue;
            }
            if !name.starts_with(".debug_") && !name.starts_with(".zdebug_") {
                continue;
            }
            if name.starts_with(".zdebug_") {
                // Old GNU compression, long superseded by SHF_COMPRESSED.
                dwarf_error = Some(format!("{name}: .zdebug compression is not supported"));
                continue;
            }
            if sh.sh_type == section_header::SHT_NOBITS {
                continue;
            }
            let bytes = match section_bytes(data, sh) {
                Some(b) => b,
                None => {
                    dwarf_error = Some(format!("{name} lies outside the file"));
                    continue;
                }
            };
            // In bounds: section_bytes checked sh_offset + sh_size.
            let start = bytes.as_ptr() as usize - data.as_ptr() as usize;
            let raw = EndianReader::new(file.clone(), endian).range(start..start + bytes.len());
            let section = if sh.sh_flags & u64::from(section_header::SHF_COMPRESSED) != 0 {
                match Chdr::parse(bytes, elf.is_64, elf.little_endian) {
                    Ok(chdr) => Section::Compressed { raw, chdr, inflated: Default::default() },
                    Err(e) => {
                        dwarf_error = Some(format!("{name}: {e}"));
                        continue;
                    }
                }
            } else {
                Section::Plain(raw)
            };
            has_info |= name == ".debug_info";
            debug_secs.push((name.to_string(), section));
        }
        let code = loads
            .iter()
            .filter(|p| p.p_flags & PF_X != 0)
            .map(|p| (p.p_vaddr, p.p_vaddr.saturating_add(p.p_memsz)))
            .collect();
        let dwarf = has_info.then_some(DwarfSections { sections: debug_secs, endian, code });

        Ok(ElfFile { build_id, segments, symbols, debuglink, dwarf, dwarf_error })
    }
}

/// Goblin's `Elf::parse`, cut down to what symres reads: it skips
/// relocations and the dynamic section, and leaves the symbol string tables
/// unparsed (returned raw, for `cstr_at`), which goblin would split into a
/// vector of every string first: together most of the time to first answer
/// for a large binary. `None` (use `Elf::parse`) for files it does not
/// handle: no section headers, or extended section numbering.
fn parse_lazily(data: &[u8]) -> Option<(Elf<'_>, Option<RawTables<'_>>)> {
    use goblin::container::{Container, Ctx};
    use goblin::elf::{ProgramHeader, SectionHeader, Symtab};
    let header = Elf::parse_header(data).ok()?;
    if header.e_shnum == 0 || header.e_shstrndx == section_header::SHN_XINDEX as u16 {
        return None;
    }
    let container = header.container().ok()?;
    let ctx = Ctx::new(container, header.endianness().ok()?);
    let mut elf = Elf::lazy_parse(header).ok()?;
    elf.program_headers =
        ProgramHeader::parse(data, header.e_phoff as usize, header.e_phnum as usize, ctx).ok()?;
    elf.section_headers =
        SectionHeader::parse(data, header.e_shoff as usize, header.e_shnum as usize, ctx).ok()?;
    let bytes_of = |sh: &section_header::SectionHeader| section_bytes(data, sh);
    let shstr = elf.section_headers.get(usize::from(header.e_shstrndx)).and_then(bytes_of)?;
    elf.shdr_strtab = goblin::strtab::Strtab::parse(shstr, 0, shstr.len(), 0).ok()?;
    let entsize = if container == Container::Big { 24 } else { 16 };
    let mut raw: [&[u8]; 2] = [&[], &[]];
    let mut entries: [&[u8]; 2] = [&[], &[]];
    for (i, ty) in [section_header::SHT_SYMTAB, section_header::SHT_DYNSYM].into_iter().enumerate()
    {
        let Some(sh) = elf.section_headers.iter().rfind(|sh| sh.sh_type == ty) else { continue };
        entries[i] = bytes_of(sh)?;
        let count = usize::try_from(sh.sh_size / entsize).ok()?;
        let syms = Symtab::parse(data, usize::try_from(sh.sh_offset).ok()?, count, ctx).ok()?;
        raw[i] =
            elf.section_headers.get(sh.sh_link as usize).and_then(bytes_of).unwrap_or_default();
        if i == 0 {
            elf.syms = syms;
        } else {
            elf.dynsyms = syms;
        }
    }
    Some((elf, Some(RawTables { names: raw, syms: entries })))
}

/// The symbol tables `parse_lazily` leaves unparsed, as they are in the
/// file: their string tables (names are read in place) and their entries.
#[derive(Clone, Copy)]
struct RawTables<'a> {
    names: [&'a [u8]; 2],
    syms: [&'a [u8]; 2],
}

/// A function symbol of a table: where its name is in the table's
/// strings, its value, size and rank (global, weak, local).
struct FuncSym {
    name: usize,
    value: u64,
    size: u64,
    rank: u8,
}

/// The function symbols of a 64-bit little-endian symbol table `entries`
/// (Elf64_Sym, 24 bytes each), read straight from its bytes: goblin's
/// reader, a call and a copy of every field per symbol, was most of the
/// time a large binary's load took (node: 110k symbols, 2.7 ms of a
/// 10 ms single line). The same symbols as `is_func` keeps of goblin's.
fn funcs_le64(entries: &[u8]) -> impl Iterator<Item = FuncSym> + '_ {
    entries.chunks_exact(24).filter_map(|e| {
        let info = e[4];
        let t = info & 0xf;
        let shndx = u16::from_le_bytes([e[6], e[7]]);
        let le64 = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or(0);
        let value = le64(&e[8..16]);
        if !(t == sym::STT_FUNC || t == sym::STT_GNU_IFUNC) || shndx == 0 || value == 0 {
            return None;
        }
        let name = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize;
        Some(FuncSym { name, value, size: le64(&e[16..24]), rank: rank(info >> 4) })
    })
}

/// A symbol's rank among those at one address: global, weak, local.
fn rank(bind: u8) -> u8 {
    match bind {
        sym::STB_GLOBAL => 0,
        sym::STB_WEAK => 1,
        _ => 2,
    }
}

/// The segments of the binary a debug file (objcopy --only-keep-debug) was
/// made from. The debug file keeps the binary's program headers but not
/// their file offsets, and our tracers report file offsets: when the binary
/// is gone, only its debug file can map them. Linkers lay segments out in
/// address order, each at the first offset after the one before that is
/// congruent to its address modulo its alignment (ld.bfd, gold and lld
/// alike); a segment's size in the file is its size in memory up to the
/// first writable one (whose .bss has no bytes in the file), after which
/// the layout is not known and no segment is given.
fn binary_layout(loads: &[&goblin::elf::ProgramHeader]) -> Vec<Segment> {
    let mut loads = loads.to_vec();
    loads.sort_by_key(|p| p.p_vaddr);
    let mut out = Vec::new();
    let mut end = 0u64;
    for p in loads {
        let align = if p.p_align.is_power_of_two() { p.p_align } else { 1 };
        let Some(offset) = end.checked_add(p.p_vaddr.wrapping_sub(end) & (align - 1)) else {
            break;
        };
        out.push(Segment {
            offset,
            vaddr: p.p_vaddr,
            filesz: p.p_memsz,
            memsz: p.p_memsz,
            exec: p.p_flags & PF_X != 0,
        });
        if p.p_flags & goblin::elf::program_header::PF_W != 0 {
            break;
        }
        let Some(e) = offset.checked_add(p.p_memsz) else { break };
        end = e;
    }
    out
}

/// Whether `vaddr` is in an executable segment.
pub fn is_code(segments: &[Segment], vaddr: u64) -> bool {
    segments.iter().any(|s| s.exec && vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
}

/// The ELF address that file offset `offset` is loaded at.
pub fn offset_to_vaddr(segments: &[Segment], offset: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| offset >= s.offset && offset - s.offset < s.filesz.max(1))
        .and_then(|s| s.vaddr.checked_add(offset - s.offset))
}

fn section_bytes<'a>(data: &'a [u8], sh: &section_header::SectionHeader) -> Option<&'a [u8]> {
    let start = usize::try_from(sh.sh_offset).ok()?;
    let len = usize::try_from(sh.sh_size).ok()?;
    data.get(start..start.checked_add(len)?)
}

/// NT_GNU_BUILD_ID from the note sections, or from PT_NOTE segments when
/// the section headers are gone.
fn build_id(elf: &Elf<'_>, data: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let find = |it: Option<goblin::elf::note::NoteIterator<'_>>| -> Option<Vec<u8>> {
        it?.take(64)
            .map_while(Result::ok)
            .find(|n| n.n_type == NT_GNU_BUILD_ID && n.name == "GNU" && !n.desc.is_empty())
            .map(|n| n.desc.to_vec())
    };
    find(elf.iter_note_sections(data, Some(".note.gnu.build-id")))
        .or_else(|| find(elf.iter_note_sections(data, None)))
        .or_else(|| find(elf.iter_note_headers(data)))
}

fn parse_debuglink(b: &[u8], little: bool) -> Option<(String, u32)> {
    let nul = b.iter().position(|&c| c == 0)?;
    let name = std::str::from_utf8(&b[..nul]).ok()?.to_string();
    let crc_at = (nul + 1).div_ceil(4) * 4;
    let crc: [u8; 4] = b.get(crc_at..crc_at + 4)?.try_into().ok()?;
    let crc = if little { u32::from_le_bytes(crc) } else { u32::from_be_bytes(crc) };
    (!name.is_empty() && !name.contains('/')).then_some((name, crc))
}

/// The header of an SHF_COMPRESSED section (Elf{32,64}_Chdr, then zlib
/// data): the uncompressed size and where the data starts.
#[derive(Debug, Clone, Copy)]
struct Chdr {
    size: u64,
    data_at: usize,
}

impl Chdr {
    fn parse(b: &[u8], is_64: bool, little: bool) -> Result<Chdr, String> {
        const ELFCOMPRESS_ZLIB: u32 = 1;
        let rd32 = |at: usize| -> Option<u32> {
            let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(if little { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
        };
        let rd64 = |at: usize| -> Option<u64> {
            let a: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
            Some(if little { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) })
        };
        let (ty, size, data_at) =
            if is_64 { (rd32(0), rd64(8), 24) } else { (rd32(0), rd32(4).map(u64::from), 12) };
        let (Some(ty), Some(size)) = (ty, size) else {
            return Err("truncated compression header".into());
        };
        if ty != ELFCOMPRESS_ZLIB {
            return Err(format!("unsupported compression type {ty}"));
        }
        // Refuse absurd sizes from corrupt headers before allocating.
        if size > (b.len() as u64).saturating_mul(1032).max(1 << 20) {
            return Err("implausible uncompressed size".into());
        }
        Ok(Chdr { size, data_at })
    }
}

/// The data of a compressed section `b` whose header is `chdr`.
fn inflate(b: &[u8], chdr: Chdr) -> Result<Vec<u8>, String> {
    // Reserve no more than a plausible amount up front: a corrupt header
    // may claim gigabytes, and a failed allocation aborts (catch_unwind
    // cannot stop that); the buffer grows as real data arrives.
    let mut out = Vec::with_capacity(usize::try_from(chdr.size.min(64 << 20)).unwrap_or(0));
    flate2::read::ZlibDecoder::new(b.get(chdr.data_at..).unwrap_or_default())
        .take(chdr.size)
        .read_to_end(&mut out)
        .map_err(|e| format!("zlib: {e}"))?;
    if out.len() as u64 != chdr.size {
        return Err("compressed data is truncated".into());
    }
    Ok(out)
}

/// The CRC32 gdb checks .gnu_debuglink targets against.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A debug file's inferred layout is its binary's, for the layouts of
    /// ld.bfd (with and without separate code, PIE or not, 2 MiB pages),
    /// gold, and lld (this test binary, as rustc links it).
    #[test]
    fn debug_file_segments_are_the_binarys() {
        let dir = std::env::temp_dir().join(format!("symres-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/symres/prog.c");
        let run =
            |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        let mut binaries = vec![std::env::current_exe().unwrap()];
        for (i, flags) in [
            "",
            "-no-pie",
            "-Wl,-z,noseparate-code",
            "-fuse-ld=gold",
            "-no-pie -Wl,-z,max-page-size=0x200000",
        ]
        .iter()
        .enumerate()
        {
            let out = dir.join(format!("prog{i}"));
            run(std::process::Command::new("gcc")
                .args(["-g", "-O1"])
                .arg(&src)
                .args(flags.split_whitespace())
                .arg("-o")
                .arg(&out));
            binaries.push(out);
        }
        for bin in &binaries {
            let debug = dir.join("debug");
            run(std::process::Command::new("objcopy")
                .arg("--only-keep-debug")
                .arg(bin)
                .arg(&debug));
            let (Ok(b), Ok(d)) = (ElfFile::open(bin), ElfFile::open(&debug)) else {
                panic!("cannot read {}", bin.display())
            };
            let key = |s: &Segment| (s.offset, s.vaddr, s.filesz, s.exec);
            // Up to the first writable segment, which is the last given.
            let want: Vec<_> = b.segments.iter().take(d.segments.len()).map(key).collect();
            let got: Vec<_> = d.segments.iter().map(key).collect();
            let n = got.len();
            assert!(n >= 2 && n <= b.segments.len(), "{}: {got:x?}", bin.display());
            assert_eq!(got[..n - 1], want[..n - 1], "{}", bin.display());
            assert_eq!(
                (got[n - 1].0, got[n - 1].1),
                (want[n - 1].0, want[n - 1].1),
                "{}",
                bin.display()
            );
            assert!(got.iter().any(|s| s.3), "{}: no code", bin.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debuglink_is_name_then_aligned_crc() {
        let mut b = b"prog.debug\0\0".to_vec();
        b.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        assert_eq!(parse_debuglink(&b, true), Some(("prog.debug".to_string(), 0x1234_5678)));
        assert_eq!(parse_debuglink(b"x\0", true), None);
    }

    /// The function symbols read straight from a 64-bit little-endian
    /// table are those goblin's reader gives (name, address, size, rank,
    /// in the same order), in a binary with a full symbol table (this
    /// test's), and in libc (its dynamic symbols, a stripped .symtab).
    #[test]
    fn symbols_read_from_bytes_are_goblins() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("libc");
        let mut ranks = std::collections::BTreeSet::new();
        for path in [std::env::current_exe().unwrap(), libc.into()] {
            let data = std::fs::read(&path).unwrap();
            let elf = ElfFile::parse(&data).unwrap();
            let t = &elf.symbols;
            let got: Vec<(String, u64, u64, u8)> = t
                .syms
                .iter()
                .map(|s| {
                    let n = t.name(SymName { at: s.name_at, table: s.table }).into_owned();
                    (n, s.addr, s.size, s.rank)
                })
                .collect();
            assert!(t.syms.iter().all(|s| s.table != 0), "names read in place");
            let g = Elf::parse(&data).unwrap();
            let mut want = Vec::new();
            for (syms, names) in [(&g.syms, &g.strtab), (&g.dynsyms, &g.dynstrtab)] {
                for s in syms.iter() {
                    let func = matches!(s.st_type(), sym::STT_FUNC | sym::STT_GNU_IFUNC);
                    let name = names.get_at(s.st_name).unwrap_or_default();
                    if func && s.st_shndx != 0 && s.st_value != 0 && !name.is_empty() {
                        want.push((name.to_string(), s.st_value, s.st_size, rank(s.st_bind())));
                    }
                }
            }
            assert!(want.len() > 1000, "{}: {} functions", path.display(), want.len());
            ranks.extend(want.iter().map(|w| w.3));
            assert_eq!(got, want, "{}", path.display());
        }
        assert_eq!(ranks.len(), 3, "global, weak and local symbols compared");
    }

    #[test]
    fn symbol_lookup_respects_sizes() {
        // Scanned (the first lookups), then sorted: the same answers.
        let table = || {
            let mut t = SymbolTable::default();
            t.push("b", 0x2000, 0x10, 0);
            t.push("a_local_alias", 0x1000, 0x100, 2);
            t.push("a", 0x1000, 0x100, 0);
            t.push("a_second", 0x1000, 0x100, 0);
            t.push("nosize", 0x3000, 0, 0);
            t
        };
        for sorted in [false, true] {
            let t = table();
            if sorted {
                t.sort();
            }
            // Unsorted, each lookup is a fresh table's first (a scan).
            let name = |a: u64| {
                let fresh = table();
                let t = if sorted { &t } else { &fresh };
                let r = t.lookup(a).map(|(n, s)| (t.name(n).to_string(), s));
                assert_eq!(t.sorted.get().is_some(), sorted);
                r
            };
            assert_eq!(name(0x1000), Some(("a".into(), 0x1000)));
            assert_eq!(name(0x10ff), Some(("a".into(), 0x1000)));
            assert_eq!(name(0x1100), None);
            assert_eq!(name(0x2008), Some(("b".into(), 0x2000)));
            assert_eq!(name(0x3100), Some(("nosize".into(), 0x3000)));
            assert_eq!(name(0xfff), None);
            assert_eq!(t.sorted.get().is_some(), sorted);
        }
    }

    /// The two-level search finds what one binary search over all the
    /// addresses finds, at every start, either side of it, and around
    /// blocks' edges, for tables of one block and less, and of many.
    #[test]
    fn two_level_search_is_a_binary_search() {
        let mut next = crate::testing::rng(0x7e0_1e7e1);
        for n in (1..=3 * TOP + 1).chain([1000, 4099]) {
            let mut t = SymbolTable::default();
            for i in 0..n {
                t.push(&format!("s{i}"), 0x1000 + next() % (n as u64 * 64), 0, 0);
            }
            let t = t.sort();
            let probes = t.addrs.iter().flat_map(|&a| [a - 1, a, a + 1]).chain([0, u64::MAX]);
            for a in probes {
                let want = t.addrs.partition_point(|&x| x <= a).checked_sub(1);
                assert_eq!(t.position(a), want, "{n} symbols, at {a:#x}");
            }
        }
    }

    /// The radix sort of packed keys orders as the 128-bit keys do, on
    /// tables with many symbols at one address, and the 128-bit sort is
    /// used when addresses are too large to pack.
    #[test]
    fn packed_keys_sort_like_wide_ones() {
        let mut next = crate::testing::rng(0x5a17_0f4a_d1e5);
        for (n, span) in [(0, 1), (1, 1), (300, 0x40), (5000, 0x10_0000), (2000, u64::MAX)] {
            let mut t = SymbolTable::default();
            for i in 0..n {
                let r = next();
                let addr = 0x40_0000u64.wrapping_add(next() % span);
                t.push(&format!("s{i}"), addr, r % 3 * 16, ((r >> 8) % 3) as u8);
            }
            let mut keys: Vec<u128> = t.syms.iter().map(Symbol::key).collect();
            keys.sort_unstable();
            keys.dedup_by_key(|k| (*k >> 64) as u64);
            let want: Vec<u32> = keys.into_iter().map(|k| k as u32).collect();
            assert_eq!(by_key(&t.syms), want, "{n} symbols over {span:#x}");
        }
    }

    /// A scan finds what the sorted table finds, on tables with many
    /// symbols sharing addresses, sizes and ranks.
    #[test]
    fn scanned_lookups_answer_like_sorted_ones() {
        let mut next = crate::testing::rng(0x5eed_0f5c_a115_0001);
        for _ in 0..50 {
            let mut t = SymbolTable::default();
            for i in 0..200 {
                let r = next();
                t.push(
                    &format!("s{i}"),
                    0x1000 + (r % 64) * 8,
                    (r >> 8) % 3 * 12,
                    ((r >> 16) % 3) as u8,
                );
            }
            let addrs: Vec<u64> = (0..32).map(|_| 0xff8 + next() % 0x240).collect();
            let scanned: Vec<_> = addrs
                .iter()
                .map(|&a| {
                    // What `find` answers from a scan.
                    t.scan(a)
                        .filter(|s| s.size == 0 || a - s.addr < s.size)
                        .map(|s| (SymName { at: s.name_at, table: s.table }, s.addr))
                })
                .collect();
            for &a in addrs.iter().take(SCANS as usize) {
                assert_eq!(t.lookup(a), scanned[addrs.iter().position(|&x| x == a).unwrap()]);
            }
            assert!(t.sorted.get().is_none());
            t.sort();
            let sorted: Vec<_> = addrs.iter().map(|&a| t.lookup(a)).collect();
            assert_eq!(scanned, sorted);
        }
        // And the table sorts itself after SCANS lookups.
        let mut t = SymbolTable::default();
        t.push("f", 0x1000, 0x10, 0);
        for _ in 0..=SCANS {
            t.lookup(0x1000);
        }
        assert!(t.sorted.get().is_some());
    }

    /// Lookups after `prefetch` (its hints) answer as lookups without, for
    /// lines of more frames than there are hints (slots shared), frames
    /// repeated, stages stopped early, and addresses outside every symbol.
    #[test]
    fn prefetched_lookups_answer_like_plain_ones() {
        let mut next = crate::testing::rng(0x9e7c_4ed1_1ee5_0002);
        let mut t = SymbolTable::default();
        let mut plain = SymbolTable::default();
        for i in 0..5000 {
            let r = next();
            let (addr, size, rank) =
                (0x1000 + r % 0x40000, (r >> 20) % 3 * 40, ((r >> 30) % 3) as u8);
            t.push(&format!("s{i}"), addr, size, rank);
            plain.push(&format!("s{i}"), addr, size, rank);
        }
        t.prefetch(0x2000, 0);
        assert!(t.hints.is_empty(), "no hints before the sort");
        t.sort();
        plain.sort();
        for line in 0..200 {
            // Frames repeat within a line, and share hints' slots.
            let pool: Vec<u64> = (0..1 + line % 97).map(|_| next() % 0x42000).collect();
            let frames: Vec<u64> =
                (0..line % 150).map(|_| pool[next() as usize % pool.len()]).collect();
            let stages = (line % 4) as u8;
            for stage in 0..stages {
                for &a in &frames {
                    t.prefetch(a, stage);
                }
            }
            for &a in &frames {
                assert_eq!(t.lookup(a), plain.lookup(a), "at {a:#x}, {stages} stages");
            }
        }
        // Two addresses of one slot, in different blocks, met in any order
        // of stages: a hint is never another address's.
        let x = 0x2_0000;
        let y = (x + 0x1000..).find(|&y| hint_slot(y) == hint_slot(x)).unwrap();
        let blocks = t.sorted.get().map(|s| (s.block(x), s.block(y)));
        assert!(matches!(blocks, Some((Some(a), Some(b))) if a != b));
        for order in [[(x, 0), (y, 1), (y, 1)], [(x, 0), (y, 2), (y, 1)], [(y, 0), (x, 1), (x, 2)]]
        {
            for (a, stage) in order {
                t.prefetch(a, stage);
            }
            for a in [x, y] {
                assert_eq!(t.lookup(a), plain.lookup(a), "at {a:#x} after {order:x?}");
            }
        }
        assert!(plain.hints.is_empty());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(
            ElfFile::parse(b"\x7fELF\x02\x01\x01garbage"),
            Err(LoadError::Corrupt(_))
        ));
        assert!(matches!(ElfFile::parse(b""), Err(LoadError::Corrupt(_))));
    }
}
