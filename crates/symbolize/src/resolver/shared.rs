//! What the resolvers of one stream share: the parsed DWARF of each file,
//! and the parsing of a line's cold DWARF units on several threads.
//!
//! Each resolving thread has its own caches of answers (no locks on the
//! hot path), but parsing a large binary's DWARF is most of what a new
//! address costs, so that is done once per file for all of them.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustc_hash::FxHashMap;

use crate::cache::{CacheFile, Learned};
use crate::dwarf::Units;
use crate::elf::DwarfSections;
use crate::elf::Sorted;

/// Identity of a file: the same file gives the same DWARF, whichever path
/// (/proc/PID/root/..., /proc/PID/map_files/...) reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileKey {
    /// The identity as text, for what a cache of answers was made from.
    pub fn describe(&self) -> String {
        let FileKey { dev, ino, size, mtime: (s, ns) } = self;
        format!("file {dev}:{ino}, {size} bytes, modified {s}.{ns:09}")
    }

    pub fn of(md: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
        }
    }
}

/// What the resolvers made from one another (`AddrResolver::fresh`) share.
#[derive(Clone, Default)]
pub struct Shared {
    /// The DWARF units of the files loaded so far, as long as a module of
    /// some resolver holds them (a module closed by every resolver lets
    /// its DWARF go), by the module's provenance, as `symbols` and for the
    /// same reason: a module without DWARF of its own takes a debug file's,
    /// which another module of the same file may not have found.
    dwarf: Arc<Mutex<FxHashMap<Vec<u8>, Weak<Units>>>>,
    /// What the resolvers learned for the cache, and how many frames they
    /// answered from it, once each is done.
    learned: Arc<Mutex<(u64, Vec<Learned>)>>,
    /// The sorted symbol tables of the files loaded so far (with their
    /// demangled names), as long as a module of some resolver holds them,
    /// by the module's provenance (`cache::provenance`): the file's
    /// identity alone does not say whose symbols a module took, its own or
    /// a debug file's (found for one process, not for another; installed
    /// since), and a table names its symbols by their place in that file.
    symbols: Arc<Mutex<SortedTables>>,
    /// The cache files of answers loaded so far, by build id and what
    /// their answers are made from (`None`: none usable): each is opened
    /// and its CRC checked once for all the resolvers of a stream.
    caches: Arc<Mutex<CacheFiles>>,
}

/// Sorted symbol tables by provenance (see `Shared::symbols`).
type SortedTables = FxHashMap<Vec<u8>, Weak<OnceLock<Sorted>>>;

/// Cache files by build id and provenance.
type CacheFiles = FxHashMap<(Vec<u8>, Vec<u8>), Option<CacheFile>>;

/// Cache files kept in `Shared::caches` at most (each holds a mapping, of
/// which a process has a bounded number: see crate::mmap).
const MAX_CACHE_FILES: usize = 16;

impl Shared {
    /// The cache file of answers of the build `build_id` made from
    /// `provenance`, as `load` loads it, unless another resolver did
    /// (then a fresh reader of the same checked file). Loaded under the
    /// lock: another resolver waits for this one's check rather than
    /// making it again.
    pub fn cache_file(
        &self,
        build_id: &[u8],
        provenance: &[u8],
        load: impl FnOnce() -> Option<CacheFile>,
    ) -> Option<CacheFile> {
        let mut map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let key = (build_id.to_vec(), provenance.to_vec());
        if let Some(c) = map.get(&key) {
            return c.as_ref().map(CacheFile::fresh);
        }
        let c = load();
        let fresh = c.as_ref().map(CacheFile::fresh);
        if map.len() >= MAX_CACHE_FILES {
            map.clear();
        }
        map.insert(key, c);
        fresh
    }

    /// The sorted symbol table of a module made from the files
    /// `provenance` describes (not empty): another resolver's when one
    /// holds it, else `mine` (the table of the caller's module, which the
    /// others will then share).
    pub fn symbols(&self, provenance: &[u8], mine: Arc<OnceLock<Sorted>>) -> Arc<OnceLock<Sorted>> {
        let mut map = self.symbols.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = map.get(provenance).and_then(Weak::upgrade) {
            return kept;
        }
        // Entries of tables no longer held go before the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(provenance.to_vec(), Arc::downgrade(&mine));
        mine
    }

