//! The cache of answers: what a run learned about a build, kept for the
//! next run of the same build without a flag.
//!
//! Tracers print the same stacks run after run, and a large build's cold
//! addresses cost the parse of their DWARF units (about 10 µs each), so a
//! second run of the same input would cost as much as the first. Each run
//! therefore writes, when its input ends, the answers it made for every
//! module with a build id, as a file named by that build id
//! (`<build-id>.answers`) in the index directory; the next run answers
//! those addresses from it, with the binary search of a prebuilt index
//! (the file has the layout of one: see `crate::index`), and merges what it
//! learns in turn. It is a by-product of answering, written after the last
//! line: the first run is no slower and its first line no later.
//!
//! A cache file is input like any other file, and shared by concurrent
//! runs: it is written aside and renamed (`crate::store`: a run killed
//! mid-write leaves no half file, two runs each put a whole file in place,
//! the last one wins); it names the build id and the files its answers
//! were made from (a debug file installed since makes it stale), and holds
//! a CRC of its contents, so that a damaged or truncated file is said (a
//! warning, -v or not), ignored and written anew. The files together stay
//! under a size bound (`--cache-size`): the ones used longest ago (by
//! modification time, set again when a file is used) go first.

use std::path::Path;
use std::time::SystemTime;

use crate::elf::Bytes;
use crate::index::{Built, Index, Piece};
use crate::log;
use crate::store::StoreDir;

/// The size the cache files of a directory are kept under, by default.
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// Answers a stream learns for the cache, at most (each holds its answer
/// until the run ends).
pub const MAX_LEARNED: usize = 1 << 20;

const SUFFIX: &str = ".answers";

/// A cache file of more pieces than this is rewritten only when a run
/// brings at least a `FEW_RATIO`th as many new answers.
const FEW_PIECES: usize = 1 << 14;
const FEW_RATIO: usize = 64;

/// A temporary cache file this old is a killed run's, removed.
const STALE_SECS: u64 = 600;

/// The cache file name for a build id.
pub fn file_name(build_id: &[u8]) -> String {
    format!("{}{SUFFIX}", leakd_common::text::hex_bytes(build_id))
}

