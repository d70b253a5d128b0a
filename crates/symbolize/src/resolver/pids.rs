//! The memory maps of live processes, for frames given as `addr` + `pid`.
//!
//! A process's maps are read once and reread at most once per input line,
//! and only when an address is in none of its mappings (it loaded a
//! library since). The module behind each mapping is remembered with it.

use std::collections::HashMap;

use leakd_common::procmaps::{self, MapEntry};

use super::table::ModuleId;
use crate::answer::Reason;
use crate::log;

/// Processes whose maps are kept: a long run meets processes without end,
/// but those still in the stream are the ones used lately (the half used
/// longest ago goes when full; an exited one's maps cannot be read again).
pub const MAX_PIDS: usize = 4096;

pub struct PidMaps {
    /// Why not, when the maps cannot be read.
    entries: Result<Vec<MapEntry>, Reason>,
    /// The module of each mapping, once looked for.
    modules: Vec<Option<Result<ModuleId, Reason>>>,
    /// When the maps were read, and when last used (input lines).
    pub generation: u64,
    used: u64,
}

/// A mapping found for an address.
pub struct Mapping<'a> {
    /// Its place in the process's maps (for `Pids::set_module`).
    pub slot: usize,
    pub entry: &'a MapEntry,
    /// Its module, when looked for before.
    pub module: Option<Result<ModuleId, Reason>>,
}

#[derive(Default)]
pub struct Pids {
    pub maps: HashMap<u32, PidMaps>,
}

impl Pids {
    /// The mapping of `addr` in process `pid`, its maps read first if they
    /// were not, or if `addr` is in none of them and they were not read at
    /// this `generation` (input line).
    pub fn mapping(&mut self, pid: u32, addr: u64, generation: u64) -> Result<Mapping<'_>, Reason> {
        let stale = match self.maps.get_mut(&pid) {
            None => true,
            Some(m) => {
                m.used = generation;
                m.generation != generation
                    && m.entries.as_deref().map_or(true, |e| procmaps::find(e, addr).is_none())
            }
        };
        if stale {
            let entries = procmaps::read_maps(pid).map_err(|e| {
                log::once(1, || format!("process {pid}: cannot read /proc/{pid}/maps: {e}"));
                match e.kind() {
                    std::io::ErrorKind::NotFound => Reason::NoProcess,
                    std::io::ErrorKind::PermissionDenied => Reason::NoPermission,
                    _ => Reason::Unmapped,
                }
            });
            let n = entries.as_ref().map_or(0, Vec::len);
            if self.maps.len() >= MAX_PIDS && !self.maps.contains_key(&pid) {
                let mut used: Vec<u64> = self.maps.values().map(|p| p.used).collect();
                let mid = used.len() / 2;
                let median = *used.select_nth_unstable(mid).1;
                self.maps.retain(|_, p| p.used > median);
            }
            self.maps.insert(
                pid,
                PidMaps { entries, modules: vec![None; n], generation, used: generation },
            );
        }
        let pm = self.maps.get(&pid).ok_or(Reason::Unmapped)?;
        let entries = pm.entries.as_ref().map_err(|r| *r)?;
        let slot = procmaps::find(entries, addr).ok_or(Reason::Unmapped)?;
        let entry = entries.get(slot).ok_or(Reason::Unmapped)?;
        Ok(Mapping { slot, entry, module: pm.modules.get(slot).copied().flatten() })
    }

    /// Remember the module of a mapping `mapping` found.
    pub fn set_module(&mut self, pid: u32, slot: usize, module: Result<ModuleId, Reason>) {
        if let Some(s) = self.maps.get_mut(&pid).and_then(|pm| pm.modules.get_mut(slot)) {
            *s = Some(module);
        }
    }
}
