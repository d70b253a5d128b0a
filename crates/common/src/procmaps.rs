//! Turning a process's code addresses into (module, file offset, build id)
//! while the process is alive, so frames stay resolvable after it exits.
//!
//! /proc/PID/maps reads empty once a process is a zombie, so the last good
//! copy is kept and used from then on. The parser is the one symres and the
//! allocator detection use too: maps lines hold file names, which may have
//! spaces and need not be UTF-8, and one careful parser beats three quick ones.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::text::{bytes_to_string, hex};

/// One line of /proc/PID/maps. Paths are kept as bytes (file names need not
/// be UTF-8, and the path is used to open the file again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Device (major, minor) and inode of the file: the file really mapped
    /// (for overlayfs, the layer's file), so equal for every container of
    /// an image.
    pub dev: (u32, u32),
    pub inode: u64,
    pub exec: bool,
    /// `None` for anonymous memory; `[heap]`, `[vdso]` and the like kept, so
    /// callers can tell "unmapped" from "mapped but not a file".
    pub path: Option<PathBuf>,
    /// The kernel marked the file " (deleted)".
    pub deleted: bool,
}

pub fn read_maps(pid: u32) -> std::io::Result<Vec<MapEntry>> {
    let data = std::fs::read(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&data))
}

/// Parse maps text; malformed lines are skipped. Sorted by start address.
pub fn parse_maps(data: &[u8]) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = data.split(|&b| b == b'\n').filter_map(parse_line).collect();
    out.sort_by_key(|e| e.start);
    out
}

