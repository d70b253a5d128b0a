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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::elf::Bytes;
use crate::resolve::{Inlined, Reason, Resolution};

const MAGIC: &[u8; 8] = b"SYMRESIX";
/// The format's version. An index also records the symres that wrote it:
/// answers (demangling, say) may change between versions, so another
/// version's index is ignored rather than trusted.
const VERSION: u32 = 1;
const WRITER: &str = concat!("symres ", env!("CARGO_PKG_VERSION"));
/// "None" for string ids, lines and answers.
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
/// at lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    sym: Option<Arc<str>>,
    sym_start: Option<u64>,
    file: Option<Arc<str>>,
    line: Option<u32>,
    inlined: Vec<Inlined>,
}

impl Stored {
    fn of(vaddr: u64, r: &Resolution) -> Stored {
        Stored {
            sym: r.sym.clone(),
            sym_start: r.sym_offset.map(|o| vaddr.wrapping_sub(o)),
            file: r.file.clone(),
            line: r.line,
            inlined: r.inlined.clone(),
        }
    }
}

/// A module's pieces and their answers, as built (`to_bytes` writes them).
pub struct Built {
    starts: Vec<u64>,
    answers: Vec<Option<u32>>,
    stored: Vec<Stored>,
}

impl Built {
    pub fn pieces(&self) -> usize {
        self.starts.len()
    }

    /// Pieces from `addrs` (every address where an answer may change; any
    /// order, repeats allowed) and `answer`, the lookup.
    pub fn new(mut addrs: Vec<u64>, mut answer: impl FnMut(u64) -> Result<Resolution, Reason>) -> Built {
        addrs.push(0);
        addrs.sort_unstable();
        addrs.dedup();
        let mut ix = Built { starts: Vec::new(), answers: Vec::new(), stored: Vec::new() };
        let mut last: Option<Option<Stored>> = None;
        for a in addrs {
            let s = answer(a).ok().map(|r| Stored::of(a, &r));
            if last.as_ref() == Some(&s) {
                continue;
            }
            ix.starts.push(a);
            ix.answers.push(s.as_ref().map(|s| {
                ix.stored.push(s.clone());
                (ix.stored.len() - 1) as u32
            }));
            last = Some(s);
        }
        ix
    }