/// What answers of a module are made from, beside its build id: the file
/// (`file`, its identity: a file changed in place keeps its build id but
/// may answer otherwise), and the same build gives other answers with a
/// separate debug file than without (see `Index::parse_cache`). Empty when
/// the file's identity is unknown: nothing is cached then.
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
pub fn load(store: &StoreDir, build_id: &[u8], provenance: &[u8]) -> Option<Index> {
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
    match Index::parse_cache(data, build_id, provenance) {
        Ok(ix) => {
            log::once(1, || format!("cache: using {} ({} pieces)", path.display(), ix.pieces()));
            Some(ix)
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

/// What one module learned in a run: answers by the address looked up.
pub struct Learned {
    pub build_id: Vec<u8>,
    pub provenance: Vec<u8>,
    pub points: Vec<(u64, Piece)>,
}

/// The cache file of `old`'s pieces known (sorted, apart) and `points`
/// (any order, repeats allowed): each point a piece of one address, unless
/// `old` knows it already.
pub fn merged(mut old: Vec<(u64, u64, Piece)>, mut points: Vec<(u64, Piece)>) -> Built {
    points.sort_unstable_by_key(|p| p.0);
    points.dedup_by_key(|p| p.0);
    let known = |a: u64| {
        let i = old.partition_point(|s| s.0 <= a);
        i > 0 && a < old[i - 1].1
    };
    let fresh: Vec<(u64, u64, Piece)> = points
        .into_iter()
        .filter(|&(a, _)| a != u64::MAX && !known(a))
        .map(|(a, p)| (a, a + 1, p))
        .collect();
    old.extend(fresh);
    // Two sorted runs: a merge.
    old.sort_by_key(|s| s.0);
    let mut b = Built::default();
    if old.first().is_none_or(|s| s.0 > 0) {
        b.push(0, Piece::Unknown);
    }
    // Where the piece before ends.
    let mut end = None;
    for (start, stop, piece) in old {
        if end.is_some_and(|e| e < start) {
            b.push(end.unwrap_or(start), Piece::Unknown);
        }
        b.push(start, piece);
        end = Some(stop);
    }
    if let Some(e) = end.filter(|&e| e != u64::MAX) {
        b.push(e, Piece::Unknown);
    }
    b
}

/// Write what the modules learned (one entry per build id, the threads'
/// answers together) into the cache directory `dir`, merged with what is
/// there, then keep the directory's cache files under `limit` bytes.
pub fn write(dir: &Path, limit: u64, learned: Vec<Learned>) {
    if learned.iter().all(|l| l.points.is_empty()) {
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
        if l.points.is_empty() {
            continue;
        }
        let name = file_name(&l.build_id);
        // What is there now (another run's, maybe, since this one began).
        let there = load_quiet(&store, &l.build_id, &l.provenance);
        // A rewrite costs time in proportion to the file (about 100 ms for
        // 100k answers): not for a few new answers to a large file (a run
        // of a few lines would end that much later).
        if let Some(ix) = there.as_ref().filter(|ix| {
            ix.pieces() > FEW_PIECES && l.points.len().saturating_mul(FEW_RATIO) < ix.pieces()
        }) {
            log::once(1, || {
                format!(
                    "cache: {name}: {} new answers, too few to rewrite its {} pieces",
                    l.points.len(),
                    ix.pieces()
                )
            });
            continue;
        }
        let old = there.map_or_else(Vec::new, |mut ix| ix.known());
        let n_old = old.len();
        let n_new = l.points.len();
        let built = merged(old, l.points);
        let Some(bytes) = built.to_cache_bytes(&l.build_id, &l.provenance) else { continue };
        if bytes.len() as u64 > limit {
            log::once(1, || {
                format!("cache: {name}: {} bytes, over the cache size; not written", bytes.len())
            });
            continue;
        }
        let r = store.create_temp(&name).and_then(|mut tmp| {
            std::io::Write::write_all(&mut tmp.file, &bytes)?;
            store.commit_unsynced(tmp, &name)
        });
        match r {
            Ok(path) => log::once(1, || {
                format!(
                    "cache: wrote {} ({} pieces: {n_old} known before, {n_new} answers made now)",
                    path.display(),
                    built.pieces()
                )
            }),
            Err(e) => log::once(1, || format!("cache: {e}")),
        }
    }
    evict(&store, limit);
}

/// `load` without a word (the writer's look at what is there now).
fn load_quiet(store: &StoreDir, build_id: &[u8], provenance: &[u8]) -> Option<Index> {
    let file = store.open_file(&file_name(build_id)).ok()??;
    Index::parse_cache(Bytes::of_file(file).ok()?, build_id, provenance).ok()
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
/// header (with its CRC); lookups and a merge must not panic or read out
/// of bounds, and every answer must be JSON object members.
pub fn fuzz(data: &[u8]) {
    let (id, prov) = ([0x5a], b"p".as_slice());
    let _ = Index::parse_cache(Bytes::heap(data.to_vec()), &id, prov);
    let mut file = Built::default().to_cache_bytes(&id, prov).unwrap_or_default();
    // The empty cache's header, up to its counts: then `data`, its CRC
    // made good.
    let head = file.len().saturating_sub(8 + 4 * 8);
    file.truncate(head);
    file.extend_from_slice(data);
    let crc_at = head - 4;
    let crc = crc32fast::hash(&file[crc_at + 4..]);
    file[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    let Ok(mut ix) = Index::parse_cache(Bytes::heap(file), &id, prov) else { return };
    let known = ix.known();
    let mut addrs: Vec<u64> = known.iter().flat_map(|k| [k.0, k.1]).take(64).collect();
    addrs.extend([0, 1, 0x1000, u64::MAX]);
    let mut out = Vec::new();
    for a in addrs {
        for back in [0, 1] {
            out.clear();
            if let Some(Ok(())) = ix.lookup(a, back, &mut out) {
                crate::index::assert_json_members(&out);
            }
        }
    }
    let again = merged(known, vec![(0x10, Piece::Nothing)]);
    assert!(again.to_cache_bytes(&id, prov).is_some());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Resolution;

    fn res(sym: &str, off: u64) -> Piece {
        let r =
            Resolution { sym: Some(sym.into()), sym_offset: Some(off), ..Resolution::default() };
        Piece::Known(crate::index::Stored::of(0x100 + off, &r))
    }

    /// The text a cache gives at `a`, `None` when it does not know.
    fn text(ix: &mut Index, a: u64) -> Option<Result<String, Reason>> {
        let mut o = Vec::new();
        ix.lookup(a, 0, &mut o).map(|r| r.map(|()| String::from_utf8(o).unwrap()))
    }

    use crate::answer::Reason;

    /// Points become pieces of one address; what an older file knew stays;
    /// everything else is not known (looked up again).
    #[test]
    fn merged_points_and_pieces() {
        let (id, prov) = ([1, 2], b"p".as_slice());
        let first =
            merged(vec![], vec![(0x100, res("f", 0)), (0x102, res("f", 2)), (0x101, res("f", 1))]);
        // 0, then 0x100..0x103 (one answer: the same function), then unknown.
        assert_eq!(first.pieces(), 3);
        let bytes = first.to_cache_bytes(&id, prov).unwrap();
        let mut ix = Index::parse_cache(Bytes::heap(bytes.clone()), &id, prov).unwrap();
        assert_eq!(text(&mut ix, 0xff), None);
        assert_eq!(text(&mut ix, 0x101), Some(Ok("\"sym\":\"f\",\"sym_offset\":\"0x1\"".into())));
        assert_eq!(text(&mut ix, 0x103), None);
        // Merged with new points: one inside (kept as it was), others
        // apart, one "no answer", and u64::MAX (never cached).
        let again = merged(
            ix.known(),
            vec![
                (0x101, res("x", 9)),
                (0x200, res("g", 0x100)),
                (0x50, Piece::Nothing),
                (u64::MAX, Piece::Nothing),
            ],
        );
        let bytes = again.to_cache_bytes(&id, prov).unwrap();
        let mut ix = Index::parse_cache(Bytes::heap(bytes.clone()), &id, prov).unwrap();
        assert_eq!(text(&mut ix, 0x101), Some(Ok("\"sym\":\"f\",\"sym_offset\":\"0x1\"".into())));
        assert_eq!(text(&mut ix, 0x200), Some(Ok("\"sym\":\"g\",\"sym_offset\":\"0x100\"".into())));
        assert_eq!(text(&mut ix, 0x50), Some(Err(Reason::NoSymbols)));
        for a in [0, 0x4f, 0x51, 0x103, 0x1ff, 0x201, u64::MAX] {
            assert_eq!(text(&mut ix, a), None, "{a:#x}");
        }
        // Another build's, or from other files: refused.
        assert!(Index::parse_cache(Bytes::heap(bytes.clone()), &[1], prov).is_err());
        assert!(Index::parse_cache(Bytes::heap(bytes.clone()), &id, b"q")
            .is_err_and(|e| e.starts_with("made from")));
        // Any byte changed, or any cut: refused.
        for at in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(Index::parse_cache(Bytes::heap(bad), &id, prov).is_err(), "byte {at}");
            assert!(
                Index::parse_cache(Bytes::heap(bytes[..at].to_vec()), &id, prov).is_err(),
                "cut at {at}"
            );
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
            // Every other address: a piece each, and one unknown after.
            points: addrs.map(|a| (0x1000 + 2 * a, res(&format!("f{a}"), 0))).collect(),
        };
        let n = FEW_PIECES as u64;
        write(&dir, DEFAULT_SIZE, vec![learned(0..n)]);
        let file = dir.join(file_name(&id));
        let before = std::fs::read(&file).unwrap();
        let pieces = Index::parse_cache(Bytes::heap(before.clone()), &id, &prov).unwrap().pieces();
        assert!(pieces > 2 * FEW_PIECES, "{pieces}");
        let few = (pieces / FEW_RATIO - 1) as u64;
        write(&dir, DEFAULT_SIZE, vec![learned(n..n + few)]);
        assert!(std::fs::read(&file).unwrap() == before, "rewritten for {few} answers");
        let enough = few + 2;
        write(&dir, DEFAULT_SIZE, vec![learned(n..n + enough)]);
        let after =
            Index::parse_cache(Bytes::heap(std::fs::read(&file).unwrap()), &id, &prov).unwrap();
        assert_eq!(after.pieces(), pieces + 2 * enough as usize);
        assert!(after.knows(0x1000 + 2 * (n + enough - 1)));
        assert!(after.knows(0x1000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Random damage behind a good CRC (what the fuzz target reaches):
    /// refused, or lookups in bounds whose answers are JSON members, and a
    /// merge that writes a file that reads back.
    #[test]
    fn damage_behind_a_good_crc_never_breaks_a_line() {
        let b = merged(
            vec![],
            (0..40u64)
                .map(|a| (0x100 + 3 * a, if a % 5 == 0 { Piece::Nothing } else { res("f", a) }))
                .collect(),
        );
        let good = b.to_cache_bytes(&[0x5a], b"p").unwrap();
        let head = Built::default().to_cache_bytes(&[0x5a], b"p").unwrap().len() - 40;
        let body = &good[head..];
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
    }

    /// The fuzz target's entry, on a real cache file (its header cut off).
    #[test]
    fn fuzz_entry_reads_a_cache() {
        let b = merged(vec![], vec![(0x100, res("f", 0)), (0x180, Piece::Nothing)]);
        let bytes = b.to_cache_bytes(&[0x5a], b"p").unwrap();
        let head = Built::default().to_cache_bytes(&[0x5a], b"p").unwrap().len() - 40;
        fuzz(&bytes[head..]);
        fuzz(&bytes);
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
