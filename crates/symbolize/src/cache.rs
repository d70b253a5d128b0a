//! The cache of answers: what a run learned about a build, kept for the
//! next run of the same build without a flag.
//!
//! Tracers print the same stacks run after run, and a large build's cold
//! addresses cost the parse of their DWARF units (about 10 µs each), so a
//! second run of the same input would cost as much as the first. Each run
//! therefore writes, when its input ends, the answers it made for every
//! module with a build id, as a file named by that build id
//! (`<build-id>.answers`) in the index directory; the next run answers
//! those addresses from it, and merges what it learns in turn.
//!
//! The file is laid out for the second run, which reads little else: a
//! fence (each block's first address, searched through a small top level
//! built at load), one block of 8 sorted range starts (two cache lines),
//! then one record holding the range's end and the answer's text as the
//! output has it, cut where `sym_offset` goes (the only part that depends
//! on the address). A line's lookups are fetched ahead together
//! (`CacheFile::prefetch`), so that their cache misses overlap. Answers
//! are not shared between records: a lookup reads one contiguous record
//! instead of chasing parts across the file, and the first run writes
//! each answer as it rendered it for its output (a copy, no rendering, no
//! interning); the price is a larger file (about the answers' size in the
//! output), which the first run writes.
//!
//! A cache file is input like any other file, and shared by concurrent
//! runs: it is written aside and renamed (`crate::store`: a run killed
//! mid-write leaves no half file, two runs each put a whole file in place,
//! the last one wins); it names the build id and the files its answers
//! were made from (a debug file installed since makes it stale), and holds
//! a CRC of its contents, checked at load (a few milliseconds for the
//! largest files), so that a damaged or truncated file is said (a
//! warning, -v or not), ignored and written anew. Each record's text is
//! also checked to be JSON members as symres writes them, once, when first
//! used (that check would read the whole file at load): a file that passes
//! its CRC but was not written by symres still cannot break a line. The
//! files together stay under a size bound (`--cache-size`): the ones used
//! longest ago (by modification time, set again when a file is used) go
//! first.

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use crate::answer::{Outcome, Reason};
use crate::elf::Bytes;
use crate::frame_scan::Scan;
use crate::log;
use crate::prefetch::{prefetch, prefetch_ptr};
use crate::store::StoreDir;
use crate::tables::{self, u32_at, u64_at, Layout};
use leakd_common::text::push_hex_string;

/// The size the cache files of a directory are kept under, by default.
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// Answers a stream learns for the cache, at most (each holds its answer
/// until the run ends).
pub const MAX_LEARNED: usize = 1 << 20;

const SUFFIX: &str = ".answers";

const MAGIC: &[u8; 8] = b"SYMRESAC";
/// The layout's version (7: answers whole, by address range; 6 and before
/// shared the layout of a prebuilt index).
const VERSION: u32 = 7;
/// Answers (demangling, say) may change between versions of symres: a
/// file records the one that wrote it, and another's is not trusted.
const WRITER: &str = concat!("symres ", env!("CARGO_PKG_VERSION"));

/// A cache file of more entries than this is rewritten only when a run
/// brings at least a `FEW_RATIO`th as many new answers.
const FEW_ENTRIES: usize = 1 << 14;
const FEW_RATIO: usize = 64;

/// A temporary cache file this old is a killed run's, removed.
const STALE_SECS: u64 = 600;

/// No answer (a record word), no symbol start (a record's first field).
const NONE32: u32 = u32::MAX;
const NONE64: u64 = u64::MAX;

/// Entries per block: their starts (u64), then where their records are
/// (u32), then padding: 128 bytes, two cache lines fetched together (the
/// blocks start at a multiple of 128 in the file).
const BLOCK: usize = 8;
const BLOCK_BYTES: usize = 128;
/// Blocks per entry of `CacheFile::top`.
const TOP: usize = 32;

/// Lookups `CacheFile::prefetch` leaves hints for (a line's frames).
const HINTS: usize = 64;