fn parse_line(line: &[u8]) -> Option<MapEntry> {
    // start-end perms offset dev inode   path (path may contain spaces)
    let mut rest = line;
    let mut field = || -> Option<&[u8]> {
        let s = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[s..];
        let e = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(e);
        rest = r;
        Some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = hex_field(field()?)?;
    let dev = field()?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let dev = (hex_field(&dev[..colon])? as u32, hex_field(&dev[colon + 1..])? as u32);
    let inode = std::str::from_utf8(field()?).ok()?.parse().ok()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex_field(&range[..dash])?;
    let end = hex_field(&range[dash + 1..])?;
    if end <= start {
        return None;
    }
    let s = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let mut path = &rest[s..];
    let mut deleted = false;
    if let Some(p) = path.strip_suffix(b" (deleted)") {
        path = p;
        deleted = true;
    }
    let path = (!path.is_empty()).then(|| PathBuf::from(OsString::from_vec(path.to_vec())));
    Some(MapEntry {
        start,
        end,
        offset,
        dev,
        inode,
        exec: perms.get(2) == Some(&b'x'),
        path,
        deleted,
    })
}

fn hex_field(b: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// `path` as process `pid` sees it, through /proc/PID/root: files of other
/// mount namespaces (containers) are not at the same path in ours.
pub fn under_root(pid: u32, path: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/{pid}/root"));
    p.push(path.strip_prefix("/").unwrap_or(path));
    p
}

/// Index of the mapping containing `addr` in sorted entries.
pub fn find(entries: &[MapEntry], addr: u64) -> Option<usize> {
    let i = entries.partition_point(|e| e.start <= addr).checked_sub(1)?;
    (addr < entries[i].end).then_some(i)
}

/// Field `name` of /proc/`pid`/status (`pid` a number or "self"), its
/// value trimmed.
pub fn status_field(pid: &str, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    Some(value.trim().to_string())
}

/// Whether process (or thread) `pid` exists: its /proc entry does (a
/// zombie's too, until it is reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Mappings recorded when stacks were taken, which /proc/PID/maps may no
/// longer (or not yet) have: the process exited before its maps were read
/// (they read empty from then on). Implemented by crate::captured (what BPF
/// recorded); a trait so that this module does not depend on BPF maps.
pub trait MappingSource {
    /// The executable mapping containing `addr` in process `pid`.
    fn mapping(&mut self, pid: u32, addr: u64) -> Option<&MapEntry>;
}

/// A file's build id, by path and identity: the same path names different
/// files in different containers.
type BuildIdKey = (PathBuf, (u32, u32), u64);

/// Cached maps of the processes seen in a stream, plus build ids per file.
#[derive(Default)]
pub struct MapsCache {
    procs: HashMap<u32, ProcMaps>,
    build_ids: HashMap<BuildIdKey, Option<String>>,
    /// Asked first (see [`MapsCache::lookup`]).
    fallback: Option<Box<dyn MappingSource>>,
    /// How many processes make the next sweep of those that are gone (0:
    /// MAX_PROCS): twice what a sweep left, so that a system with more
    /// live processes than that is not swept at each new one.
    next_sweep: usize,
}

struct ProcMaps {
    entries: Vec<MapEntry>,
    /// When a re-read last found nothing new (or nothing at all: the process
    /// is gone). A stack walked through code without frame pointers ends in
    /// garbage addresses that miss every time; re-reading the maps for each
    /// would cost a file read per event, so misses within REREAD_AFTER of a
    /// fruitless read are taken as unmapped.
    settled: Option<Instant>,
}

/// How long a fruitless re-read of a process's maps stands. A library
/// mapped meanwhile is seen at the first miss after that.
const REREAD_AFTER: Duration = Duration::from_millis(100);

/// Processes whose maps are kept before those that are gone are dropped
/// (a system-wide stream meets every process that runs). A gone process's
/// last copy is kept for its events still queued, which come before those
/// of thousands of processes after it.
const MAX_PROCS: usize = 4096;

/// Files whose build id is kept before the record starts over.
const MAX_BUILD_IDS: usize = 16384;

impl MapsCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask `source` first for the mappings of addresses (see
    /// [`MapsCache::lookup`]).
    pub fn with_fallback(mut self, source: Box<dyn MappingSource>) -> Self {
        self.fallback = Some(source);
        self
    }

    fn refresh(&mut self, pid: u32) {
        let now = Instant::now();
        if !self.procs.contains_key(&pid) && self.procs.len() >= self.next_sweep.max(MAX_PROCS) {
            self.procs.retain(|&pid, _| process_exists(pid));
            self.next_sweep = 2 * self.procs.len();
        }
        match read_maps(pid) {
            Ok(entries) if !entries.is_empty() => {
                let same = self.procs.get(&pid).is_some_and(|p| p.entries == entries);
                self.procs.insert(pid, ProcMaps { entries, settled: same.then_some(now) });
            }
            // Gone (or a zombie, whose maps read empty): keep the last copy,
            // or remember that there is none, so that the process's next
            // events do not each try again.
            _ => {
                self.procs
                    .entry(pid)
                    .or_insert_with(|| ProcMaps { entries: Vec::new(), settled: None })
                    .settled = Some(now)
            }
        }
    }

    /// Read a process's maps now (e.g. right after attaching), so they are
    /// known even if it exits before its first event is formatted.
    pub fn prime(&mut self, pid: u32) {
        self.refresh(pid);
    }

    /// The mapping containing `addr`, re-reading the maps when it is not
    /// found (the process may have mapped it since), unless a re-read found
    /// nothing new within REREAD_AFTER.
    ///
    /// A mapping recorded with the stack (see [`MappingSource`]) comes
    /// first: it is what the address was in when the stack was taken, where
    /// a copy of /proc/PID/maps may have been read before (a library half
    /// mapped by ld.so reads as a non-executable range) or after (the
    /// process exited) and is kept only for want of better.
    pub fn lookup(&mut self, pid: u32, addr: u64) -> Option<&MapEntry> {
        let recorded = self.recorded(pid, addr).map(|m| m.path.is_some());
        if recorded == Some(true) {
            return self.recorded(pid, addr);
        }
        if let Some(i) = self.index_of(pid, addr) {
            return self.procs.get(&pid)?.entries.get(i);
        }
        // Recorded without its path (too long, or the path map full).
        self.recorded(pid, addr)
    }

    fn recorded(&mut self, pid: u32, addr: u64) -> Option<&MapEntry> {
        self.fallback.as_mut()?.mapping(pid, addr)
    }

    fn index_of(&mut self, pid: u32, addr: u64) -> Option<usize> {
        if let Some(p) = self.procs.get(&pid) {
            if let Some(i) = find(&p.entries, addr) {
                return Some(i);
            }
            if p.settled.is_some_and(|t| t.elapsed() < REREAD_AFTER) {
                return None;
            }
        }
        self.refresh(pid);
        find(&self.procs.get(&pid)?.entries, addr)
    }

    /// A frame as our tools print it: `addr`, and when the address is in a
    /// file mapping, `module` (the path, non-UTF-8 bytes written by the
    /// crate::text rule), `offset` (file offset) and `build_id`.
    /// Returns None when `addr` is not in an executable mapping.
    pub fn frame(&mut self, pid: u32, addr: u64) -> Option<Value> {
        // A copy, so the mapping is not borrowed while the build-id cache
        // is updated.
        let m = self.lookup(pid, addr)?.clone();
        if !m.exec {
            return None;
        }
        let Some(path) = m.path.as_deref().filter(|p| p.is_absolute()) else {
            return Some(json!({ "addr": hex(addr) }));
        };
        let offset = (addr - m.start).wrapping_add(m.offset);
        let module = bytes_to_string(path.as_os_str().as_encoded_bytes());
        let mut f = json!({ "addr": hex(addr), "module": module, "offset": hex(offset) });
        if let Some(id) = cached_build_id(&mut self.build_ids, pid, &m, path) {
            f["build_id"] = json!(id);
        }
        Some(f)
    }
}

/// A file's build id, read once per file: through the process's root while
/// it exists, else at the same path in ours when that is the same file
/// (after a container exits, the path in ours is usually another file).
fn cached_build_id(
    cache: &mut HashMap<BuildIdKey, Option<String>>,
    pid: u32,
    m: &MapEntry,
    path: &Path,
) -> Option<String> {
    let key = (path.to_path_buf(), m.dev, m.inode);
    if let Some(b) = cache.get(&key) {
        return b.clone();
    }
    if cache.len() >= MAX_BUILD_IDS {
        cache.clear();
    }
    let id = read_build_id(&under_root(pid, path))
        .or_else(|| same_file(path, m).then(|| read_build_id(path)).flatten());
    cache.insert(key, id.clone());
    id
}

/// Whether `path` (in our mount namespace) is the file `m` maps.
fn same_file(path: &Path, m: &MapEntry) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else { return false };
    let dev = md.dev();
    md.ino() == m.inode && (libc::major(dev), libc::minor(dev)) == m.dev
}

/// Read the NT_GNU_BUILD_ID note of an ELF file, reading only the headers
/// and note segments.
pub fn read_build_id(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr).ok()?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None; // only 64-bit little-endian here
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54) as u64;
    let phnum = u16_at(&ehdr, 56) as u64;
    // The size of an Elf64_Phdr; anything else is not a file we can read,
    // and trusting a larger one would size the buffer below by it.
    if phentsize != 56 || phnum > 4096 {
        return None;
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut phdrs).ok()?;
    for i in 0..phnum as usize {
        let ph = &phdrs[i * phentsize as usize..];
        const PT_NOTE: u32 = 4;
        if u32_at(ph, 0) != PT_NOTE {
            continue;
        }
        let (off, size) = (u64_at(ph, 8), u64_at(ph, 32));
        if size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut notes).ok()?;
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = u32_at(&notes, p) as usize;
            let descsz = u32_at(&notes, p + 4) as usize;
            let ntype = u32_at(&notes, p + 8);
            let name_start = p + 12;
            let desc_start = name_start + namesz.div_ceil(4) * 4;
            let next = desc_start + descsz.div_ceil(4) * 4;
            if next > notes.len() {
                break;
            }
            const NT_GNU_BUILD_ID: u32 = 3;
            if ntype == NT_GNU_BUILD_ID
                && notes.get(name_start..name_start + namesz) == Some(b"GNU\0")
            {
                return Some(crate::text::hex_bytes(&notes[desc_start..desc_start + descsz]));
            }
            p = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_maps_is_remembered_and_gone_ones_make_room() {
        let mut c = MapsCache::new();
        // No such process (above any pid_max): a miss is remembered, not
        // read again at once.
        let ghost = u32::MAX - 1;
        assert!(c.lookup(ghost, 0x1000).is_none());
        assert!(c.procs.get(&ghost).is_some_and(|p| p.entries.is_empty() && p.settled.is_some()));
        // Full of processes that are gone: they go; this one's are read.
        let me = std::process::id();
        for pid in (u32::MAX - MAX_PROCS as u32)..u32::MAX {
            c.procs.insert(pid, ProcMaps { entries: Vec::new(), settled: None });
        }
        assert!(c.procs.len() >= MAX_PROCS);
        let code = a_process_without_maps_is_remembered_and_gone_ones_make_room as *const ()
            as usize as u64;
        assert!(c.lookup(me, code).is_some_and(|m| m.exec));
        assert_eq!(c.procs.len(), 1, "only the live process is kept");
    }

    #[test]
    fn parses_paths_with_spaces_deleted_and_anonymous() {
        let text = b"55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234    /usr/bin/my prog\n\
55d0c0a01000-55d0c0a05000 r-xp 00001000 08:01 1234    /usr/bin/my prog\n\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
7f0000002000-7f0000003000 r-xp 00002000 08:01 99 /tmp/old (deleted)\n\
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
garbage\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].path.as_deref(), Some(Path::new("[stack]")));
        assert!(!m[1].exec && m[2].exec);
        assert_eq!(m[2].path.as_deref(), Some(Path::new("/usr/bin/my prog")));
        assert_eq!(m[2].offset, 0x1000);
        assert_eq!(m[3].path, None);
        assert!(m[4].deleted);
        assert_eq!(m[4].path.as_deref(), Some(Path::new("/tmp/old")));
        assert_eq!(find(&m, 0x55d0c0a01234), Some(2));
        assert_eq!(find(&m, 0x55d0c0a05000), None);
        assert_eq!(find(&m, 0x7f0000002fff), Some(4));
        assert_eq!(find(&m, 1), None);
    }

    /// Mappings as recorded with the stacks, for the tests.
    struct Recorded(Vec<MapEntry>);

    impl MappingSource for Recorded {
        fn mapping(&mut self, _pid: u32, addr: u64) -> Option<&MapEntry> {
            self.0.get(find(&self.0, addr)?)
        }
    }

    fn entry(start: u64, exec: bool, path: Option<&str>) -> MapEntry {
        MapEntry {
            start,
            end: start + 0x1000,
            offset: 0x2000,
            dev: (8, 1),
            inode: 7,
            exec,
            path: path.map(PathBuf::from),
            deleted: false,
        }
    }

    #[test]
    fn recorded_mappings_come_before_a_stale_copy_of_the_maps() {
        let ghost = u32::MAX - 1; // no such process: its maps never read again
        let recorded = vec![entry(0x1000, true, Some("/lib/a.so")), entry(0x5000, true, None)];
        let mut c = MapsCache::new().with_fallback(Box::new(Recorded(recorded)));
        // The copy was read while ld.so had the range mapped read-only.
        let stale =
            vec![entry(0x1000, false, Some("/lib/a.so")), entry(0x5000, true, Some("/lib/b.so"))];
        c.procs.insert(ghost, ProcMaps { entries: stale, settled: Some(Instant::now()) });
        let f = c.frame(ghost, 0x1010).expect("recorded executable");
        assert_eq!(f["module"], "/lib/a.so");
        assert_eq!(f["offset"], "0x2010");
        // Recorded without a path: the copy's path is better than none.
        assert_eq!(c.frame(ghost, 0x5010).unwrap()["module"], "/lib/b.so");
        assert!(c.lookup(ghost, 0x9000).is_none());
    }

    #[test]
    fn frames_of_our_own_code() {
        let mut cache = MapsCache::new();
        let pid = std::process::id();
        let addr = frames_of_our_own_code as fn() as usize as u64;
        let f = cache.frame(pid, addr).expect("own code is mapped executable");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(f["module"], exe.display().to_string());
        assert!(f["offset"].as_str().unwrap().starts_with("0x"));
        // Rust test binaries linked by cargo here carry a 20-byte GNU build id.
        assert_eq!(f["build_id"].as_str().map(str::len), Some(40), "{f}");
        assert!(cache.frame(pid, 8).is_none(), "page zero is unmapped");
    }
}