    /// Add what a module learned (`AddrResolver::finish_cache`).
    pub fn learned(&self, mut l: Learned) {
        let mut all = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        // What a stream keeps for the cache is bounded (a long run over
        // many modules meets new addresses without end).
        let kept: usize = all.1.iter().map(Learned::len).sum();
        let room = crate::cache::MAX_LEARNED.saturating_sub(kept);
        l.points.truncate(room);
        l.syms.truncate(room - l.points.len());
        if !l.is_empty() {
            all.1.push(l);
        }
    }

    /// Add frames answered from the cache.
    pub fn cache_hits(&self, n: u64) {
        self.learned.lock().unwrap_or_else(|e| e.into_inner()).0 += n;
    }

    /// All the resolvers learned, and the frames they answered from the
    /// cache.
    pub fn take_learned(&self) -> (u64, Vec<Learned>) {
        std::mem::take(&mut *self.learned.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The DWARF units of a module made from the files `provenance`
    /// describes, made from `secs` unless another resolver already made
    /// them (never shared without a provenance).
    pub fn dwarf(&self, provenance: Option<&[u8]>, secs: DwarfSections) -> Arc<Units> {
        let lock = || self.dwarf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(units) = provenance.and_then(|k| lock().get(k).and_then(Weak::upgrade)) {
            return units;
        }
        // Made unlocked (it reads .debug_aranges): the other threads go on
        // with other files; should two make one at once, the first kept wins.
        let units = Arc::new(Units::new(secs));
        let Some(key) = provenance else { return units };
        let mut map = lock();
        if let Some(kept) = map.get(key).and_then(Weak::upgrade) {
            return kept;
        }
        // Entries of DWARF no longer held go before the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key.to_vec(), Arc::downgrade(&units));
        units
    }

    /// How many files' DWARF units are held (for tests).
    #[cfg(test)]
    pub fn dwarf_held(&self) -> usize {
        self.dwarf.lock().unwrap().values().filter(|w| w.strong_count() > 0).count()
    }
}

/// A DWARF unit a line will use for the first time.
#[derive(Clone)]
pub struct ColdTarget {
    /// The file's DWARF units.
    pub units: Arc<Units>,
    /// An address in the unit.
    pub vaddr: u64,
    /// The unit.
    pub unit: usize,
}

/// Parse the units of `targets` for their first use with up to `threads`
/// threads, this one among them, so that a line needing many units waits
/// for the slowest parse rather than for their sum. Each unit is parsed as
/// answering its address parses it (its context and line program, and with
/// `inlined` its functions), and so only once: the answers that follow find
/// it ready. Returns how many units were aimed at (0: too few to bother).
pub fn warm_units(mut targets: Vec<ColdTarget>, threads: usize, inlined: bool) -> usize {
    // Largest first: each thread takes the next unit when it is done, so
    // the longest parses start at once and the short ones fill in after
    // (one thread taking the two largest in turn took as long as no
    // threads at all). A unit's targets end up side by side, to keep one.
    targets.sort_by_key(|t| {
        (std::cmp::Reverse(t.units.unit_code_bytes(t.unit)), Arc::as_ptr(&t.units), t.unit)
    });
    targets.dedup_by_key(|t| (Arc::as_ptr(&t.units), t.unit));
    if targets.len() < 2 || threads < 2 {
        return 0;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        while let Some(t) = targets.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let Some(ctx) = t.units.context_for(t.vaddr) else { continue };
            if !inlined {
                let _ = ctx.find_location(t.vaddr);
            } else if let Ok(mut frames) = ctx.find_frames(t.vaddr).skip_all_loads() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Resolution;
    use crate::store::StoreDir;

    /// Modules of one file share a sorted symbol table only when they took
    /// their symbols from the same files: one that took a debug file's
    /// (another provenance) keeps its own.
    #[test]
    fn symbol_tables_are_shared_by_provenance() {
        let shared = Shared::default();
        let own = |p: &[u8]| {
            let mine = Arc::new(OnceLock::new());
            (shared.symbols(p, mine.clone()), mine)
        };
        let (a, a_mine) = own(b"file 1:2, 10 bytes: 5 symbols, DWARF");
        assert!(Arc::ptr_eq(&a, &a_mine));
        let (b, _) = own(b"file 1:2, 10 bytes: 5 symbols, DWARF");
        assert!(Arc::ptr_eq(&a, &b), "the same files: shared");
        let (c, c_mine) =
            own(b"file 1:2, 10 bytes: 5 symbols, DWARF; debug file ab: 9 symbols, DWARF");
        assert!(Arc::ptr_eq(&c, &c_mine), "a debug file's symbols: not shared");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    /// DWARF units are shared as symbol tables are, by provenance: a
    /// module that took a debug file's DWARF does not hand it to another
    /// module of the same file that found another debug file or none.
    #[test]
    fn dwarf_units_are_shared_by_provenance() {
        let shared = Shared::default();
        let exe = std::env::current_exe().unwrap();
        let secs =
            || crate::elf::ElfFile::open(&exe).unwrap().dwarf.expect("a test binary has DWARF");
        let plain: &[u8] =
            b"file 1:2, 10 bytes: 5 symbols, no DWARF; debug file ab: 9 symbols, DWARF";
        let other: &[u8] =
            b"file 1:2, 10 bytes: 5 symbols, no DWARF; debug file cd: 9 symbols, DWARF";
        let a = shared.dwarf(Some(plain), secs());
        assert!(Arc::ptr_eq(&a, &shared.dwarf(Some(plain), secs())), "the same files: shared");
        let c = shared.dwarf(Some(other), secs());
        assert!(!Arc::ptr_eq(&a, &c), "another debug file: not shared");
        let d = shared.dwarf(None, secs());
        assert!(!Arc::ptr_eq(&a, &d) && !Arc::ptr_eq(&c, &d), "no provenance: never shared");
        assert_eq!(shared.dwarf_held(), 2);
    }

    /// A cache file of answers is loaded (its CRC checked) once for all
    /// the resolvers of a stream, the others getting readers of the same
    /// file; a file not usable is remembered as such too.
    #[test]
    fn cache_files_are_loaded_once_per_stream() {
        let dir = std::env::temp_dir().join(format!("symres-shared-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (id, prov) = (vec![9u8; 20], b"p".to_vec());
        let r = Resolution { sym: Some("f".into()), sym_offset: Some(0), ..Default::default() };
        let points = vec![(0x100, 0, Ok(Arc::new(r)))];
        let learned =
            Learned { build_id: id.clone(), provenance: prov.clone(), points, syms: Vec::new() };
        crate::cache::write(&dir, crate::cache::DEFAULT_SIZE, &mut [learned]);
        let store = StoreDir::open(&dir).unwrap();
        let shared = Shared::default();
        let loads = std::cell::Cell::new(0);
        let load = |p: &'static [u8]| {
            let (loads, store, id) = (&loads, &store, &id);
            move || {
                loads.set(loads.get() + 1);
                crate::cache::load(store, id, p)
            }
        };
        let mut a = shared.cache_file(&id, b"p", load(b"p")).unwrap();
        let mut b = shared.clone().cache_file(&id, b"p", load(b"p")).unwrap();
        assert_eq!(loads.get(), 1);
        for c in [&mut a, &mut b] {
            let mut o = Vec::new();
            assert_eq!(c.lookup(0x100, 0, &mut o), Some(Ok(())));
            assert_eq!(o, br#""sym":"f","sym_offset":"0x0""#);
        }
        // Made from other files: not usable, and not loaded again.
        assert!(shared.cache_file(&id, b"q", load(b"q")).is_none());
        assert!(shared.cache_file(&id, b"q", load(b"q")).is_none());
        assert_eq!(loads.get(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