/// The slot of `vaddr`'s hint.
fn hint_slot(vaddr: u64) -> usize {
    (vaddr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % HINTS
}

/// A record's fixed part: the end of its entry's range (u64), the
/// symbol's start (u64), the lengths of the text before and after
/// `sym_offset` (u32 each; the first NONE32 for no answer).
const RECORD_HEAD: usize = 24;

/// The cache file name for a build id.
pub fn file_name(build_id: &[u8]) -> String {
    format!("{}{SUFFIX}", leakd_common::text::hex_bytes(build_id))
}

/// What answers of a module are made from, beside its build id: the file
/// (`file`, its identity: a file changed in place keeps its build id but
/// may answer otherwise), and the same build gives other answers with a
/// separate debug file than without. Empty when the file's identity is
/// unknown: nothing is cached then.
pub fn provenance(
    file: Option<&str>,
    own_dwarf: bool,
    symbols: usize,
    debug: Option<(&[u8], usize, bool)>,
) -> Vec<u8> {
    let Some(file) = file else { return Vec::new() };
    let mut p = format!("{file}: {symbols} symbols, {}DWARF", if own_dwarf { "" } else { "no " });
    if let Some((id, symbols, dwarf)) = debug {
        p += &format!(
            "; debug file {}: {symbols} symbols, {}DWARF",
            leakd_common::text::hex_bytes(id),
            if dwarf { "" } else { "no " }
        );
    }
    p.into_bytes()
}

/// The cache of the module with `build_id` in `store`, if there is a
/// usable one; a damaged one is said (whatever the verbosity) and left to
/// be written anew. A file used is marked as such (its modification time).
pub fn load(store: &StoreDir, build_id: &[u8], provenance: &[u8]) -> Option<CacheFile> {
    let name = file_name(build_id);
    let path = store.path().join(&name);
    let file = match store.open_file(&name) {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(e) => {
            log::once(1, || format!("cache: {e}"));
            return None;
        }
    };
    // Used now: the last to be evicted.
    let _ = file.set_modified(SystemTime::now());
    let data = match Bytes::of_file(file) {
        Ok(d) => d,
        Err(e) => {
            log::once(1, || format!("cache: {}: {e}", path.display()));
            return None;
        }
    };
    match CacheFile::parse(data, build_id, provenance) {
        Ok(c) => {
            log::once(1, || format!("cache: using {} ({} entries)", path.display(), c.entries()));
            Some(c)
        }
        // Stale, not damaged: said under -v.
        Err(e) if e.starts_with("made from") || e.starts_with("written by") => {
            log::once(1, || format!("cache: {}: {e}, ignored", path.display()));
            None
        }
        Err(e) => {
            log::once(0, || {
                format!("warning: cache file {}: {e}; ignored, written anew", path.display())
            });
            None
        }
    }
}

/// What one module learned in a run: by the address looked up, how far
/// back from the frame's it was (see `Resolution::shifted`) and the
/// answer, as the output has it.
pub struct Learned {
    pub build_id: Vec<u8>,
    pub provenance: Vec<u8>,
    pub points: Vec<(u64, u64, Outcome)>,
    /// Answers from a symbol alone, as they were written (no answer was
    /// made for them): the address, the symbol's start and its `sym`
    /// member, the text before `sym_offset` (there is none after).
    pub syms: Vec<(u64, u64, std::sync::Arc<[u8]>)>,
}

impl Learned {
    /// The answers learned.
    pub fn len(&self) -> usize {
        self.points.len() + self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cache file, read in place: loading checks its header, CRC and table
/// bounds; each record is checked when first used.
pub struct CacheFile {
    data: Bytes,
    n: usize,
    n_blocks: usize,
    fence_at: usize,
    blocks_at: usize,
    /// The records' range in `data`.
    blob: std::ops::Range<usize>,
    /// Records found good, a bit per 8 bytes of blob (records are
    /// 8-aligned and at least 16 bytes long: one bit stands for one).
    checked: Vec<u64>,
    scan: Scan,
    /// Records `prefetch` found, by address (see `hint_slot`).
    hints: [(u64, u32); HINTS],
    /// The first start of every `TOP`th block: a binary search over the
    /// whole fence (100 KB for 100k entries) missed the cache at each of
    /// its last steps; this one fits in it, and leaves a search over
    /// `TOP` fence entries.
    top: Vec<u64>,
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A file's first bytes, up to and with its CRC (zero: filled in last):
/// magic, version, writer, build id, provenance (u32 lengths before the
/// bytes); where the CRC is.
fn header(build_id: &[u8], provenance: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(64 + build_id.len() + provenance.len());
    out.extend_from_slice(MAGIC);
    put32(&mut out, VERSION);
    for part in [WRITER.as_bytes(), build_id, provenance] {
        put32(&mut out, u32::try_from(part.len()).ok()?);
        out.extend_from_slice(part);
    }
    let crc_at = out.len();
    put32(&mut out, 0);
    Some((out, crc_at))
}

impl CacheFile {
    /// A cache file for the module with `build_id`, made from the files
    /// `provenance` describes: one of another build, made from other
    /// files (a debug file installed since, say), by another symres, or
    /// whose CRC does not match (damaged or cut short) is refused, and so
    /// is one whose tables do not fit in it.
    pub fn parse(data: Bytes, build_id: &[u8], provenance: &[u8]) -> Result<CacheFile, String> {
        let d: &[u8] = &data;
        if d.get(..8) != Some(MAGIC.as_slice()) {
            return Err("not a symres cache".into());
        }
        let version = u32_at(d, 8).ok_or("truncated")?;
        if version != VERSION {
            return Err(format!("written by another symres (format {version}, not {VERSION})"));
        }
        let mut at = 12;
        let mut part = || -> Result<&[u8], String> {
            let len = u32_at(d, at).ok_or("truncated")? as usize;
            let p = d.get(at + 4..(at + 4).saturating_add(len)).ok_or("truncated")?;
            at += 4 + len;
            Ok(p)
        };
        let writer = part()?;
        if writer != WRITER.as_bytes() {
            return Err(match std::str::from_utf8(writer) {
                Ok(w) if w.len() <= 64 && w.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                    format!("written by {w}, not {WRITER}")
                }
                _ => format!("written by something else than {WRITER}"),
            });
        }
        if part()? != build_id {
            return Err("cache of another build".into());
        }
        if part()? != provenance {
            return Err(
                "made from other files (the file changed, or a debug file was installed or removed)"
                    .into(),
            );
        }
        let crc = u32_at(d, at).ok_or("truncated")?;
        let h = at + 4;
        if crc32fast::hash(&d[h..]) != crc {
            return Err("damaged or truncated (checksum mismatch)".into());
        }
        let Layout { n, n_blocks, fence_at, blocks_at, blob } =
            tables::layout(d, h, BLOCK, BLOCK_BYTES)?;
        Ok(CacheFile {
            n,
            n_blocks,
            fence_at,
            blocks_at,
            blob,
            checked: Vec::new(),
            scan: Scan::default(),
            hints: [(0, NONE32); HINTS],
            top: (0..n_blocks)
                .step_by(TOP)
                .map(|b| u64_at(d, fence_at + 8 * b).unwrap_or(u64::MAX))
                .collect(),
            data,
        })
    }

    /// Another reader of the same file, checked already (each reader
    /// remembers which records it found good).
    pub fn fresh(&self) -> CacheFile {
        CacheFile {
            data: self.data.clone(),
            n: self.n,
            n_blocks: self.n_blocks,
            fence_at: self.fence_at,
            blocks_at: self.blocks_at,
            blob: self.blob.clone(),
            checked: Vec::new(),
            scan: Scan::default(),
            hints: [(0, NONE32); HINTS],
            top: self.top.clone(),
        }
    }

    /// How many address ranges it answers.
    pub fn entries(&self) -> usize {
        self.n
    }

    /// Entry `i`: its start and where its record is in the blob (`None`
    /// past the tables).
    fn entry(&self, i: usize) -> Option<(u64, usize)> {
        let (b, k) = (i / BLOCK, i % BLOCK);
        let block = self.blocks_at.checked_add(b.checked_mul(BLOCK_BYTES)?)?;
        let d: &[u8] = &self.data;
        Some((u64_at(d, block + 8 * k)?, u32_at(d, block + 8 * BLOCK + 4 * k)? as usize))
    }

    /// The block that holds the last entry starting at or before `vaddr`.
    fn block_of(&self, vaddr: u64) -> Option<usize> {
        // Among the `TOP` blocks after the last of `top` at or before it.
        let t = self.top.partition_point(|&s| s <= vaddr);
        let lo = t.saturating_sub(1) * TOP;
        tables::block_of(&self.data, self.fence_at, lo..(lo + TOP).min(self.n_blocks), vaddr)
    }

    /// Where the record of the last entry starting at or before `vaddr`
    /// is in the blob (whether its range holds `vaddr` or not).
    fn locate(&self, vaddr: u64) -> Option<usize> {
        let b = self.block_of(vaddr)?;
        let block = self.data.get(self.blocks_at + BLOCK_BYTES * b..)?.get(..BLOCK_BYTES)?;
        let n = self.n.saturating_sub(b * BLOCK).min(BLOCK);
        // The last entry of the block that starts at or before `vaddr`.
        let k = (0..n).take_while(|&k| u64_at(block, 8 * k).is_some_and(|s| s <= vaddr)).last()?;
        Some(u32_at(block, 8 * BLOCK + 4 * k)? as usize)
    }

    /// Where the record of the entry whose range holds `vaddr` is in the
    /// blob (found by `prefetch` already, most of the time).
    fn find(&self, vaddr: u64) -> Option<usize> {
        let hint = self.hints[hint_slot(vaddr)];
        let at =
            if hint.0 == vaddr && hint.1 != NONE32 { hint.1 as usize } else { self.locate(vaddr)? };
        let end = u64_at(self.data.get(self.blob.clone())?, at)?;
        (vaddr < end).then_some(at)
    }

    /// Start fetching what looking `vaddr` up will read, so that the
    /// lookups of a line wait for memory together rather than one after
    /// another (each is a few cache misses in a file of megabytes): at
    /// `stage` 0 its block (the fence, small, stays cached), at 1 its
    /// record (reading the block fetched at stage 0).
    pub fn prefetch(&mut self, vaddr: u64, stage: u8) {
        let d: &[u8] = &self.data;
        let at = match stage {
            0 => self.block_of(vaddr).map(|b| self.blocks_at + BLOCK_BYTES * b),
            _ => self.locate(vaddr).map(|at| {
                self.hints[hint_slot(vaddr)] = (vaddr, at as u32);
                self.blob.start + at
            }),
        };
        if let Some(line) = at.and_then(|at| d.get(at..)) {
            prefetch(line);
            prefetch(line.get(64..).unwrap_or_default());
        }
    }

    /// Whether the answer at `vaddr` is known.
    pub fn knows(&self, vaddr: u64) -> bool {
        self.find(vaddr).is_some()
    }

    /// The answer at `vaddr` for a frame `back` bytes further (see
    /// `Resolution::shifted`) as JSON object members, appended to `o`: the
    /// same text as the lookup gives. `None` when the answer is not known
    /// (nor is a record that fails its check: looked up again).
    pub fn lookup(&mut self, vaddr: u64, back: u64, o: &mut Vec<u8>) -> Option<Result<(), Reason>> {
        let at = self.find(vaddr)?;
        let Some((start, head, tail)) = self.record(at)? else {
            return Some(Err(Reason::NoSymbols));
        };
        let base = o.len();
        o.extend_from_slice(head);
        if start != NONE64 {
            if o.len() > base {
                o.push(b',');
            }
            o.extend_from_slice(b"\"sym_offset\":");
            push_hex_string(o, vaddr.wrapping_sub(start).wrapping_add(back));
        }
        if !tail.is_empty() {
            if o.len() > base {
                o.push(b',');
            }
            o.extend_from_slice(tail);
        }
        Some(Ok(()))
    }

    /// The answer of the record at blob offset `at` (`None` inside: no
    /// answer): the symbol's start and the text before and after
    /// `sym_offset`, if it passes the checks (UTF-8 JSON members as symres
    /// writes them, in their order, naming a function or a file);
    /// remembered once found good.
    fn record(&mut self, at: usize) -> Option<Option<Record<'_>>> {
        let blob = self.data.get(self.blob.clone())?;
        if at % 8 != 0 {
            return None;
        }
        let start = u64_at(blob, at + 8)?;
        let head_len = u32_at(blob, at + 16)?;
        if head_len == NONE32 {
            return Some(None);
        }
        let (head_len, tail_len) = (head_len as usize, u32_at(blob, at + 20)? as usize);
        let head_at = at + RECORD_HEAD;
        let head = blob.get(head_at..head_at.checked_add(head_len)?)?;
        let tail = blob.get(head_at + head_len..(head_at + head_len).checked_add(tail_len)?)?;
        if self.checked.is_empty() {
            self.checked = vec![0; blob.len().div_ceil(8 * 64)];
        }
        let (word, bit) = (at / 8 / 64, at / 8 % 64);
        let w = self.checked.get_mut(word)?;
        if *w & 1 << bit == 0 {
            let scan = &mut self.scan;
            let mut next = 0;
            let good = !(head.is_empty() && tail.is_empty())
                && scan.answer_members(head, &mut next)
                // `sym_offset` goes after `sym` and before the rest.
                && (start == NONE64 || next <= 1)
                && {
                    next = next.max(usize::from(start != NONE64));
                    scan.answer_members(tail, &mut next)
                };
            if !good {
                return None;
            }
            *w |= 1 << bit;
        }
        Some(Some((start, head, tail)))
    }

    /// The entries whose answer is known, in order, as start, end and
    /// the record (`None`: no answer) as the symbol's start and where the
    /// text before and after `sym_offset` is in the file; those of a
    /// damaged file that fail their check, or are out of order, are left
    /// out.
    fn known(&mut self) -> Vec<Known> {
        let mut out: Vec<Known> = Vec::new();
        let base = self.data.as_ptr() as usize;
        for i in 0..self.n {
            let Some((start, at)) = self.entry(i) else { break };
            let Some(end) = self.data.get(self.blob.clone()).and_then(|b| u64_at(b, at)) else {
                continue;
            };
            if end <= start || out.last().is_some_and(|&(_, e, _)| start < e) {
                continue;
            }
            let rec = match self.record(at) {
                None => continue,
                Some(None) => None,
                Some(Some((s, head, tail))) => {
                    let at = |t: &[u8]| {
                        let from = t.as_ptr() as usize - base;
                        from..from + t.len()
                    };
                    Some((s, at(head), at(tail)))
                }
            };
            out.push((start, end, rec));
        }
        out
    }
}

/// An entry of a file to write: its range of addresses, and its record
/// (`None`: no answer) as the symbol's start and the text before and after
/// `sym_offset`.
type Entry<'a> = (u64, u64, Option<Record<'a>>);

/// A record: the symbol's start (`NONE64` for none), the text before and
/// after `sym_offset`.
type Record<'a> = (u64, &'a [u8], &'a [u8]);

/// An entry of a file read (`CacheFile::known`): its record's texts as
/// ranges of the file.
type Known = (u64, u64, Option<(u64, Range<usize>, Range<usize>)>);

/// The answer `outcome` at `vaddr`, for a frame `back` bytes further, as
/// a record (`None` inside: no answer); `None` when it is not for a cache
/// (a failure that may not last: a missing file, say).
fn record_of(vaddr: u64, back: u64, outcome: &Outcome) -> Option<Option<Record<'_>>> {
    let r = match outcome {
        Ok(r) => r,
        Err(Reason::NoSymbols) => return Some(None),
        Err(_) => return None,
    };
    // The text the output has (rendered for it, copied, not rendered
    // again), cut around `sym_offset`, which goes right after `sym`,
    // before the rest (see `answer::write_answer`).
    let (text, head_len) = r.rendered();
    let text: &[u8] = text;
    let head = text.get(..*head_len)?;
    let Some(off) = r.sym_offset else { return Some(Some((NONE64, text, b""))) };
    let rest = &text[head.len()..];
    let rest = if head.is_empty() { rest } else { rest.strip_prefix(b",")? };
    let rest = rest.strip_prefix(b"\"sym_offset\":\"0x")?;
    let hex = memchr::memchr(b'"', rest)?;
    if std::str::from_utf8(&rest[..hex]).ok().and_then(|h| u64::from_str_radix(h, 16).ok())
        != Some(off)
    {
        return None;
    }
    let tail = &rest[hex + 1..];
    Some(Some((
        vaddr.wrapping_add(back).wrapping_sub(off),
        head,
        tail.strip_prefix(b",").unwrap_or(tail),
    )))
}

