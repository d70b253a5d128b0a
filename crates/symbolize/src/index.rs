//! Prebuilt answers for a module: a large debug build answered at the speed
//! of a binary search from its first address on.
//!
//! Answering an address of a large binary costs the first parse of its
//! DWARF unit (line program, functions). Caching answers does not help a
//! stream of new addresses spread over a big debug build: nearly every
//! address is new, and such a stream runs at about 100k addresses/s
//! (llvm-symbolizer and addr2line are slower still). `symres --build-index
//! FILE` pays that cost once per build: it cuts the module's addresses
//! where any answer can change (symbol starts and ends, line-table rows,
//! function and inlined-call ranges, DWARF unit ranges), resolves the start
//! of every piece with the lookup symres uses without an index, and writes
//! the pieces with their answers, sorted. Later runs find the index by
//! build id and binary-search it. Answers are the lookup's by construction;
//! a test compares the two at every piece and at random addresses.
//!
//! An index is input like any other file: a truncated or corrupt one is
//! ignored (said under -v), and never read past its bounds.

use std::path::PathBuf;

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::answer::{members, write_answer, Reason, Resolution};
use crate::elf::Bytes;
use crate::frame_scan::Scan;
use crate::store::StoreDir;
use crate::tables::{self, u32_at, u64_at, Layout};

const MAGIC: &[u8; 8] = b"SYMRESIX";
/// The format's version. An index also records the symres that wrote it:
/// answers (demangling, say) may change between versions, so another
/// version's index is ignored rather than trusted. The version is raised
/// too when the answers change within one (4: no DWARF answers outside
/// executable segments; 5: file and line in an index built from a debug
/// file; 6: pieces whose answer is not known, for caches of answers).
const VERSION: u32 = 6;
const WRITER: &str = concat!("symres ", env!("CARGO_PKG_VERSION"));
/// "None" for answers.
const NONE32: u32 = u32::MAX;
/// "None" for symbol starts.
const NONE64: u64 = u64::MAX;

/// The index file name for a build id.
pub fn file_name(build_id: &[u8]) -> String {
    format!("{}.index", leakd_common::text::hex_bytes(build_id))
}

/// Where indexes are kept when no --index-dir is given:
/// $XDG_CACHE_HOME/leakd/symres, else ~/.cache/leakd/symres.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("leakd").join("symres"))
}

/// One answer as stored: `sym_offset` is computed from the symbol's start
/// at lookup; the rest is the answer as symres writes it into a frame, in
/// parts: `"sym":...`, `"file":...` and `"line":...` (each rendered alone,
/// so any may be empty; `sym_offset` goes after the first), and the
/// elements of `"inlined"` without their braces. All but the line are
/// shared by many answers. Kept rendered, so that the answers of a cache
/// file read back are written again as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `NONE64` for none.
    sym_start: u64,
    parts: [Arc<[u8]>; 3],
    inlined: Vec<Arc<[u8]>>,
}

/// Parts rendered so far, by what they were rendered from: answers share
/// their names and files (interned, so the same `Arc`), and a cache of
/// answers renders each once, not once per address.
#[derive(Default)]
pub struct Renderer {
    syms: FxHashMap<usize, Arc<[u8]>>,
    files: FxHashMap<usize, Arc<[u8]>>,
    lines: FxHashMap<Option<u32>, Arc<[u8]>>,
    inlined: FxHashMap<(usize, usize, Option<u32>), Arc<[u8]>>,
    /// The `Arc`s keyed by address are kept alive here (an address is
    /// not reused while its key is in a map).
    keep: Vec<Arc<str>>,
}

/// The address an optional shared string is at (0 for none).
fn addr_of(s: &Option<Arc<str>>) -> usize {
    s.as_ref().map_or(0, |s| s.as_ptr() as usize)
}

impl Renderer {
    fn keep(&mut self, s: &Option<Arc<str>>) {
        if let Some(s) = s {
            self.keep.push(s.clone());
        }
    }

    /// The answer `r` of a frame at `frame_addr` (whose `sym_offset` is
    /// counted from there).
    pub fn stored(&mut self, frame_addr: u64, r: &Resolution) -> Stored {
        let sym = match self.syms.get(&addr_of(&r.sym)) {
            Some(p) => p.clone(),
            None => {
                let p: Arc<[u8]> = members(r.sym.as_deref(), None, None).into();
                self.keep(&r.sym);
                self.syms.insert(addr_of(&r.sym), p.clone());
                p
            }
        };
        let file = match self.files.get(&addr_of(&r.file)) {
            Some(p) => p.clone(),
            None => {
                let p: Arc<[u8]> = members(None, r.file.as_deref(), None).into();
                self.keep(&r.file);
                self.files.insert(addr_of(&r.file), p.clone());
                p
            }
        };
        let line =
            self.lines.entry(r.line).or_insert_with(|| members(None, None, r.line).into()).clone();
        let mut inlined = Vec::with_capacity(r.inlined.len());
        for f in &r.inlined {
            let key = (addr_of(&f.sym), addr_of(&f.file), f.line);
            let p = match self.inlined.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p: Arc<[u8]> = members(f.sym.as_deref(), f.file.as_deref(), f.line).into();
                    self.keep(&f.sym);
                    self.keep(&f.file);
                    self.inlined.insert(key, p.clone());
                    p
                }
            };
            inlined.push(p);
        }
        Stored {
            sym_start: r.sym_offset.map_or(NONE64, |o| frame_addr.wrapping_sub(o)),
            parts: [sym, file, line],
            inlined,
        }
    }
}