    /// The file's bytes, for the module with `build_id`.
    ///
    /// Layout (little-endian): magic, version (u32), the writer (u32
    /// length, bytes), build id (u32 length, bytes); the numbers of strings, answers and pieces (u32 each); where
    /// their tables start and where the blob starts and ends (u64 each);
    /// then the tables: per string its offset and length in the blob (u32,
    /// u32), per answer its offset in the blob (u32), the pieces' start
    /// addresses (u64, ascending), the pieces' answers (u32); then the
    /// blob: the strings, and the answers (symbol u32, symbol start u64,
    /// file u32, line u32, inlined count u32, then per inlined call symbol,
    /// file and line, u32 each). u32::MAX (u64::MAX for a start) stands for
    /// none.
    /// `None` when the index would pass 4 GB (its offsets are 32-bit).
    pub fn to_bytes(&self, build_id: &[u8]) -> Option<Vec<u8>> {
        let mut blob = Vec::new();
        let mut strings: FxHashMap<Arc<str>, u32> = FxHashMap::default();
        let mut string_table = Vec::new();
        let mut id = |blob: &mut Vec<u8>, s: &Option<Arc<str>>| match s {
            None => NONE32,
            Some(s) => *strings.entry(s.clone()).or_insert_with(|| {
                put32(&mut string_table, blob.len() as u32);
                put32(&mut string_table, s.len() as u32);
                blob.extend_from_slice(s.as_bytes());
                (string_table.len() / 8 - 1) as u32
            }),
        };
        let mut answer_table = Vec::new();
        for s in &self.stored {
            let mut rec = Vec::new();
            put32(&mut rec, id(&mut blob, &s.sym));
            rec.extend_from_slice(&s.sym_start.unwrap_or(NONE64).to_le_bytes());
            put32(&mut rec, id(&mut blob, &s.file));
            put32(&mut rec, s.line.unwrap_or(NONE32));
            put32(&mut rec, s.inlined.len() as u32);
            for f in &s.inlined {
                put32(&mut rec, id(&mut blob, &f.sym));
                put32(&mut rec, id(&mut blob, &f.file));
                put32(&mut rec, f.line.unwrap_or(NONE32));
            }
            put32(&mut answer_table, blob.len() as u32);
            blob.extend_from_slice(&rec);
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put32(&mut out, VERSION);
        put32(&mut out, WRITER.len() as u32);
        out.extend_from_slice(WRITER.as_bytes());
        put32(&mut out, build_id.len() as u32);
        out.extend_from_slice(build_id);
        put32(&mut out, (string_table.len() / 8) as u32);
        put32(&mut out, self.stored.len() as u32);
        put32(&mut out, self.starts.len() as u32);
        let tables_at = out.len() + 6 * 8;
        let strings_at = tables_at;
        let answers_at = strings_at + string_table.len();
        let starts_at = answers_at + answer_table.len();
        let ids_at = starts_at + self.starts.len() * 8;
        let blob_at = ids_at + self.answers.len() * 4;
        for at in [strings_at, answers_at, starts_at, ids_at, blob_at, blob_at + blob.len()] {
            out.extend_from_slice(&(at as u64).to_le_bytes());
        }
        out.extend_from_slice(&string_table);
        out.extend_from_slice(&answer_table);
        for s in &self.starts {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for a in &self.answers {
            put32(&mut out, a.unwrap_or(NONE32));
        }
        out.extend_from_slice(&blob);
        (out.len() <= u32::MAX as usize).then_some(out)
    }
}

/// Inlined calls read per answer at most (a lookup reports fewer).
const MAX_INLINED: usize = 256;

/// Pieces per fence entry (see `Index::fence`).
const BLOCK: usize = 16;

/// An index file, read in place: loading costs a check of its header and
/// table bounds, so a large index does not slow a short run down.
pub struct Index {
    data: Bytes,
    /// Where each table starts in `data` (all checked to fit).
    strings_at: usize,
    answers_at: usize,
    starts_at: usize,
    ids_at: usize,
    /// The blob's range in `data`.
    blob: std::ops::Range<usize>,
    n_strings: usize,
    n_answers: usize,
    n_pieces: usize,
    /// Every BLOCK-th piece's start: a search touches this small array
    /// (cache-resident), then one block of the file, instead of a dozen
    /// scattered reads of the whole table.
    fence: Vec<u64>,
    /// Strings made so far, shared by the answers that use them.
    made: FxHashMap<u32, Arc<str>>,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl Index {
    /// Check the header of an index file for the module with `build_id`,
    /// and that its tables fit in it. Records are checked when read: a
    /// corrupt index gives wrong answers or none, never a read out of
    /// bounds.
    pub fn parse(data: Bytes, build_id: &[u8]) -> Result<Index, String> {
        let d: &[u8] = &data;
        if d.get(..8) != Some(MAGIC.as_slice()) {
            return Err("not a symres index".into());
        }
        let version = u32_at(d, 8).ok_or("truncated")?;
        if version != VERSION {
            return Err(format!("index version {version}, this symres reads {VERSION}"));
        }
        let writer_len = u32_at(d, 12).ok_or("truncated")? as usize;
        let writer = d.get(16..16usize.saturating_add(writer_len)).ok_or("truncated")?;
        if writer != WRITER.as_bytes() {
            return Err(match std::str::from_utf8(writer) {
                Ok(w) if w.len() <= 64 && w.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => format!("written by {w}, not {WRITER}"),
                _ => format!("not written by {WRITER}"),
            });
        }
        let at_id = 16 + writer_len;
        let id_len = u32_at(d, at_id).ok_or("truncated")? as usize;
        if d.get(at_id + 4..(at_id + 4).saturating_add(id_len)) != Some(build_id) {
            return Err("index of another build".into());
        }
        let h = at_id + 4 + build_id.len();
        let count = |i: usize| u32_at(d, h + 4 * i).map(|n| n as usize).ok_or("truncated");
        let (n_strings, n_answers, n_pieces) = (count(0)?, count(1)?, count(2)?);
        let at = |i: usize| u64_at(d, h + 12 + 8 * i).and_then(|a| usize::try_from(a).ok()).ok_or("truncated");
        let (strings_at, answers_at, starts_at, ids_at, blob_at, blob_end) = (at(0)?, at(1)?, at(2)?, at(3)?, at(4)?, at(5)?);
        let fits = |start: usize, n: usize, size: usize| n.checked_mul(size).and_then(|len| start.checked_add(len)).is_some_and(|end| end <= d.len());
        if !(fits(strings_at, n_strings, 8)
            && fits(answers_at, n_answers, 4)
            && fits(starts_at, n_pieces, 8)
            && fits(ids_at, n_pieces, 4)
            && blob_at <= blob_end
            && blob_end <= d.len())
        {
            return Err("truncated".into());
        }
        let fence = (0..n_pieces).step_by(BLOCK).map(|i| u64_at(d, starts_at + 8 * i).unwrap_or(u64::MAX)).collect();
        Ok(Index {
            strings_at,
            answers_at,
            starts_at,
            ids_at,
            blob: blob_at..blob_end,
            n_strings,
            n_answers,
            n_pieces,
            fence,
            made: FxHashMap::default(),
            data,
        })
    }

    pub fn pieces(&self) -> usize {
        self.n_pieces
    }

    /// The piece holding `vaddr`.
    fn piece(&self, vaddr: u64) -> Option<usize> {
        let d: &[u8] = &self.data;
        let block = self.fence.partition_point(|&s| s <= vaddr).checked_sub(1)?;
        let (lo, hi) = (block * BLOCK, (block * BLOCK + BLOCK).min(self.n_pieces));
        let start = |i: usize| u64_at(d, self.starts_at + 8 * i).unwrap_or(u64::MAX);
        // The last piece of the block that starts at or before `vaddr`.
        (lo..hi).take_while(|&i| start(i) <= vaddr).last()
    }

    /// The answer at `vaddr`, as the lookup without an index gives it.
    pub fn lookup(&mut self, vaddr: u64) -> Result<Resolution, Reason> {
        let d: &[u8] = &self.data;
        let i = self.piece(vaddr).ok_or(Reason::NoSymbols)?;
        let a = u32_at(d, self.ids_at + 4 * i).filter(|&a| (a as usize) < self.n_answers).ok_or(Reason::NoSymbols)?;
        let rec = u32_at(d, self.answers_at + 4 * a as usize).ok_or(Reason::NoSymbols)? as usize;
        let blob = d.get(self.blob.clone()).unwrap_or_default();
        let (strings_at, n_strings, made) = (self.strings_at, self.n_strings, &mut self.made);
        let mut string = |id: u32| -> Option<Arc<str>> {
            if let Some(s) = made.get(&id) {
                return Some(s.clone());
            }
            if id as usize >= n_strings {
                return None;
            }
            let at = strings_at + 8 * id as usize;
            let (off, len) = (u32_at(d, at)? as usize, u32_at(d, at + 4)? as usize);
            let s: Arc<str> = Arc::from(std::str::from_utf8(blob.get(off..off.checked_add(len)?)?).ok()?);
            made.insert(id, s.clone());
            Some(s)
        };
        let mut r = Cursor { blob, at: rec };
        let sym = string(r.next());
        let start = u64::from(r.next()) | u64::from(r.next()) << 32;
        let file = string(r.next());
        let line = Some(r.next()).filter(|&l| l != NONE32);
        // At most what the rest of the blob holds, and no more than a
        // lookup reports (a corrupt count must not make a huge frame).
        let n = (r.next() as usize).min(blob.len().saturating_sub(r.at) / 12).min(MAX_INLINED);
        let mut inlined = Vec::with_capacity(n);
        for _ in 0..n {
            let (s, f, l) = (r.next(), r.next(), r.next());
            inlined.push(Inlined { sym: string(s), file: string(f), line: (l != NONE32).then_some(l) });
        }
        // As without an index: an answer names a function or a file.
        if sym.is_none() && file.is_none() {
            return Err(Reason::NoSymbols);
        }
        Ok(Resolution {
            sym,
            sym_offset: (start != NONE64).then(|| vaddr.wrapping_sub(start)),
            file,
            line,
            inlined,
            json: Default::default(),
        })
    }

    /// The index of `build_id` in `dir`, if there is a usable one.
    pub fn load(dir: &Path, build_id: &[u8]) -> Result<Option<Index>, String> {
        let path = dir.join(file_name(build_id));
        let data = match Bytes::open(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Index::parse(data, build_id).map(Some).map_err(|e| format!("{}: {e}, ignored", path.display()))
    }
}

/// Reads an answer record, u32 by u32; past the blob's end it reads "none".
struct Cursor<'a> {
    blob: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> u32 {
        let v = u32_at(self.blob, self.at).unwrap_or(NONE32);
        self.at = self.at.saturating_add(4);
        v
    }
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// f at 0x100..0x140 (line 1 up to 0x120, then 2), nothing elsewhere.
    fn answer(a: u64) -> Result<Resolution, Reason> {
        match a {
            0x100..0x120 => Ok(res("f", a - 0x100, 1)),
            0x120..0x140 => Ok(res("f", a - 0x100, 2)),
            _ => Err(Reason::NoSymbols),
        }
    }

    #[test]
    fn pieces_answer_like_the_lookup_and_survive_the_file() {
        let ix = Built::new(vec![0x140, 0x100, 0x120, 0x100, 0x110], answer);
        // 0x110 starts no new piece: same answer as 0x100 but for the offset.
        assert_eq!(ix.starts, [0, 0x100, 0x120, 0x140]);
        let id = [0xab, 0xcd];
        let mut back = Index::parse(Bytes::heap(ix.to_bytes(&id).unwrap()), &id).unwrap();
        for a in [0, 0xff, 0x100, 0x11f, 0x120, 0x13f, 0x140, u64::MAX] {
            assert_eq!(back.lookup(a), answer(a), "{a:#x}");
        }
        assert!(Index::parse(Bytes::heap(ix.to_bytes(&id).unwrap()), &[0xab]).is_err_and(|e| e.contains("another build")));
        // Another symres's index (its version changed by one byte).
        let mut old = ix.to_bytes(&id).unwrap();
        let at = old.windows(WRITER.len()).position(|w| w == WRITER.as_bytes()).unwrap();
        old[at + WRITER.len() - 1] ^= 1;
        assert!(Index::parse(Bytes::heap(old.clone()), &id).is_err_and(|e| e.starts_with("written by symres")));
        // Not a version at all (an older layout): not quoted.
        old[at..at + WRITER.len()].fill(0xff);
        assert!(Index::parse(Bytes::heap(old), &id).is_err_and(|e| e == format!("not written by {WRITER}")));
    }

    #[test]
    fn damaged_records_give_no_answer_or_a_bounded_one() {
        let id = [7];
        let good = Built::new(vec![0x100, 0x120, 0x140], answer).to_bytes(&id).unwrap();
        let parse = |b: Vec<u8>| Index::parse(Bytes::heap(b), &id).unwrap();
        let ix = parse(good.clone());
        // The answer of 0x100 (the first record): symbol, start, file,
        // line, inlined count, then the inlined calls.
        let rec = ix.blob.start + u32_at(&good, ix.answers_at).unwrap() as usize;
        let set = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[rec + at..rec + at + v.len()].copy_from_slice(v);
        // No symbol, no file (ids out of range): no answer, as without an
        // index, not an empty one.
        let mut bad = good.clone();
        set(&mut bad, 0, &0xffff_fff0u32.to_le_bytes());
        set(&mut bad, 4, &u64::MAX.to_le_bytes());
        set(&mut bad, 12, &0xffff_fff0u32.to_le_bytes());
        set(&mut bad, 20, &0u32.to_le_bytes());
        assert_eq!(parse(bad).lookup(0x100), Err(Reason::NoSymbols));
        // A huge count of inlined calls reads what the blob holds.
        let mut bad = good.clone();
        set(&mut bad, 20, &u32::MAX.to_le_bytes());
        let blob_left = (ix.blob.end - rec - 24) / 12;
        let r = parse(bad).lookup(0x100).unwrap();
        assert!(r.inlined.len() <= blob_left.min(MAX_INLINED), "{}", r.inlined.len());
        assert_eq!(r.sym.as_deref(), Some("f"));
    }

    #[test]
    fn corrupt_files_are_rejected_never_trusted() {
        let id = [1, 2, 3];
        let good = Built::new(vec![0x100, 0x120, 0x140], answer).to_bytes(&id).unwrap();
        let parse = |b: &[u8]| Index::parse(Bytes::heap(b.to_vec()), &id);
        assert!(parse(&good).is_ok());
        // Cut anywhere before the blob's end: the tables no longer fit.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "truncated to {n}");
        }
        let mut next = crate::testing::rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let seed = next();
            let mut bad = good.clone();
            let at = (seed % bad.len() as u64) as usize;
            bad[at] = (seed >> 32) as u8;
            if let Ok(mut ix) = parse(&bad) {
                // Whatever it says, a lookup stays in bounds.
                for a in [0, 0x100, 0x130, u64::MAX] {
                    let _ = ix.lookup(a);
                }
            }
        }
    }
}
