//! Separate debug files, found the way gdb finds them: by build id under
//! each debug directory, then by .gnu_debuglink (checking its CRC).

use std::path::{Path, PathBuf};

use super::module::open_elf;
use crate::elf::{self, ElfFile};
use crate::files;
use crate::log;

const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// Where debug files are looked for: the user's directories, then
/// /usr/lib/debug.
#[derive(Debug, Clone)]
pub struct DebugDirs {
    /// The user's (`--debug-dir`), searched first.
    user: Vec<PathBuf>,
}

impl DebugDirs {
    pub fn new(user: Vec<PathBuf>) -> DebugDirs {
        DebugDirs { user }
    }

    fn all(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.user.iter().cloned().chain(std::iter::once(PathBuf::from(SYSTEM_DEBUG_DIR)))
    }

    /// Where a debug file with build id `id` would be, in search order.
    pub fn build_id_paths(&self, id: &[u8]) -> Vec<PathBuf> {
        if id.len() < 2 {
            return Vec::new();
        }
        let hex = leakd_common::text::hex_bytes(id);
        self.all()
            .map(|d| d.join(".build-id").join(&hex[..2]).join(format!("{}.debug", &hex[2..])))
            .collect()
    }

    /// The separate debug file of a stripped binary, searched the way gdb
    /// does: by build id, then by .gnu_debuglink (checking its CRC).
    pub fn find_debug_file(&self, elf: &ElfFile, nominal: &Path, actual: &Path) -> Option<ElfFile> {
        if let Some(id) = &elf.build_id {
            for p in self.build_id_paths(id) {
                if !p.exists() {
                    continue;
                }
                match open_elf(&p) {
                    Ok(d) if d.build_id.as_deref() == Some(id.as_slice()) => return Some(d),
                    Ok(_) => log::once(1, || {
                        format!("{}: build id does not match, ignored", p.display())
                    }),
                    Err(_) => {}
                }
            }
        }
        let (name, crc) = elf.debuglink.as_ref()?;
        let mut paths = Vec::new();
        for base in [nominal, actual] {
            if let Some(dir) = base.parent() {
                paths.push(dir.join(name));
                paths.push(dir.join(".debug").join(name));
                for d in self.all() {
                    paths.push(d.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
                }
            }
        }
        for d in &self.user {
            paths.push(d.join(name));
        }
        for p in paths {
            if p == actual || p == nominal {
                continue;
            }
            // Beside a process's module: resolved inside its root.
            let Ok(data) = files::read_regular(&p) else { continue };
            if elf::crc32(&data) != *crc {
                log::once(1, || {
                    format!("{}: CRC does not match .gnu_debuglink, ignored", p.display())
                });
                continue;
            }
            match std::panic::catch_unwind(move || ElfFile::parse_owned(data)) {
                Ok(Ok(d)) => {
                    log::once(1, || format!("using debug file {}", p.display()));
                    return Some(d);
                }
                _ => log::once(1, || format!("{}: unusable debug file", p.display())),
            }
        }
        None
    }
}
