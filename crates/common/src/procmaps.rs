//! Turning a process's code addresses into (module, file offset, build id)
//! while the process is alive, so frames stay resolvable after it exits.
//!
//! /proc/PID/maps reads empty once a process is a zombie, so the last good
//! copy is kept and used from then on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::text::hex;

#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub exec: bool,
    pub path: String,
}

/// Parse the text of /proc/PID/maps. Anonymous and special mappings are kept
/// (with their bracketed names or empty paths) so callers can tell "unmapped"
/// from "mapped but not a file".
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off)) = (it.next(), it.next(), it.next()) else { continue };
        let _dev = it.next();
        let _inode = it.next();
        let path = it.next().unwrap_or("").trim_start().to_string();
        let Some((s, e)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end), Ok(file_offset)) =
            (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(off, 16))
        else {
            continue;
        };
        out.push(Mapping { start, end, file_offset, exec: perms.as_bytes().get(2) == Some(&b'x'), path });
    }
    out
}

/// Cached maps of the processes seen in a stream, plus build ids per file.
#[derive(Default)]
pub struct MapsCache {
    procs: HashMap<u32, Vec<Mapping>>,
    build_ids: HashMap<String, Option<String>>,
}

impl MapsCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn refresh(&mut self, pid: u32) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            let maps = parse_maps(&text);
            if !maps.is_empty() {
                self.procs.insert(pid, maps);
            }
        }
    }

    /// Read a process's maps now (e.g. right after attaching), so they are
    /// known even if it exits before its first event is formatted.
    pub fn prime(&mut self, pid: u32) {
        self.refresh(pid);
    }

    /// The executable file mapping containing `addr`, refreshing the cached
    /// maps once when it is not found (the process may have mapped it since).
    pub fn lookup(&mut self, pid: u32, addr: u64) -> Option<Mapping> {
        let find = |maps: &Vec<Mapping>| maps.iter().find(|m| m.start <= addr && addr < m.end).cloned();
        if let Some(m) = self.procs.get(&pid).and_then(find) {
            return Some(m);
        }
        self.refresh(pid);
        self.procs.get(&pid).and_then(find)
    }

    /// The GNU build id of a mapped file, as lower-case hex.
    pub fn build_id(&mut self, pid: u32, path: &str) -> Option<String> {
        if let Some(b) = self.build_ids.get(path) {
            return b.clone();
        }
        // Through the process's root, so files of other mount namespaces
        // (containers) are found.
        let rooted = PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
        let id = read_build_id(&rooted).or_else(|| read_build_id(Path::new(path)));
        self.build_ids.insert(path.to_string(), id.clone());
        id
    }

    /// A frame as our tools print it: `addr`, and when the address is in a
    /// file mapping, `module`, `offset` (file offset) and `build_id`.
    /// Returns None when `addr` is not in an executable mapping.
    pub fn frame(&mut self, pid: u32, addr: u64) -> Option<Value> {
        let m = self.lookup(pid, addr)?;
        if !m.exec {
            return None;
        }
        if !m.path.starts_with('/') {
            return Some(json!({ "addr": hex(addr) }));
        }
        let offset = addr - m.start + m.file_offset;
        let path = m.path.trim_end_matches(" (deleted)").to_string();
        let mut f = json!({ "addr": hex(addr), "module": path, "offset": hex(offset) });
        if let Some(id) = self.build_id(pid, &path) {
            f["build_id"] = json!(id);
        }
        Some(f)
    }
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
            if ntype == NT_GNU_BUILD_ID && notes.get(name_start..name_start + namesz) == Some(b"GNU\0") {
                return Some(notes[desc_start..desc_start + descsz].iter().map(|b| format!("{b:02x}")).collect());
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
    fn parses_maps_lines() {
        let text = "55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /usr/bin/leaker\n\
                    55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 123 /usr/bin/leaker\n\
                    7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert!(!m[0].exec && m[1].exec);
        assert_eq!(m[1].file_offset, 0x1000);
        assert_eq!(m[1].path, "/usr/bin/leaker");
        assert_eq!(m[2].path, "[stack]");
        assert_eq!(m[3].path, "");
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
        // Rust test binaries built by cargo carry a build id.
        assert_eq!(f["build_id"].as_str().map(str::len), read_build_id(&exe).map(|s| s.len()));
        assert!(cache.frame(pid, 8).is_none(), "page zero is unmapped");
    }
}