/// The entries of a file: `old`'s, and the `points` and `syms` (see
/// `Learned`; any order, repeats allowed) those do not cover, each an
/// entry of one address.
fn entries<'a>(
    old: Vec<Entry<'a>>,
    points: &'a mut [(u64, u64, Outcome)],
    syms: &'a [(u64, u64, std::sync::Arc<[u8]>)],
) -> Vec<Entry<'a>> {
    points.sort_unstable_by_key(|p| p.0);
    let known = |a: u64| {
        let i = old.partition_point(|s| s.0 <= a);
        i > 0 && a < old[i - 1].1
    };
    let mut fresh: Vec<Entry<'a>> = Vec::with_capacity(points.len());
    let points: &'a [(u64, u64, Outcome)] = points;
    for (i, (a, back, r)) in points.iter().enumerate() {
        // The answers are spread over the heap, each a cache miss or two
        // away (the answer, then its text): fetched ahead.
        if let Some((_, _, Ok(r))) = points.get(i + 16) {
            prefetch_ptr(std::sync::Arc::as_ptr(r).cast());
        }
        if let Some((_, _, Ok(r))) = points.get(i + 8) {
            if let Some((text, _)) = r.json.get() {
                prefetch_ptr(text.as_ptr());
            }
        }
        if *a == u64::MAX || fresh.last().is_some_and(|e| e.0 == *a) || known(*a) {
            continue;
        }
        if let Some(rec) = record_of(*a, *back, r) {
            fresh.push((*a, *a + 1, rec));
        }
    }
    if !syms.is_empty() {
        // Each the record `record_of` makes of the answer written (the
        // same text, the offset cut out).
        let sorted = fresh.len();
        fresh.extend(
            syms.iter()
                .filter(|(a, _, _)| *a != u64::MAX && !known(*a))
                .map(|(a, start, head)| (*a, *a + 1, Some((*start, &head[..], &b""[..])))),
        );
        if sorted > 0 {
            fresh.sort_by_key(|e| e.0);
        } else {
            fresh.sort_unstable_by_key(|e| e.0);
        }
        fresh.dedup_by_key(|e| e.0);
    }
    if old.is_empty() {
        return fresh;
    }
    // Two sorted runs, apart: a merge.
    let mut all = old;
    all.extend(fresh);
    all.sort_by_key(|e| e.0);
    all
}

