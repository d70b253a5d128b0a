//! What the resolvers of one stream share: the parsed DWARF of each file,
//! and the parsing of a line's cold DWARF units on several threads.
//!
//! Each resolving thread has its own caches of answers (no locks on the
//! hot path), but parsing a large binary's DWARF is most of what a new
//! address costs, so that is done once per file for all of them.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustc_hash::FxHashMap;

use crate::cache::Learned;
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
    /// its DWARF go).
    dwarf: Arc<Mutex<FxHashMap<FileKey, Weak<Units>>>>,
    /// What the resolvers learned for the cache, and how many frames they
    /// answered from it, once each is done.
    learned: Arc<Mutex<(u64, Vec<Learned>)>>,
    /// The sorted symbol tables of the files loaded so far (with their
    /// demangled names), as long as a module of some resolver holds them.
    symbols: Arc<Mutex<FxHashMap<FileKey, Weak<OnceLock<Sorted>>>>>,
}

impl Shared {
    /// The sorted symbol table of the file `key`: another resolver's when
    /// one holds it, else `mine` (the table of the caller's module, which
    /// the others will then share).
    pub fn symbols(&self, key: FileKey, mine: Arc<OnceLock<Sorted>>) -> Arc<OnceLock<Sorted>> {
        let mut map = self.symbols.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = map.get(&key).and_then(Weak::upgrade) {
            return kept;
        }
        // Entries of tables no longer held go before the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&mine));
        mine
    }

    /// Add what a module learned (`AddrResolver::finish_cache`).
    pub fn learned(&self, mut l: Learned) {
        let mut all = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        // What a stream keeps for the cache is bounded (a long run over
        // many modules meets new addresses without end).
        let kept: usize = all.1.iter().map(|l| l.points.len()).sum();
        l.points.truncate(crate::cache::MAX_LEARNED.saturating_sub(kept));
        if !l.points.is_empty() {
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

    /// The DWARF units of the file `key`, made from `secs` unless another
    /// resolver already made them.
    pub fn dwarf(&self, key: Option<FileKey>, secs: DwarfSections) -> Arc<Units> {
        let lock = || self.dwarf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(units) = key.and_then(|k| lock().get(&k).and_then(Weak::upgrade)) {
            return units;
        }
        // Made unlocked (it reads .debug_aranges): the other threads go on
        // with other files; should two make one at once, the first kept wins.
        let units = Arc::new(Units::new(secs));
        let Some(key) = key else { return units };
        let mut map = lock();
        if let Some(kept) = map.get(&key).and_then(Weak::upgrade) {
            return kept;
        }
        // Entries of DWARF no longer held go before the map doubles.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&units));
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
