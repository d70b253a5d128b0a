//! /proc/PID/maps, parsed once per process and searched by binary search.
//!
//! Paths are kept as bytes: file names need not be UTF-8, and the path is
//! used to open the file again (through /proc/PID/root).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub inode: u64,
    /// `None` for anonymous memory; `[heap]`, `[vdso]` and the like kept.
    pub path: Option<PathBuf>,
    /// The kernel marked the file " (deleted)".
    pub deleted: bool,
}

pub fn read(pid: u32) -> std::io::Result<Vec<MapEntry>> {
    let data = std::fs::read(format!("/proc/{pid}/maps"))?;
    Ok(parse(&data))
}

/// Parse maps text; malformed lines are skipped. Sorted by start address.
pub fn parse(data: &[u8]) -> Vec<MapEntry> {
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
    let _perms = field()?;
    let offset = hex(field()?)?;
    let _dev = field()?;
    let inode = std::str::from_utf8(field()?).ok()?.parse().ok()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
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
    Some(MapEntry { start, end, offset, inode, path, deleted })
}

fn hex(b: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Index of the mapping containing `addr`.
pub fn find(entries: &[MapEntry], addr: u64) -> Option<usize> {
    let i = entries.partition_point(|e| e.start <= addr).checked_sub(1)?;
    (addr < entries[i].end).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_with_spaces_deleted_and_anonymous() {
        let text = b"55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234    /usr/bin/my prog\n\
55d0c0a01000-55d0c0a05000 r-xp 00001000 08:01 1234    /usr/bin/my prog\n\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
7f0000002000-7f0000003000 r-xp 00002000 08:01 99 /tmp/old (deleted)\n\
garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].path.as_deref(), Some(std::path::Path::new("/usr/bin/my prog")));
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[2].path, None);
        assert!(m[3].deleted);
        assert_eq!(m[3].path.as_deref(), Some(std::path::Path::new("/tmp/old")));
        assert_eq!(find(&m, 0x55d0c0a01234), Some(1));
        assert_eq!(find(&m, 0x55d0c0a05000), None);
        assert_eq!(find(&m, 0x7f0000002fff), Some(3));
        assert_eq!(find(&m, 1), None);
    }
}