/// A writer that keeps a CRC of what goes through it.
struct Crc<W> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// A record's size in the blob.
fn record_len(e: &Entry<'_>) -> usize {
    RECORD_HEAD + e.2.map_or(0, |(_, h, t)| (h.len() + t.len()).next_multiple_of(8))
}

/// Write the cache file of `entries` (sorted, apart) for the module with
/// `build_id`, made from the files `provenance` describes, to `w`, with a
/// CRC of zero; returns where the CRC goes and what it is. An error of
/// kind `InvalidData` when it would pass 4 GB (its offsets are 32-bit).
///
/// Layout (little-endian): `header`; the numbers of entries and blocks
/// (u32 each); where the fence, the blocks and the blob start and where
/// the blob ends (u64 each). The fence: each block's first start (u64).
/// The blocks (`BLOCK_BYTES` each): `BLOCK` entries, their starts (u64,
/// ascending; u64::MAX past the last entry), then where their records are
/// in the blob (u32; u32::MAX past the last entry), then zeros. The blob:
/// the records, each at a multiple of 8 (see `CacheFile::record`): the end
/// of the entry's range (u64, past it), the symbol's start (u64; u64::MAX
/// for none), the lengths of the text before and after `sym_offset` (u32
/// each; the first u32::MAX for no answer), those texts, zeros to a
/// multiple of 8.
fn write_file(
    w: impl Write,
    entries: &[Entry<'_>],
    build_id: &[u8],
    provenance: &[u8],
) -> std::io::Result<(usize, u32)> {
    let too_large = || std::io::Error::new(std::io::ErrorKind::InvalidData, "too large");
    let (head, crc_at) = header(build_id, provenance).ok_or_else(too_large)?;
    let mut w = w;
    w.write_all(&head)?;
    let mut w = Crc { w, crc: crc32fast::Hasher::new() };
    let n = entries.len();
    let n_blocks = n.div_ceil(BLOCK);
    let fence_at = head.len() + 8 + 4 * 8;
    let blocks_at = (fence_at + n_blocks * 8).next_multiple_of(BLOCK_BYTES);
    let blob_at = blocks_at + n_blocks * BLOCK_BYTES;
    let blob_len: usize = entries.iter().map(record_len).sum();
    if blob_at + blob_len > u32::MAX as usize {
        return Err(too_large());
    }
    let mut tables = Vec::with_capacity(blob_at - head.len());
    put32(&mut tables, n as u32);
    put32(&mut tables, n_blocks as u32);
    for at in [fence_at, blocks_at, blob_at, blob_at + blob_len] {
        tables.extend_from_slice(&(at as u64).to_le_bytes());
    }
    for block in entries.chunks(BLOCK) {
        tables.extend_from_slice(&block[0].0.to_le_bytes());
    }
    tables.resize(blocks_at - head.len(), 0);
    let mut rec_at = 0;
    for block in entries.chunks(BLOCK) {
        for e in block {
            tables.extend_from_slice(&e.0.to_le_bytes());
        }
        for _ in block.len()..BLOCK {
            tables.extend_from_slice(&NONE64.to_le_bytes());
        }
        for e in block {
            put32(&mut tables, rec_at as u32);
            rec_at += record_len(e);
        }
        for _ in block.len()..BLOCK {
            put32(&mut tables, NONE32);
        }
        tables.resize(tables.len() + BLOCK_BYTES - 12 * BLOCK, 0);
    }
    w.write_all(&tables)?;
    drop(tables);
    let pad = [0u8; 8];
    for e in entries {
        let mut fixed = [0u8; RECORD_HEAD];
        fixed[..8].copy_from_slice(&e.1.to_le_bytes());
        let (start, head, tail) = e.2.unwrap_or((0, b"", b""));
        fixed[8..16].copy_from_slice(&start.to_le_bytes());
        let head_len = if e.2.is_some() { head.len() as u32 } else { NONE32 };
        fixed[16..20].copy_from_slice(&head_len.to_le_bytes());
        fixed[20..].copy_from_slice(&(tail.len() as u32).to_le_bytes());
        w.write_all(&fixed)?;
        w.write_all(head)?;
        w.write_all(tail)?;
        w.write_all(&pad[..record_len(e) - RECORD_HEAD - head.len() - tail.len()])?;
    }
    w.flush()?;
    Ok((crc_at, w.crc.finalize()))
}

/// The size of the file `write_file` writes.
fn file_len(entries: &[Entry<'_>], build_id: &[u8], provenance: &[u8]) -> u64 {
    let head = header(build_id, provenance).map_or(0, |h| h.0.len());
    let n_blocks = entries.len().div_ceil(BLOCK);
    let blocks_at = (head + 8 + 4 * 8 + n_blocks * 8).next_multiple_of(BLOCK_BYTES);
    let blob_len: usize = entries.iter().map(record_len).sum();
    (blocks_at + n_blocks * BLOCK_BYTES + blob_len) as u64
}

/// The bytes `write_file` writes, with their CRC.
fn to_bytes(entries: &[Entry<'_>], build_id: &[u8], provenance: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (crc_at, crc) = write_file(&mut out, entries, build_id, provenance).ok()?;
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// `old`'s entries, read from it (see `CacheFile::known`).
fn old_entries<'a>(old: Option<&'a CacheFile>, known: &[Known]) -> Vec<Entry<'a>> {
    let Some(old) = old else { return Vec::new() };
    let d: &'a [u8] = &old.data;
    known
        .iter()
        .map(|(s, e, r)| {
            (*s, *e, r.as_ref().map(|(start, h, t)| (*start, &d[h.clone()], &d[t.clone()])))
        })
        .collect()
}

/// Write what the modules learned (one entry per build id, the threads'
/// answers together) into the cache directory `dir`, merged with what is
/// there, then keep the directory's cache files under `limit` bytes.
pub fn write(dir: &Path, limit: u64, learned: &mut [Learned]) {
    if learned.iter().all(Learned::is_empty) {
        // Nothing new; the bound holds all the same (it may be lower now).
        if let Ok(store) = StoreDir::open(dir) {
            evict(&store, limit);
        }
        return;
    }
    let store = match StoreDir::create(dir) {
        Ok(s) => s,
        Err(e) => {
            log::once(1, || format!("cache: {e}"));
            return;
        }
    };
    for l in learned {
        if l.is_empty() {
            continue;
        }
        let name = file_name(&l.build_id);
        // What is there now (another run's, maybe, since this one began).
        let mut there = load_quiet(&store, &l.build_id, &l.provenance);
        // A rewrite costs time in proportion to the file: not for a few
        // new answers to a large file (a run of a few lines would end
        // that much later).
        if let Some(c) = there.as_ref().filter(|c| {
            c.entries() > FEW_ENTRIES && l.len().saturating_mul(FEW_RATIO) < c.entries()
        }) {
            log::once(1, || {
                format!(
                    "cache: {name}: {} new answers, too few to rewrite its {} entries",
                    l.len(),
                    c.entries()
                )
            });
            continue;
        }
        let known = there.as_mut().map(CacheFile::known).unwrap_or_default();
        let old = old_entries(there.as_ref(), &known);
        let (n_old, n_new) = (old.len(), l.len());
        let entries = entries(old, &mut l.points, &l.syms);
        let size = file_len(&entries, &l.build_id, &l.provenance);
        if size > limit {
            log::once(1, || {
                format!("cache: {name}: {size} bytes, over the cache size; not written")
            });
            continue;
        }
        // Written as it is made (a copy of it in memory cost page faults
        // as much as the writing), the CRC last.
        let r = store.create_temp(&name).and_then(|tmp| {
            let w = std::io::BufWriter::with_capacity(1 << 17, &tmp.file);
            let (crc_at, crc) = write_file(w, &entries, &l.build_id, &l.provenance)?;
            tmp.file.write_all_at(&crc.to_le_bytes(), crc_at as u64)?;
            test_stop_before_rename();
            store.commit_unsynced(tmp, &name)
        });
        match r {
            Ok(path) => log::once(1, || {
                format!(
                    "cache: wrote {} ({n_old} entries known before, {n_new} answers made now)",
                    path.display(),
                )
            }),
            Err(e) => log::once(1, || format!("cache: {e}")),
        }
    }
    evict(&store, limit);
}

/// For a test of a writer killed mid-write: with
/// `LEAKD_SYMRES_TEST_STOP_BEFORE_RENAME` set, symres's background writer
/// (the process `symres-cache`, see symres's `background` module; never
/// symres itself, whose stop would hang the test) says so on stderr and
/// stops itself (SIGSTOP) once the temporary file is written, before it is
/// renamed into place, so that the test can kill it exactly there. Never
/// set in a real run.
fn test_stop_before_rename() {
    if std::env::var_os("LEAKD_SYMRES_TEST_STOP_BEFORE_RENAME").is_some()
        && std::fs::read("/proc/self/comm").is_ok_and(|c| c == b"symres-cache\n")
    {
        log::say(format_args!("cache: stopping before the rename (a test)"));
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// `load` without a word (the writer's look at what is there now).
fn load_quiet(store: &StoreDir, build_id: &[u8], provenance: &[u8]) -> Option<CacheFile> {
    let file = store.open_file(&file_name(build_id)).ok()??;
    CacheFile::parse(Bytes::of_file(file).ok()?, build_id, provenance).ok()
}

/// Remove the cache files used longest ago until those left take at most
/// `limit` bytes. Only our own files (the effective uid's) are counted and
/// removed: in a shared directory (`--index-dir /tmp`) others' files are
/// theirs to keep, even when we run as root.
fn evict(store: &StoreDir, limit: u64) {
    let Ok(mut files) = store.entries() else { return };
    files.retain(|f| f.is_ours());
    // What a run killed mid-write left (`.<name>.<random>`), once no run
    // can still be writing it.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for f in &files {
        let stale = now.saturating_sub(u64::try_from(f.modified.0).unwrap_or(0)) > STALE_SECS;
        if f.name.starts_with('.') && f.name.contains(&format!("{SUFFIX}.")) && stale {
            let _ = store.remove(&f.name);
        }
    }
    files.retain(|f| f.name.ends_with(SUFFIX) && !f.name.starts_with('.'));
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    if total <= limit {
        return;
    }
    files.sort_by_key(|f| f.modified);
    for f in files {
        if total <= limit {
            break;
        }
        if store.remove(&f.name).is_ok() {
            log::once(1, || format!("cache: evicted {} ({} bytes)", f.name, f.size));
            total -= f.size;
        }
    }
}

/// For the fuzz target: `data` as a cache file, whole, and after a good
/// header (with its CRC made to match); lookups and a merge must not panic
/// or read out of bounds, and every answer must be JSON object members.
pub fn fuzz(data: &[u8]) {
    let (id, prov) = ([0x5a], b"p".as_slice());
    let _ = CacheFile::parse(Bytes::heap(data.to_vec()), &id, prov);
    let Some((mut file, crc_at)) = header(&id, prov) else { return };
    file.extend_from_slice(data);
    let crc = crc32fast::hash(&file[crc_at + 4..]);
    file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    let Ok(mut c) = CacheFile::parse(Bytes::heap(file), &id, prov) else { return };
    let mut addrs: Vec<u64> = (0..c.entries().min(64))
        .filter_map(|i| c.entry(i))
        .flat_map(|(s, _)| [s, s.wrapping_sub(1), s.wrapping_add(1)])
        .collect();
    addrs.extend([0, 1, 0x1000, u64::MAX]);
    let mut out = Vec::new();
    for a in addrs {
        for back in [0, 1] {
            out.clear();
            match c.lookup(a, back, &mut out) {
                Some(Ok(())) => assert_json_members(&out),
                _ => assert!(out.is_empty(), "no answer, nothing written"),
            }
        }
    }
    let known = c.known();
    let old = old_entries(Some(&c), &known);
    let mut points = vec![(0x10, 0, Err(Reason::NoSymbols))];
    // Answers from symbols too, one at the same address as a point and
    // one at an entry of the file.
    let head: std::sync::Arc<[u8]> = b"\"sym\":\"s\"".as_slice().into();
    let at = c.entry(0).map_or(0x20, |e| e.0);
    let syms = [(0x10, 0x8, head.clone()), (0x18, 0x8, head.clone()), (at, 0, head)];
    let again =
        to_bytes(&entries(old, &mut points, &syms), &id, prov).expect("a merge writes a file");
    assert!(CacheFile::parse(Bytes::heap(again), &id, prov).is_ok(), "and it reads back");
}

/// `out`, an answer, must be JSON object members, on one line.
fn assert_json_members(out: &[u8]) {
    let line = format!("{{{}}}", std::str::from_utf8(out).expect("UTF-8"));
    assert!(!line.contains('\n'), "{line}");
    assert!(
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).is_ok(),
        "{line}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{Inlined, Resolution};
    use std::sync::Arc;

    /// An answer at `vaddr` in function `sym` starting at `start`, for a
    /// frame `back` bytes further (shifted, as the lookup makes it).
    fn res(sym: &str, start: u64, vaddr: u64, back: u64) -> Outcome {
        Ok(Arc::new(Resolution {
            sym: Some(sym.into()),
            sym_offset: Some(vaddr - start + back),
            file: Some("a \"b\".c".into()),
            line: Some(7),
            inlined: vec![
                Inlined { sym: Some("g".into()), file: None, line: Some(9) },
                Inlined { sym: None, file: Some("h.c".into()), line: None },
            ],
            json: Default::default(),
        }))
    }

    /// The text a cache gives at `a` (for a frame `back` further), `None`
    /// when it does not know.
    fn text(c: &mut CacheFile, a: u64, back: u64) -> Option<Result<String, Reason>> {
        let mut o = b"[before]".to_vec();
        let r = c.lookup(a, back, &mut o);
        let t = o.strip_prefix(b"[before]").expect("what was there is kept").to_vec();
        if !matches!(r, Some(Ok(()))) {
            assert!(t.is_empty(), "no answer, nothing written");
        }
        r.map(|r| r.map(|()| String::from_utf8(t).unwrap()))
    }

    /// The file of `old`'s entries and `points`, as `write` makes it.
    fn build(
        old: Option<&mut CacheFile>,
        mut points: Vec<(u64, u64, Outcome)>,
        id: &[u8],
        prov: &[u8],
    ) -> Option<Vec<u8>> {
        let (known, old) = match old {
            Some(c) => (c.known(), Some(&*c)),
            None => (Vec::new(), None),
        };
        let entries = entries(old_entries(old, &known), &mut points, &[]);
        to_bytes(&entries, id, prov)
    }

    fn parse(bytes: &[u8], id: &[u8], prov: &[u8]) -> Result<CacheFile, String> {
        CacheFile::parse(Bytes::heap(bytes.to_vec()), id, prov)
    }

    /// Answers come back as the lookup wrote them, byte for byte, for
    /// either kind of frame; what an older file knew stays; everything
    /// else is not known (looked up again).
    #[test]
    fn answers_come_back_byte_for_byte_and_merge() {
        let (id, prov) = ([1, 2], b"p".as_slice());
        let name_only = Ok(Arc::new(Resolution { sym: Some("n".into()), ..Default::default() }));
        let file_only = Ok(Arc::new(Resolution {
            sym_offset: Some(3),
            file: Some("f.c".into()),
            ..Default::default()
        }));
        let points = vec![
            (0x102, 1, res("f", 0x100, 0x102, 1)),
            (0x100, 0, res("f", 0x100, 0x100, 0)),
            (0x100, 1, res("f", 0x100, 0x100, 1)),
            (0x150, 0, name_only.clone()),
            (0x160, 0, file_only.clone()),
            (0x170, 0, Err(Reason::NoSymbols)),
            (0x180, 0, Err(Reason::FileMissing)),
            (u64::MAX, 0, Err(Reason::NoSymbols)),
        ];
        let bytes = build(None, points, &id, prov).unwrap();
        let mut c = parse(&bytes, &id, prov).unwrap();
        assert_eq!(c.entries(), 5);
        let want = |o: &Outcome| o.as_ref().unwrap().json_fields().to_string();
        for (a, back) in [(0x100, 0), (0x100, 1), (0x102, 0), (0x102, 1)] {
            assert_eq!(text(&mut c, a, back), Some(Ok(want(&res("f", 0x100, a, back)))), "{a:#x}");
        }
        assert_eq!(text(&mut c, 0x150, 1), Some(Ok(want(&name_only))));
        assert_eq!(text(&mut c, 0x160, 0), Some(Ok(want(&file_only))));
        assert_eq!(text(&mut c, 0x170, 0), Some(Err(Reason::NoSymbols)));
        for a in [0, 0xff, 0x101, 0x103, 0x180, u64::MAX] {
            assert_eq!(text(&mut c, a, 0), None, "{a:#x}");
        }
        // Merged with new points: one it knows (kept as it was), one new.
        assert_eq!(c.known().len(), 5);
        let again = build(
            Some(&mut c),
            vec![(0x100, 0, res("x", 0, 0x100, 0)), (0x90, 0, res("y", 0x80, 0x90, 0))],
            &id,
            prov,
        )
        .unwrap();
        let mut c = parse(&again, &id, prov).unwrap();
        assert_eq!(c.entries(), 6);
        assert_eq!(text(&mut c, 0x100, 0), Some(Ok(want(&res("f", 0x100, 0x100, 0)))));
        assert_eq!(text(&mut c, 0x90, 1), Some(Ok(want(&res("y", 0x80, 0x90, 1)))));
        // Another build's, from other files, another version: refused.
        assert!(parse(&again, &[1], prov).is_err_and(|e| e == "cache of another build"));
        assert!(parse(&again, &id, b"q").is_err_and(|e| e.starts_with("made from")));
        let mut old = again.clone();
        old[8] = 6;
        assert!(parse(&old, &id, prov).is_err_and(|e| e.starts_with("written by")));
        // Any byte changed, or any cut: refused.
        for at in (0..again.len()).step_by(5) {
            let mut bad = again.clone();
            bad[at] ^= 0x20;
            assert!(parse(&bad, &id, prov).is_err(), "byte {at}");
            assert!(parse(&again[..at], &id, prov).is_err(), "cut at {at}");
        }
    }

    /// More entries than a block holds: the fence leads to the right one.
    /// Answers from symbols alone, learned as written (the symbol's start
    /// and `sym` member), come back as the answers made for them would:
    /// beside points, at the same address as one (kept once), in any
    /// order, and merged with a file's entries (those kept as they were).
    #[test]
    fn answers_learned_from_symbols_come_back_as_made() {
        let (id, prov) = ([3], b"p".as_slice());
        let made = |sym: &str, start: u64, vaddr: u64, back: u64| -> Outcome {
            Ok(Arc::new(Resolution {
                sym: Some(sym.into()),
                sym_offset: Some(vaddr - start + back),
                ..Default::default()
            }))
        };
        let head = |sym: &str| -> Arc<[u8]> { crate::answer::SymText::new(sym).json };
        let mut points = vec![(0x210, 0, res("f", 0x200, 0x210, 0))];
        let syms = vec![
            (0x340, 0x300, head("g\"q")),
            (0x120, 0x100, head("h")),
            (0x120, 0x100, head("h")),
            (0x210, 0x200, head("not this")),
        ];
        let bytes = to_bytes(&entries(Vec::new(), &mut points, &syms), &id, prov).unwrap();
        let mut c = parse(&bytes, &id, prov).unwrap();
        assert_eq!(c.entries(), 3);
        let want = |o: &Outcome| o.as_ref().unwrap().json_fields().to_string();
        for back in [0, 1] {
            assert_eq!(
                text(&mut c, 0x340, back),
                Some(Ok(want(&made("g\"q", 0x300, 0x340, back))))
            );
            assert_eq!(text(&mut c, 0x120, back), Some(Ok(want(&made("h", 0x100, 0x120, back)))));
            assert_eq!(text(&mut c, 0x210, back), Some(Ok(want(&res("f", 0x200, 0x210, back)))));
        }
        // Merged: the file's entry at 0x120 stays as it was.
        let known = c.known();
        let old = old_entries(Some(&c), &known);
        let more = vec![(0x120, 0x100, head("other")), (0x50, 0x40, head("k"))];
        let again = to_bytes(&entries(old, &mut Vec::new(), &more), &id, prov).unwrap();
        let mut c = parse(&again, &id, prov).unwrap();
        assert_eq!(c.entries(), 4);
        assert_eq!(text(&mut c, 0x120, 0), Some(Ok(want(&made("h", 0x100, 0x120, 0)))));
        assert_eq!(text(&mut c, 0x50, 1), Some(Ok(want(&made("k", 0x40, 0x50, 1)))));
    }

    #[test]
    fn many_blocks() {
        let (id, prov) = ([3], b"p".as_slice());
        let points: Vec<_> = (0..1000u64)
            .map(|i| (0x1000 + 3 * i, 0, res(&format!("f{i}"), 0x1000, 0x1000 + 3 * i, 0)))
            .collect();
        let bytes = build(None, points, &id, prov).unwrap();
        let mut c = parse(&bytes, &id, prov).unwrap();
        assert_eq!(c.entries(), 1000);
        for a in 0xff0..0x1000 + 3 * 1001 {
            // What `prefetch` leaves (hints, by a hash of the address:
            // others' too, a slot holds the last) changes no answer.
            if a % 7 == 0 {
                for b in [a, a + 1, a + 3, a + 300] {
                    c.prefetch(b, 0);
                    c.prefetch(b, 1);
                }
            }
            let got = text(&mut c, a, 0);
            let i = a.wrapping_sub(0x1000) / 3;
            if a >= 0x1000 && (a - 0x1000) % 3 == 0 && i < 1000 {
                let r = res(&format!("f{i}"), 0x1000, a, 0);
                assert_eq!(got, Some(Ok(r.unwrap().json_fields().to_string())), "{a:#x}");
            } else {
                assert_eq!(got, None, "{a:#x}");
            }
        }
    }

    /// A record that is not what symres writes, behind a good CRC, gives
    /// no answer (the address is looked up), never a broken line.
    #[test]
    fn records_not_as_symres_writes_them_give_no_answer() {
        let (id, prov) = ([5], b"p".as_slice());
        let bytes = build(None, vec![(0x100, 0, res("f", 0x100, 0x100, 0))], &id, prov).unwrap();
        let c = parse(&bytes, &id, prov).unwrap();
        let rec = c.blob.start;
        let head = rec + RECORD_HEAD;
        let fix = |mut b: Vec<u8>| {
            let (_, crc_at) = header(&id, prov).unwrap();
            let crc = crc32fast::hash(&b[crc_at + 4..]);
            b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let lookup = |b: Vec<u8>| text(&mut parse(&fix(b), &id, prov).unwrap(), 0x100, 0);
        assert!(matches!(lookup(bytes.clone()), Some(Ok(_))));
        type Damage<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
        let cases: [(&str, Damage); 7] = [
            ("a quote gone", Box::new(|b| b[head] = b'x')),
            ("a newline in a string", Box::new(|b| b[head + 8] = b'\n')),
            ("a length past the blob", Box::new(|b| b[rec + 20..rec + 24].fill(0xff))),
            ("no text", Box::new(|b| b[rec + 16..rec + 24].fill(0))),
            ("a range that ends before", Box::new(|b| b[rec..rec + 8].fill(0))),
            (
                "a record word off its alignment",
                Box::new(|b| {
                    let w = c.blocks_at + 8 * BLOCK;
                    b[w] = 4;
                }),
            ),
            // "file" before "sym_offset": out of order.
            (
                "file in the head",
                Box::new(|b| {
                    let t = memchr::memmem::find(&b[head..], b"\"file\"").unwrap();
                    b[head + 1..head + 5].copy_from_slice(b"file");
                    b[head + t + 1..head + t + 5].copy_from_slice(b"sym\"");
                }),
            ),
        ];
        for (what, damage) in cases {
            let mut bad = bytes.clone();
            damage(&mut bad);
            assert_eq!(lookup(bad), None, "{what}");
        }
    }

    /// A large file is not rewritten for a few new answers (a run of a few
    /// lines would end later by the whole file's rewrite), but is for more.
    #[test]
    fn few_new_answers_leave_a_large_file_as_it_is() {
        let dir = std::env::temp_dir().join(format!("symres-cache-few-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (id, prov) = (vec![7u8; 20], b"p".to_vec());
        let learned = |addrs: std::ops::Range<u64>| Learned {
            build_id: id.clone(),
            provenance: prov.clone(),
            points: addrs
                .map(|a| (0x1000 + 2 * a, 0, res("f", 0x1000, 0x1000 + 2 * a, 0)))
                .collect(),
            syms: Vec::new(),
        };
        let n = FEW_ENTRIES as u64 * 2;
        write(&dir, DEFAULT_SIZE, &mut [learned(0..n)]);
        let file = dir.join(file_name(&id));
        let before = std::fs::read(&file).unwrap();
        let entries = parse(&before, &id, &prov).unwrap().entries();
        assert_eq!(entries, n as usize);
        let few = (entries / FEW_RATIO - 1) as u64;
        write(&dir, DEFAULT_SIZE, &mut [learned(n..n + few)]);
        assert!(std::fs::read(&file).unwrap() == before, "rewritten for {few} answers");
        let enough = few + 2;
        write(&dir, DEFAULT_SIZE, &mut [learned(n..n + enough)]);
        let after = parse(&std::fs::read(&file).unwrap(), &id, &prov).unwrap();
        assert_eq!(after.entries(), entries + enough as usize);
        assert!(after.knows(0x1000 + 2 * (n + enough - 1)));
        assert!(after.knows(0x1000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Random damage behind a good CRC (what the fuzz target reaches):
    /// refused, or lookups in bounds whose answers are JSON members, and a
    /// merge that writes a file that reads back.
    #[test]
    fn damage_behind_a_good_crc_never_breaks_a_line() {
        let points = (0..40u64)
            .map(|a| {
                let v = 0x100 + 3 * a;
                (
                    v,
                    a % 2,
                    if a % 5 == 0 { Err(Reason::NoSymbols) } else { res("f", 0x100, v, a % 2) },
                )
            })
            .collect();
        let good = build(None, points, &[0x5a], b"p").unwrap();
        let head = header(&[0x5a], b"p").unwrap().0.len();
        let body = &good[head..];
        fuzz(body);
        let mut next = crate::testing::rng(0xcac4_e5ee_d000_0001);
        for _ in 0..3000 {
            let mut bad = body.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] = next() as u8;
            }
            let cut =
                if next() % 8 == 0 { (next() % bad.len() as u64) as usize } else { bad.len() };
            fuzz(&bad[..cut]);
        }
        fuzz(&good);
        fuzz(b"");
    }

    /// Issue 18/21 review: in a shared sticky directory (`--index-dir
    /// /tmp`), eviction removes only the effective uid's files, even as
    /// root: another user's cache file and stale temporary file stay,
    /// ours go (the size bound is ours to keep, not theirs).
    #[test]
    fn eviction_removes_only_our_own_files() {
        use std::os::unix::fs::{chown, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "needs root (to own files as others)");
            eprintln!("eviction_removes_only_our_own_files: skipped, not root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("symres-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(STALE_SECS + 60);
        let names = ["aa.answers", ".bb.answers.0123456789abcdef", "cc.answers", ".dd.answers.1"];
        for (i, n) in names.iter().enumerate() {
            let f = std::fs::File::create(dir.join(n)).unwrap();
            f.set_len(1000).unwrap();
            f.set_modified(old).unwrap();
            if i < 2 {
                chown(dir.join(n), Some(65533), Some(65533)).unwrap();
            }
        }
        let store = StoreDir::open(&dir).unwrap();
        evict(&store, 0);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".bb.answers.0123456789abcdef", "aa.answers"]);
        // And `remove` itself refuses another's file.
        assert!(store.remove("aa.answers").is_err());
        assert!(dir.join("aa.answers").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