impl Stored {
    /// `Renderer::stored` without sharing.
    pub fn of(frame_addr: u64, r: &Resolution) -> Stored {
        Renderer::default().stored(frame_addr, r)
    }
}

/// What a piece of a module answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Known(Stored),
    /// No answer (no symbol, no DWARF there).
    Nothing,
}

/// Where pieces may start: `addrs` and 0, sorted, without repeats.
fn cuts(mut addrs: Vec<u64>) -> Vec<u64> {
    addrs.push(0);
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// A module's pieces and their answers, as built (`to_bytes` writes them).
#[derive(Default)]
pub struct Built {
    starts: Vec<u64>,
    /// Where each piece's answer is in `stored`, or NONE32 (no answer).
    answers: Vec<u32>,
    stored: Vec<Stored>,
}

impl Built {
    pub fn pieces(&self) -> usize {
        self.starts.len()
    }

    /// Pieces from `addrs` (every address where an answer may change; any
    /// order, repeats allowed), looked up by threads, one per answerer
    /// (each with a resolver of its own), each over a range of the
    /// addresses. The pieces do not depend on the number of threads.
    pub fn new_threaded<F>(addrs: Vec<u64>, answerers: Vec<F>) -> Built
    where
        F: FnMut(u64) -> Result<Resolution, Reason> + Send,
    {
        let addrs = cuts(addrs);
        let size = addrs.len().div_ceil(answerers.len().max(1)).max(1);
        let parts: Vec<Built> = std::thread::scope(|scope| {
            let threads: Vec<_> = addrs
                .chunks(size)
                .zip(answerers)
                .map(|(c, f)| scope.spawn(move || Built::of_cuts(c, f)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut ix = Built::default();
        for p in parts {
            for (i, &a) in p.starts.iter().enumerate() {
                ix.push(a, p.piece(i));
            }
        }
        ix
    }

    /// Pieces from sorted, distinct addresses.
    fn of_cuts(addrs: &[u64], mut answer: impl FnMut(u64) -> Result<Resolution, Reason>) -> Built {
        let mut ix = Built::default();
        for &a in addrs {
            ix.push(a, answer(a).map_or(Piece::Nothing, |r| Piece::Known(Stored::of(a, &r))));
        }
        ix
    }

    /// Piece `i`'s answer.
    fn piece(&self, i: usize) -> Piece {
        match self.answers[i] {
            NONE32 => Piece::Nothing,
            k => Piece::Known(self.stored[k as usize].clone()),
        }
    }

    /// A piece starting at `a` (after every piece so far), unless the
    /// answer is the one before.
    pub fn push(&mut self, a: u64, s: Piece) {
        if let Some(&last) = self.answers.last() {
            let same = match (&s, last) {
                (Piece::Nothing, NONE32) => true,
                (Piece::Known(s), k) if k != NONE32 => self.stored[k as usize] == *s,
                _ => false,
            };
            if same {
                return;
            }
        }
        self.starts.push(a);
        self.answers.push(match s {
            Piece::Nothing => NONE32,
            Piece::Known(s) => {
                self.stored.push(s);
                (self.stored.len() - 1) as u32
            }
        });
    }

    /// The file's bytes, for the module with `build_id`.
    ///
    /// Layout (little-endian): magic, version (u32), the writer (u32
    /// length, bytes), build id (u32 length, bytes); the numbers of pieces
    /// and blocks (u32 each); where the fence, the blocks and the blob
    /// start and where the blob ends (u64 each). The fence: each block's
    /// first start (u64). The blocks: BLOCK pieces each, their starts (u64,
    /// ascending; u64::MAX past the last piece) then where their answers
    /// are in the blob (u32; u32::MAX for none). The blob: the shared parts
    /// of answers (`"sym":...`, `"file":...`, the members of an inlined
    /// call), each written once, at a multiple of 8, as its length and
    /// kind (u32: the length below bit 30, the `Kind` above) and its bytes; then the answers, each at a multiple of 8: the
    /// symbol's start (u64; u64::MAX for none), where its `"sym"` and
    /// `"file"` parts are (u32 each), the length of its `"line"` part and
    /// the number of inlined calls (u32 each), where each inlined call is
    /// (u32), the `"line"` part.
    /// `None` when the index would pass 4 GB (its offsets are 32-bit).
    pub fn to_bytes(&self, build_id: &[u8]) -> Option<Vec<u8>> {
        self.bytes_after(header(build_id))
    }

    /// The file: `head` (up to the counts), then the tables and the blob.
    fn bytes_after(&self, head: Vec<u8>) -> Option<Vec<u8>> {
        let mut blob = Vec::new();
        let mut shared: FxHashMap<(Kind, &[u8]), u32> = FxHashMap::default();
        let mut records = Vec::with_capacity(self.stored.len());
        let rendered: Vec<_> = self.stored.iter().map(|s| (&s.parts, &s.inlined)).collect();
        let parts = rendered.iter().flat_map(|&([sym, file, _], inlined)| {
            [(Kind::Sym, sym), (Kind::File, file)]
                .into_iter()
                .chain(inlined.iter().map(|p| (Kind::Inlined, p)))
        });
        // Parts are mostly shared `Arc`s: found by address before content.
        let mut by_addr: FxHashMap<(Kind, usize), u32> = FxHashMap::default();
        for (kind, arc) in parts {
            let addr = (kind, arc.as_ptr() as usize);
            if by_addr.contains_key(&addr) {
                continue;
            }
            let part: &[u8] = arc;
            if let Some(&at) = shared.get(&(kind, part)) {
                by_addr.insert(addr, at);
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = shared.entry((kind, part)) {
                blob.resize(blob.len().next_multiple_of(8), 0);
                e.insert(u32::try_from(blob.len()).ok()?);
                put32(
                    &mut blob,
                    u32::try_from(part.len()).ok().filter(|&n| n <= PART_LEN)?
                        | (kind as u32) << 30,
                );
                blob.extend_from_slice(part);
                by_addr.insert(addr, (blob.len() - part.len() - 4) as u32);
            }
        }
        for (s, &([sym, file, line], inlined)) in self.stored.iter().zip(&rendered) {
            blob.resize(blob.len().next_multiple_of(8), 0);
            records.push(u32::try_from(blob.len()).ok()?);
            blob.extend_from_slice(&s.sym_start.to_le_bytes());
            let at = |kind: Kind, p: &Arc<[u8]>| by_addr[&(kind, p.as_ptr() as usize)];
            put32(&mut blob, at(Kind::Sym, sym));
            put32(&mut blob, at(Kind::File, file));
            put32(&mut blob, line.len() as u32);
            put32(&mut blob, inlined.len() as u32);
            for part in inlined.iter() {
                put32(&mut blob, at(Kind::Inlined, part));
            }
            blob.extend_from_slice(line);
        }
        let n_blocks = self.starts.len().div_ceil(BLOCK);
        let mut out = head;
        put32(&mut out, self.starts.len() as u32);
        put32(&mut out, n_blocks as u32);
        let fence_at = out.len() + 4 * 8;
        let blocks_at = fence_at + n_blocks * 8;
        let blob_at = blocks_at + n_blocks * BLOCK_BYTES;
        for at in [fence_at, blocks_at, blob_at, blob_at + blob.len()] {
            out.extend_from_slice(&(at as u64).to_le_bytes());
        }
        for b in 0..n_blocks {
            out.extend_from_slice(&self.starts[b * BLOCK].to_le_bytes());
        }
        for b in 0..n_blocks {
            let pieces = b * BLOCK..(b * BLOCK + BLOCK).min(self.starts.len());
            for i in pieces.clone() {
                out.extend_from_slice(&self.starts[i].to_le_bytes());
            }
            for _ in pieces.len()..BLOCK {
                out.extend_from_slice(&NONE64.to_le_bytes());
            }
            for i in pieces.clone() {
                put32(
                    &mut out,
                    match self.answers[i] {
                        NONE32 => NONE32,
                        a => records[a as usize],
                    },
                );
            }
            for _ in pieces.len()..BLOCK {
                put32(&mut out, NONE32);
            }
        }
        out.extend_from_slice(&blob);
        (out.len() <= u32::MAX as usize).then_some(out)
    }
}

/// An index's first bytes, up to its counts: magic, version, writer,
/// build id.
fn header(build_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    put32(&mut out, VERSION);
    put32(&mut out, WRITER.len() as u32);
    out.extend_from_slice(WRITER.as_bytes());
    put32(&mut out, build_id.len() as u32);
    out.extend_from_slice(build_id);
    out
}

/// For the fuzz target: `data` as an index after its header (from its
/// counts on), looked up at its own pieces' starts and a few other
/// addresses. A lookup must stay in bounds, and what it gives must be JSON
/// object members without a line break.
pub fn fuzz(data: &[u8]) {
    let id = [0x5a];
    let mut file = header(&id);
    file.extend_from_slice(data);
    let Ok(mut ix) = Index::parse(Bytes::heap(file), &id) else { return };
    let d: Vec<u8> = ix.data.to_vec();
    let starts = (0..ix.n_blocks.min(8)).flat_map(|b| (0..BLOCK).map(move |i| (b, i)));
    let mut addrs: Vec<u64> =
        starts.filter_map(|(b, i)| u64_at(&d, ix.blocks_at + b * BLOCK_BYTES + 8 * i)).collect();
    addrs.extend([0, 1, 0x1000, u64::MAX]);
    let mut out = Vec::new();
    for a in addrs {
        for (a, back) in [(a, 0), (a.wrapping_add(1), 1)] {
            out.clear();
            if ix.answer(a, back, &mut out).is_ok() {
                assert_json_members(&out);
            } else {
                assert!(out.is_empty());
            }
        }
    }
}

/// For the fuzz target: `out`, an answer, must be JSON object members, on
/// one line.
fn assert_json_members(out: &[u8]) {
    let line = format!("{{{}}}", std::str::from_utf8(out).expect("UTF-8"));
    assert!(!line.contains('\n'), "{line}");
    assert!(
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).is_ok(),
        "{line}"
    );
}

/// What a shared part of answers is, written with it: an index's parts
/// are checked once each, for the keys of their kind, and must be of the
/// kind their answer expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Sym = 0,
    File = 1,
    Inlined = 2,
}

impl Kind {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Sym => &["sym"],
            Kind::File => &["file"],
            Kind::Inlined => &["sym", "file", "line"],
        }
    }
}

/// A part's length is below bit 30 of its length word.
const PART_LEN: u32 = (1 << 30) - 1;

/// Inlined calls read per answer at most (a lookup reports fewer).
const MAX_INLINED: usize = 256;

/// Pieces per block (see `Index`).
const BLOCK: usize = 16;
/// A block's size: the starts, then the answers.
const BLOCK_BYTES: usize = BLOCK * 12;

/// An index file, read in place: loading costs a check of its header and
/// table bounds, so a large index does not slow a short run down. A lookup
/// reads the fence (small, soon in cache), one block, and one answer, whose
/// text is ready to copy: each cache miss was a good part of an address's
/// cost.
pub struct Index {
    data: Bytes,
    /// Where the fence and the blocks start in `data` (checked to fit).
    fence_at: usize,
    blocks_at: usize,
    n_blocks: usize,
    n_pieces: usize,
    /// The blob's range in `data`.
    blob: std::ops::Range<usize>,
    /// Answers whose "line" part, and shared parts (for the keys of their
    /// kind), found to be UTF-8 JSON object members as symres writes them,
    /// a bit per 8 bytes of blob: answers and parts are 8-aligned, and a
    /// part's length and kind are written with it, so one bit stands for
    /// one text. The text is copied into frames, and a damaged index must
    /// not break a line. Checked on first use, not at load, which would
    /// read the whole file.
    checked_answers: Vec<u64>,
    checked_parts: Vec<u64>,
    scan: Scan,
}

/// Check the header of an index file for the module with `build_id`;
/// where its counts start.
fn header_end(d: &[u8], build_id: &[u8]) -> Result<usize, String> {
    if d.get(..8) != Some(MAGIC.as_slice()) {
        return Err("not a symres index".into());
    }
    let version = u32_at(d, 8).ok_or("truncated")?;
    if version != VERSION {
        return Err(format!("format version {version}, this symres reads {VERSION}"));
    }
    let writer_len = u32_at(d, 12).ok_or("truncated")? as usize;
    let writer = d.get(16..16usize.saturating_add(writer_len)).ok_or("truncated")?;
    if writer != WRITER.as_bytes() {
        return Err(match std::str::from_utf8(writer) {
            Ok(w) if w.len() <= 64 && w.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                format!("written by {w}, not {WRITER}")
            }
            _ => format!("not written by {WRITER}"),
        });
    }
    let at_id = 16 + writer_len;
    let id_len = u32_at(d, at_id).ok_or("truncated")? as usize;
    if d.get(at_id + 4..(at_id + 4).saturating_add(id_len)) != Some(build_id) {
        return Err("index of another build".into());
    }
    Ok(at_id + 4 + build_id.len())
}

impl Index {
    /// Check the header of an index file for the module with `build_id`,
    /// and that its tables fit in it. Answers are checked when read: a
    /// corrupt index gives wrong answers or none, never a read out of
    /// bounds or a line that is not JSON.
    pub fn parse(data: Bytes, build_id: &[u8]) -> Result<Index, String> {
        let h = header_end(&data, build_id)?;
        Index::tables(data, h)
    }

    /// The index whose counts start at `h`, its tables checked to fit.
    fn tables(data: Bytes, h: usize) -> Result<Index, String> {
        let d: &[u8] = &data;
        let Layout { n: n_pieces, n_blocks, fence_at, blocks_at, blob } =
            tables::layout(d, h, BLOCK, BLOCK_BYTES)?;
        Ok(Index {
            fence_at,
            blocks_at,
            n_blocks,
            n_pieces,
            blob,
            checked_answers: Vec::new(),
            checked_parts: Vec::new(),
            scan: Scan::default(),
            data,
        })
    }

    pub fn pieces(&self) -> usize {
        self.n_pieces
    }

    /// Where the answer of the piece holding `vaddr` is in the blob.
    fn record(&self, vaddr: u64) -> Option<usize> {
        // Answers are 8-aligned (what `checked` relies on).
        self.word(vaddr).filter(|&r| r != NONE32 && r % 8 == 0).map(|r| r as usize)
    }

    /// The answer word of the piece holding `vaddr`: where its answer is
    /// in the blob or NONE32 (or anything, in a damaged file).
    fn word(&self, vaddr: u64) -> Option<u32> {
        let d: &[u8] = &self.data;
        // The last block whose first piece starts at or before `vaddr`.
        let b = tables::block_of(d, self.fence_at, 0..self.n_blocks, vaddr)?;
        let block = self.blocks_at + BLOCK_BYTES * b;
        let starts = d.get(block..block + BLOCK_BYTES)?;
        // The last piece of the block that starts at or before `vaddr` (of
        // those there are: the padding after the last starts at u64::MAX).
        let n = self.n_pieces.saturating_sub(b * BLOCK).min(BLOCK);
        let i = (0..n).take_while(|&i| u64_at(starts, 8 * i).is_some_and(|s| s <= vaddr)).last()?;
        u32_at(starts, 8 * BLOCK + 4 * i)
    }

    /// The answer at `vaddr` as JSON object members, ready for a frame,
    /// with `sym_offset` moved by `back` (see `Resolution::shifted`): the
    /// same text as the lookup without an index gives.
    /// Appended to `o`, which is left as it was when there is none.
    pub fn answer(&mut self, vaddr: u64, back: u64, o: &mut Vec<u8>) -> Result<(), Reason> {
        let at = self.record(vaddr).ok_or(Reason::NoSymbols)?;
        self.answer_at(at, vaddr, back, o)
    }

    /// `answer` of the record at `at` of the blob (8-aligned).
    fn answer_at(
        &mut self,
        at: usize,
        vaddr: u64,
        back: u64,
        o: &mut Vec<u8>,
    ) -> Result<(), Reason> {
        if self.checked_answers.is_empty() {
            let words = self.blob.len().div_ceil(8 * 64);
            self.checked_answers = vec![0; words];
            self.checked_parts = vec![0; words];
        }
        let Index { data, blob, checked_answers, checked_parts, scan, .. } = self;
        let blob = data.get(blob.clone()).unwrap_or_default();
        let field = |i: usize| u32_at(blob, at + 8 + 4 * i).map(|n| n as usize);
        // At most what the rest of the blob holds, and no more than a
        // lookup reports (a corrupt count must not make a huge frame).
        let n = field(3).unwrap_or(0).min(blob.len().saturating_sub(at + 24) / 4).min(MAX_INLINED);
        let line_at = at + 24 + 4 * n;
        let text =
            |from: usize, len: usize| from.checked_add(len).and_then(|end| blob.get(from..end));
        let (Some(start), Some(line)) =
            (u64_at(blob, at), text(line_at, field(2).unwrap_or(usize::MAX)))
        else {
            return Err(Reason::NoSymbols);
        };
        if !checked(checked_answers, at, || fields(scan, line, &["line"])) {
            return Err(Reason::NoSymbols);
        }
        // Field `i` of the answer: a part of `kind`.
        let mut part = |i: usize, kind: Kind| -> Option<&[u8]> {
            let at = field(i).filter(|at| at % 8 == 0)?;
            let word = u32_at(blob, at)?;
            if word >> 30 != kind as u32 {
                return None;
            }
            let t = text(at + 4, (word & PART_LEN) as usize)?;
            checked(checked_parts, at, || fields(scan, t, kind.keys())).then_some(t)
        };
        let (Some(sym), Some(file)) = (part(0, Kind::Sym), part(1, Kind::File)) else {
            return Err(Reason::NoSymbols);
        };
        // As without an index: an answer names a function or a file.
        if sym.is_empty() && file.is_empty() {
            return Err(Reason::NoSymbols);
        }
        let sym_offset = (start != NONE64).then(|| vaddr.wrapping_sub(start).wrapping_add(back));
        let inlined = (0..n).map(|i| part(4 + i, Kind::Inlined));
        if !write_answer(o, sym, sym_offset, file, line, inlined) {
            return Err(Reason::NoSymbols);
        }
        Ok(())
    }

    /// The index of `build_id` in `dir`, if there is a usable one.
    pub fn load(dir: &StoreDir, build_id: &[u8]) -> Result<Option<Index>, String> {
        let name = file_name(build_id);
        let path = || dir.path().join(&name);
        let data = match dir.open_file(&name) {
            Ok(Some(f)) => Bytes::of_file(f).map_err(|e| format!("{}: {e}", path().display()))?,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        Index::parse(data, build_id)
            .map(Some)
            .map_err(|e| format!("{}: {e}, ignored", path().display()))
    }
}

/// Whether the text at blob offset `at` has been found good, else
/// whether `check` finds it so (remembered, a bit per 8 bytes).
fn checked(bits: &mut [u64], at: usize, check: impl FnOnce() -> bool) -> bool {
    let (word, bit) = (at / 8 / 64, at / 8 % 64);
    let Some(w) = bits.get_mut(word) else { return false };
    if *w & 1 << bit != 0 {
        return true;
    }
    let good = check();
    if good {
        *w |= 1 << bit;
    }
    good
}

/// Whether `text` is UTF-8 and object members with `keys` as symres
/// writes them (see `Scan::fields`): a part of a frame, that cannot break
/// the line it is copied into.
fn fields(scan: &mut Scan, text: &[u8], keys: &[&str]) -> bool {
    std::str::from_utf8(text).is_ok_and(|t| scan.fields(t, keys))
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Inlined;

    impl Index {
        /// `answer` as a string of its own.
        fn text(&mut self, a: u64, back: u64) -> Result<String, Reason> {
            let mut o = b"[before]".to_vec();
            let r = self.answer(a, back, &mut o);
            let t = o.strip_prefix(b"[before]").expect("what was there is kept");
            match r {
                Ok(()) => Ok(String::from_utf8(t.to_vec()).unwrap()),
                Err(e) => {
                    assert!(t.is_empty(), "no answer, nothing written");
                    Err(e)
                }
            }
        }
    }

    fn res(sym: &str, off: u64, line: u32) -> Resolution {
        Resolution {
            sym: Some(sym.into()),
            sym_offset: Some(off),
            file: Some("a.c".into()),
            line: Some(line),
            inlined: vec![Inlined { sym: Some("g".into()), file: None, line: Some(9) }],
            json: Default::default(),
        }
    }

    /// f at 0x100..0x140 (line 1 up to 0x120, then 2), h at 0x150..0x160
    /// (a name only: no offset, no file), nothing elsewhere.
    fn answer(a: u64) -> Result<Resolution, Reason> {
        match a {
            0x100..0x120 => Ok(res("f", a - 0x100, 1)),
            0x120..0x140 => Ok(res("f", a - 0x100, 2)),
            0x150..0x160 => Ok(Resolution { sym: Some("h\n\"".into()), ..Resolution::default() }),
            _ => Err(Reason::NoSymbols),
        }
    }

    /// The text the lookup's answer gives a frame `back` bytes further.
    fn text(a: u64, back: u64) -> Result<String, Reason> {
        answer(a).map(|r| r.shifted(back).json_fields().to_string())
    }

    fn built() -> Built {
        Built::new_threaded(vec![0x140, 0x100, 0x120, 0x100, 0x110, 0x150, 0x160], vec![answer])
    }

    #[test]
    fn pieces_answer_like_the_lookup_and_survive_the_file() {
        let ix = built();
        // 0x110 starts no new piece: same answer as 0x100 but for the offset.
        assert_eq!(ix.starts, [0, 0x100, 0x120, 0x140, 0x150, 0x160]);
        let id = [0xab, 0xcd];
        let mut back = Index::parse(Bytes::heap(ix.to_bytes(&id).unwrap()), &id).unwrap();
        for a in [0, 0xff, 0x100, 0x11f, 0x120, 0x13f, 0x140, 0x150, 0x15f, 0x160, u64::MAX] {
            for b in [0, 1] {
                assert_eq!(back.text(a, b), text(a, b), "{a:#x}");
            }
        }
        assert!(Index::parse(Bytes::heap(ix.to_bytes(&id).unwrap()), &[0xab])
            .is_err_and(|e| e.contains("another build")));
        // Another symres's index (its version changed by one byte).
        let mut old = ix.to_bytes(&id).unwrap();
        let at = old.windows(WRITER.len()).position(|w| w == WRITER.as_bytes()).unwrap();
        old[at + WRITER.len() - 1] ^= 1;
        assert!(Index::parse(Bytes::heap(old.clone()), &id)
            .is_err_and(|e| e.starts_with("written by symres")));
        // Not a version at all (an older layout): not quoted.
        old[at..at + WRITER.len()].fill(0xff);
        assert!(Index::parse(Bytes::heap(old), &id)
            .is_err_and(|e| e == format!("not written by {WRITER}")));
    }

    /// More pieces than a block holds: the fence leads to the right block.
    #[test]
    fn many_blocks() {
        let answer = |a: u64| {
            if (0x1000..0x1000 + 1000 * 0x10).contains(&a) && a % 0x10 < 8 {
                Ok(res(&format!("f{}", a / 0x10), a % 0x10, 1))
            } else {
                Err(Reason::NoSymbols)
            }
        };
        let addrs: Vec<u64> =
            (0..1000u64).flat_map(|i| [0x1000 + i * 0x10, 0x1008 + i * 0x10]).collect();
        let ix = Built::new_threaded(addrs.clone(), vec![answer]);
        assert!(ix.pieces() > 10 * BLOCK);
        let id = [5];
        // Threads cut the addresses in ranges; the pieces are the same,
        // though a run of one answer spans the cuts.
        let mid = 0x1000 + 400 * 0x10;
        let same = |a: u64| if a < mid { answer(a) } else { Ok(res("g", a - mid, 1)) };
        let one = Built::new_threaded(addrs.clone(), vec![same]);
        // 0, then 400 functions and the gaps after them, then one run.
        assert_eq!(one.pieces(), 1 + 800 + 1);
        let one = one.to_bytes(&id);
        for n in [2, 3, 7] {
            assert!(
                Built::new_threaded(addrs.clone(), vec![same; n]).to_bytes(&id) == one,
                "{n} threads"
            );
        }
        assert_eq!(
            Built::new_threaded(addrs.clone(), vec![answer; 3]).to_bytes(&id),
            ix.to_bytes(&id)
        );
        let mut back = Index::parse(Bytes::heap(ix.to_bytes(&id).unwrap()), &id).unwrap();
        for a in (0xff0..0x1000 + 1001 * 0x10).step_by(3) {
            assert_eq!(back.text(a, 0), answer(a).map(|r| r.json_fields().to_string()), "{a:#x}");
        }
    }

    /// The blob offset of the answer at `a`, and the parsed index.
    fn record_of(good: &[u8], id: &[u8], a: u64) -> (Index, usize) {
        let ix = Index::parse(Bytes::heap(good.to_vec()), id).unwrap();
        let at = ix.record(a).unwrap();
        (ix, at)
    }

    #[test]
    fn damaged_answers_give_no_answer_never_bad_json() {
        let id = [7];
        let good = built().to_bytes(&id).unwrap();
        let (ix, rec) = record_of(&good, &id, 0x100);
        let rec = ix.blob.start + rec;
        let parse = |b: Vec<u8>| Index::parse(Bytes::heap(b), &id).unwrap();
        // The answer of 0x100: the symbol's start (0), where its "sym" and
        // "file" parts are (8, 12), the length of its "line" part (16), the
        // number of inlined calls (20, here 1), where that one is (24), the
        // "line" part (28).
        let set = |b: &mut Vec<u8>, at: usize, v: &[u8]| {
            b[rec + at..rec + at + v.len()].copy_from_slice(v)
        };
        // Parts out of range: no answer.
        for (at, v) in
            [(8, u32::MAX), (12, u32::MAX), (16, u32::MAX), (24, u32::MAX), (8, 0xffff_fff0)]
        {
            let mut bad = good.clone();
            set(&mut bad, at, &v.to_le_bytes());
            assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols), "{at} {v:#x}");
        }
        // Both parts empty (the empty "file" part of 0x150's answer): no
        // answer, as without an index, not an empty one.
        let (_, h) = record_of(&good, &id, 0x150);
        let empty = &good[ix.blob.start + h + 12..][..4];
        let mut bad = good.clone();
        set(&mut bad, 8, empty);
        set(&mut bad, 12, empty);
        assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols));
        // A "line" part that is not JSON members (a quote gone, a newline
        // in it): no answer.
        for (at, byte) in [(28, b'x'), (29, b'\n')] {
            let mut bad = good.clone();
            bad[rec + at] = byte;
            assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols), "{at}");
        }
        // A huge count of inlined calls: bounded by what the blob holds
        // (what it then reads is garbage: no answer).
        let mut bad = good.clone();
        set(&mut bad, 20, &u32::MAX.to_le_bytes());
        assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols));
        // A part of another kind (its "file" part as its "sym" part): no
        // answer.
        let mut bad = good.clone();
        bad.copy_within(rec + 12..rec + 16, rec + 8);
        assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols));
        // A shared part pointed to as it is (checked) and from four bytes
        // on (where its length would be read from its text): no answer.
        let sym_ref = u32_at(&good, rec + 8).unwrap();
        let mut bad = good.clone();
        set(&mut bad, 12, &(sym_ref + 4).to_le_bytes());
        assert_eq!(parse(bad).text(0x100, 0), Err(Reason::NoSymbols));
    }

    /// A pointer into the 8 bytes of a part already checked (4 bytes past
    /// it, where its padding is read as a length) must not skip the check
    /// (found by review: unchecked bytes came out in the line).
    #[test]
    fn unaligned_pointers_give_no_answer() {
        let id = [7];
        let good = built().to_bytes(&id).unwrap();
        let (ix, rec100) = record_of(&good, &id, 0x100);
        let (_, rec150) = record_of(&good, &id, 0x150);
        let (rec100, rec150) = (ix.blob.start + rec100, ix.blob.start + rec150);
        // The empty "file" part of 0x150's answer: its length (0), then
        // padding.
        let empty = u32_at(&good, rec150 + 12).unwrap() as usize;
        assert_eq!(u32_at(&good, ix.blob.start + empty), Some((Kind::File as u32) << 30));
        let mut bad = good.clone();
        bad[ix.blob.start + empty + 4..][..4]
            .copy_from_slice(&(24 | (Kind::File as u32) << 30).to_le_bytes());
        bad[rec100 + 12..][..4].copy_from_slice(&(empty as u32 + 4).to_le_bytes());
        for first_150 in [false, true] {
            let mut b = Index::parse(Bytes::heap(bad.clone()), &id).unwrap();
            if first_150 {
                assert!(b.text(0x150, 0).is_ok());
            }
            assert_eq!(b.text(0x100, 0), Err(Reason::NoSymbols), "0x150 first: {first_150}");
        }
        // An answer pointed to 8 bytes on (past its start, in its
        // "line" part): refused as well.
        let (ix, _) = record_of(&good, &id, 0x100);
        let block = ix.blocks_at;
        let mut bad = good.clone();
        let i = (0..BLOCK).find(|&i| u64_at(&good, block + 8 * i) == Some(0x100)).unwrap();
        let r = u32_at(&good, block + 8 * BLOCK + 4 * i).unwrap();
        bad[block + 8 * BLOCK + 4 * i..][..4].copy_from_slice(&(r + 4).to_le_bytes());
        assert_eq!(
            Index::parse(Bytes::heap(bad), &id).unwrap().text(0x100, 0),
            Err(Reason::NoSymbols)
        );
    }

    /// Parts are refused unless they are what symres writes: flat members
    /// with the part's keys, in order, once each, strings or small
    /// numbers, no spaces.
    #[test]
    fn parts_must_be_what_symres_writes() {
        let mut scan = Scan::default();
        let sfl = ["sym", "file", "line"];
        let good: [(&str, &[&str]); 7] = [
            ("", &["sym"]),
            ("\"sym\":\"f<T> \\\"x\\\"\"", &["sym"]),
            ("\"file\":\"/a/b.c\"", &["file"]),
            ("\"line\":4294967295", &["line"]),
            ("\"line\":0", &["line"]),
            ("\"sym\":\"g\",\"line\":9", &sfl),
            ("\"sym\":\"g\",\"file\":\"a.c\",\"line\":9", &sfl),
        ];
        for (t, keys) in good {
            assert!(fields(&mut scan, t.as_bytes(), keys), "{t}");
        }
        let deep = format!("\"sym\":{}1{}", "[".repeat(125), "]".repeat(125));
        let bad: [(&str, &[&str]); 16] = [
            // JSON has no leading zeros (found by review: "line":04 passed).
            ("\"line\":04", &["line"]),
            ("\"line\":00", &["line"]),
            (&deep, &["sym"]),
            ("\"sym\":\"a\",\"sym\":\"b\"", &["sym"]),
            ("\"file\":\"a\",\"sym\":\"b\"", &sfl),
            ("\"module\":\"a\"", &sfl),
            ("\"sym\":{}", &["sym"]),
            ("\"sym\":[]", &["sym"]),
            ("\"sym\":true", &["sym"]),
            ("\"line\":-1", &["line"]),
            ("\"line\":12345678901", &["line"]),
            ("\"sym\":\"a\" ", &["sym"]),
            (" ", &["sym"]),
            ("\"sym\":\"a\",", &["sym"]),
            ("\"sym\":\"a\nb\"", &["sym"]),
            ("\"s\\u0079m\":\"a\"", &["sym"]),
        ];
        for (t, keys) in bad {
            assert!(!fields(&mut scan, t.as_bytes(), keys), "{t}");
        }
        assert!(!fields(&mut scan, b"\"sym\":\"\xff\"", &["sym"]));
    }

    /// The fuzz target's entry, on a real index (its header cut off, as
    /// in the fuzz corpus).
    #[test]
    fn fuzz_entry_reads_an_index() {
        let id = [0x5a];
        let good = built().to_bytes(&id).unwrap();
        fuzz(&good[header(&id).len()..]);
        let mut ix = Index::parse(Bytes::heap(good), &id).unwrap();
        assert!(ix.text(0x100, 0).is_ok());
    }

    #[test]
    fn corrupt_files_are_rejected_or_give_json() {
        let id = [1, 2, 3];
        let good = built().to_bytes(&id).unwrap();
        let parse = |b: &[u8]| Index::parse(Bytes::heap(b.to_vec()), &id);
        assert!(parse(&good).is_ok());
        // Cut anywhere before the blocks' end: they no longer fit.
        let blocks_end = {
            let ix = parse(&good).unwrap();
            ix.blocks_at + ix.n_blocks * BLOCK_BYTES
        };
        for n in 0..blocks_end {
            assert!(parse(&good[..n]).is_err(), "truncated to {n}");
        }
        let mut next = crate::testing::rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let seed = next();
            let mut bad = good.clone();
            let at = (seed % bad.len() as u64) as usize;
            bad[at] = (seed >> 32) as u8;
            // Sometimes a second byte, near the first or anywhere.
            if seed >> 40 & 3 == 0 {
                let next_at = if seed >> 42 & 1 == 0 {
                    (at + (seed >> 43) as usize % 8).min(bad.len() - 1)
                } else {
                    next() as usize % bad.len()
                };
                bad[next_at] = (seed >> 48) as u8;
            }
            let cut = if seed >> 60 == 0 { at } else { bad.len() };
            if let Ok(mut ix) = parse(&bad[..cut]) {
                // Whatever it says, a lookup stays in bounds, and what it
                // gives is JSON object members.
                for a in [0, 0x100, 0x130, 0x150, u64::MAX] {
                    if let Ok(t) = ix.text(a, 1) {
                        let line = format!("{{{t}}}");
                        assert!(
                            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                                &line
                            )
                            .is_ok(),
                            "{line}"
                        );
                        assert!(!line.contains('\n'));
                    }
                }
            }
        }
    }
}
