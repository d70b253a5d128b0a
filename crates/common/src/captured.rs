//! The mappings BPF recorded when it first captured each stack
//! (bpf/mappings.bpf.h), as a [`MappingSource`] for [`MapsCache`]: what
//! places a frame once the process has exited and /proc/PID/maps reads
//! empty.
//!
//! Why not only /proc: it is read after the fact, when the frame is
//! formatted, and a process that exits first (a short command, a target
//! that ends mid-trace) takes its maps with it. The kernel side sees the
//! mappings while the stack is taken, so nothing is left to race.
//!
//! [`MapsCache`]: crate::procmaps::MapsCache

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use aya::Ebpf;

use crate::procmaps::{MapEntry, MappingSource};
use crate::{bpf, debug, Result};

/// bpf/mappings.h, mirrored by bindgen (crates/common/build.rs).
#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/mappings.rs"));
}

// bindgen generated these from bpf/mappings.h as #[repr(C)] structs of
// integers and integer arrays only, with explicit padding fields.
crate::bpf_pod!(
    unsafe sys::mappings_vma_key,
    sys::mappings_vma,
    sys::mappings_file_key,
    sys::mappings_path,
);

/// The recorded mappings of the processes of a run.
pub struct Captured {
    vmas: BpfHashMap<MapData, sys::mappings_vma_key, sys::mappings_vma>,
    paths: BpfHashMap<MapData, sys::mappings_file_key, sys::mappings_path>,
    gen: Array<MapData, u64>,
    /// The kernel's generation when `by_pid` was built: it is built again
    /// only when something was recorded since.
    seen_gen: Option<u64>,
    by_pid: HashMap<u32, Vec<MapEntry>>,
    /// Paths found, by file (a file's path never changes in the map).
    files: HashMap<(u64, u32), PathBuf>,
}

impl Captured {
    /// Take the maps of bpf/mappings.bpf.h out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Captured {
            vmas: bpf::take_map(ebpf, "mappings_vmas")?,
            paths: bpf::take_map(ebpf, "mappings_paths")?,
            gen: bpf::take_map(ebpf, "mappings_gen")?,
            seen_gen: None,
            by_pid: HashMap::new(),
            files: HashMap::new(),
        })
    }

    /// Read the recorded mappings again if anything was recorded since.
    fn refresh(&mut self) {
        let gen = match self.gen.get(&0, 0) {
            Ok(g) => g,
            Err(e) => {
                debug!("reading mappings_gen: {e}");
                return;
            }
        };
        if self.seen_gen == Some(gen) {
            return;
        }
        let mut recorded = Vec::new();
        for item in self.vmas.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                // Evicted (LRU) between "next key" and lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => {
                    debug!("reading mappings_vmas: {e}");
                    break;
                }
            };
            recorded.push((k, v));
        }
        let mut by_pid: HashMap<u32, Vec<MapEntry>> = HashMap::new();
        for (k, v) in recorded {
            let path = self.path_of(v.ino, v.dev);
            by_pid.entry(k.pid).or_default().push(MapEntry {
                start: k.start,
                end: v.end,
                offset: v.pgoff_bytes,
                dev: (v.dev >> 20, v.dev & 0xf_ffff),
                inode: v.ino,
                exec: true,
                path,
                deleted: false,
            });
        }
        for entries in by_pid.values_mut() {
            entries.sort_by_key(|e| e.start);
        }
        debug!(
            "recorded mappings: {} in {} process(es), generation {gen}",
            by_pid.values().map(Vec::len).sum::<usize>(),
            by_pid.len()
        );
        self.by_pid = by_pid;
        self.seen_gen = Some(gen);
    }

    /// The path recorded for a file, if any (and not cut short).
    fn path_of(&mut self, ino: u64, dev: u32) -> Option<PathBuf> {
        if let Some(p) = self.files.get(&(ino, dev)) {
            return Some(p.clone());
        }
        let key = sys::mappings_file_key { ino, dev, pad: 0 };
        let p = self.paths.get(&key, 0).ok()?;
        let path = path_bytes(&p)?;
        let path = PathBuf::from(OsString::from_vec(path.to_vec()));
        self.files.insert((ino, dev), path.clone());
        Some(path)
    }
}

/// The bytes of a recorded path; None when it was cut short or is empty.
fn path_bytes(p: &sys::mappings_path) -> Option<&[u8]> {
    let start = p.start as usize;
    let end = sys::MAPPINGS_PATH_MAX as usize;
    if p.cut != 0 || start >= end {
        return None;
    }
    p.buf.get(start..end)
}

impl MappingSource for Captured {
    fn mapping(&mut self, pid: u32, addr: u64) -> Option<&MapEntry> {
        let known = self.by_pid.get(&pid).is_some_and(|e| crate::procmaps::find(e, addr).is_some());
        if !known {
            self.refresh();
        }
        let entries = self.by_pid.get(&pid)?;
        entries.get(crate::procmaps::find(entries, addr)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_paths_are_the_tail_of_the_buffer() {
        let mut p = sys::mappings_path { start: 0, cut: 0, buf: [0; 4096 + 256] };
        let s = b"/usr/lib/lib c.so";
        let start = 4096 - s.len();
        p.buf[start..4096].copy_from_slice(s);
        p.start = start as u32;
        assert_eq!(path_bytes(&p), Some(&s[..]));
        p.cut = 1;
        assert_eq!(path_bytes(&p), None, "a cut path names no file");
        p.cut = 0;
        p.start = 4096;
        assert_eq!(path_bytes(&p), None, "empty");
    }
}
