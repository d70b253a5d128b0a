//! Allocation sites: what the kernel groups blocks by (process, stack id or
//! caller), what a report line groups sites by (the frames as printed), and
//! keeping the kernel's fixed-size stack and site maps from filling up.
//!
//! Why stack ids are deleted: the kernel's stack map has a fixed size, and
//! a long run on a busy process would fill it with stacks whose blocks were
//! freed long ago. Sites idle for a whole interval with nothing outstanding
//! are deleted; their cumulative counts are kept here, by stack content,
//! and added back if the stack allocates again.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError};

use leakd_common::bpf;
use leakd_common::procmaps::MapsCache;
use leakd_common::{debug, trace, Result};

use crate::sampling::fixed_to_count;
use crate::sys;

/// Live blocks of one allocation site: same process, same stack id (or,
/// when the stack could not be stored, same caller). The kernel's key of
/// the `sites` map, used as is.
pub(crate) type SiteKey = sys::leakd_attach_site;

/// Cumulative allocs and frees of a site (or of a line), as the kernel
/// keeps them.
pub(crate) type Stats = sys::leakd_attach_stats;

/// What a stack line stands for: the process and the return addresses as
/// printed (cut by [`alloc_probes::kept_frames`]). Without frame pointers the
/// kernel's walk goes on through stack garbage that can differ from call to
/// call, so one call path may get several stack ids (and sites); they print
/// the same frames and are merged into one line. Shared, not copied: a
/// report uses each key in several tables (groups, totals, history).
pub(crate) type LineKey = Rc<(u32, Vec<u64>)>;

/// Entries read from a kernel map per system call.
pub(crate) const BATCH: usize = 4096;

/// Where stacks are kept: the BPF walker's table (ids with bit 31 set,
/// frames zero-terminated), in every --unwind mode.
pub(crate) struct Stacks(
    pub(crate) BpfHashMap<MapData, u32, [u64; leakd_unwind::sys::UNWIND_MAX_FRAMES as usize]>,
);

impl Stacks {
    fn get(&self, id: u32) -> Result<Vec<u64>, MapError> {
        let ips = self.0.get(&id, 0)?;
        Ok(ips.iter().take_while(|&&ip| ip != 0).copied().collect())
    }

    fn remove(&mut self, id: u32) -> Result<(), MapError> {
        self.0.remove(&id)
    }
}

/// Whether a stack id names an entry of a stack table: not when the walk
/// failed, nor when the stack is the caller alone (no walk was made).
fn in_table(stack_id: u32) -> bool {
    stack_id != sys::LEAKD_ATTACH_NO_STACK && stack_id != sys::LEAKD_ATTACH_CALLER_STACK
}

/// The kernel's stack and site maps, and what is known here about them.
pub(crate) struct Sites {
    stacks: Stacks,
    sites: BpfHashMap<MapData, SiteKey, Stats>,
    /// Cumulative counts of sites whose stack id was deleted, added back
    /// when the same stack allocates again.
    folded: HashMap<LineKey, Stats>,
    /// Each site's alloc count at the last report: a site is deleted when
    /// it had nothing outstanding and no alloc during a whole interval.
    idle: HashMap<SiteKey, u64>,
    /// The line each known site is printed in: reading its stack and
    /// checking its frames against the process's mappings is done once per
    /// site, not at every report. Pruned to the sites still in the kernel.
    lines: HashMap<SiteKey, LineKey>,
    /// The traced processes' mappings (which frames are code).
    pub(crate) maps: MapsCache,
}

impl Sites {
    pub(crate) fn new(
        stacks: Stacks,
        sites: BpfHashMap<MapData, SiteKey, Stats>,
        maps: MapsCache,
    ) -> Self {
        Sites {
            stacks,
            sites,
            folded: HashMap::new(),
            idle: HashMap::new(),
            lines: HashMap::new(),
            maps,
        }
    }

    /// Per-site totals from the kernel.
    pub(crate) fn totals(&self) -> Result<HashMap<SiteKey, Stats>> {
        let mut totals = HashMap::new();
        bpf::for_each_batch(self.sites.map(), BATCH, |keys: &[SiteKey], stats: &[Stats]| {
            totals.extend(keys.iter().copied().zip(stats.iter().copied()));
            Ok(())
        })?;
        Ok(totals)
    }

    /// The cumulative counts of lines whose sites were deleted.
    pub(crate) fn folded(&self) -> &HashMap<LineKey, Stats> {
        &self.folded
    }

    /// Forget the lines of known sites: the libraries of a command just
    /// launched may not all be mapped yet, so the frames kept may change.
    pub(crate) fn forget_lines(&mut self) {
        self.lines.clear();
    }

    /// Keep the lines of the sites still in the kernel or still live.
    pub(crate) fn prune_lines(
        &mut self,
        totals: &HashMap<SiteKey, Stats>,
        live: &HashSet<SiteKey>,
    ) {
        self.lines.retain(|k, _| totals.contains_key(k) || live.contains(k));
    }

    /// The return addresses of a site's stack (empty when unavailable).
    fn stack_ips(&self, key: &SiteKey) -> Vec<u64> {
        if !in_table(key.stack_id) {
            return Vec::new();
        }
        match self.stacks.get(key.stack_id) {
            Ok(ips) => ips,
            Err(e) => {
                debug!("stack {}: {e}", key.stack_id);
                Vec::new()
            }
        }
    }

    /// The line a site is printed in, memoized (see `lines`).
    pub(crate) fn line_key(&mut self, k: &SiteKey) -> LineKey {
        if let Some(l) = self.lines.get(k) {
            return l.clone();
        }
        let mut addrs = self.stack_ips(k);
        if addrs.is_empty() {
            addrs.push(k.caller);
        }
        addrs.truncate(alloc_probes::kept_frames(&mut self.maps, k.pid, &addrs));
        let l = Rc::new((k.pid, addrs));
        self.lines.insert(*k, l.clone());
        l
    }

    /// Delete the stack ids and totals of sites that had nothing
    /// outstanding and no new allocation for a whole interval, so a long
    /// run does not fill the kernel's fixed-size stack map with stacks of
    /// blocks freed long ago. Their cumulative counts are kept here, by
    /// stack content, and added back if the stack allocates again. A stack
    /// id shared by several processes is deleted only when all are idle.
    pub(crate) fn gc(
        &mut self,
        totals: &HashMap<SiteKey, Stats>,
        live: &HashSet<SiteKey>,
    ) -> Result<()> {
        let idle_now = |k: &SiteKey, st: &Stats| st.allocs == st.frees && !live.contains(k);
        let mut stack_ok: HashMap<u32, bool> = HashMap::new();
        let mut candidates = Vec::new();
        for (k, st) in totals {
            let ok = idle_now(k, st) && self.idle.get(k) == Some(&st.allocs);
            if in_table(k.stack_id) {
                let e = stack_ok.entry(k.stack_id).or_insert(true);
                *e &= ok;
            }
            if ok {
                candidates.push(*k);
            }
        }
        self.idle = totals.iter().map(|(k, st)| (*k, st.allocs)).collect();
        let mut deleted_stacks: HashSet<u32> = HashSet::new();
        for k in candidates {
            if in_table(k.stack_id) && !stack_ok.get(&k.stack_id).copied().unwrap_or(false) {
                continue;
            }
            // Before the stack is gone.
            let line = self.line_key(&k);
            if in_table(k.stack_id) && deleted_stacks.insert(k.stack_id) {
                // Stack first: an alloc racing with us re-creates the same
                // id (same stack, same hash bucket).
                match self.stacks.remove(k.stack_id) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => {
                        return Err(
                            leakd_common::Error::new(e).context("deleting from the stacks map")
                        )
                    }
                }
            }
            // Read again right before deleting, to lose as little as possible
            // of what a racing alloc adds.
            let st = match self.sites.get(&k, 0) {
                Ok(st) => st,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(leakd_common::Error::new(e).context("reading the sites map")),
            };
            match self.sites.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(leakd_common::Error::new(e).context("deleting from the sites map"))
                }
            }
            self.idle.remove(&k);
            self.lines.remove(&k);
            trace!("folding {line:x?}: {} allocs, {} frees", st.allocs, st.frees);
            add_stats(self.folded.entry(line).or_default(), &st);
        }
        if !deleted_stacks.is_empty() {
            debug!("deleted {} idle stack(s)", deleted_stacks.len());
        }
        Ok(())
    }
}

pub(crate) fn add_stats(a: &mut Stats, b: &Stats) {
    a.allocs = a.allocs.wrapping_add(b.allocs);
    a.frees = a.frees.wrapping_add(b.frees);
    a.alloc_bytes = a.alloc_bytes.wrapping_add(b.alloc_bytes);
    a.free_bytes = a.free_bytes.wrapping_add(b.free_bytes);
    a.est_allocs = a.est_allocs.wrapping_add(b.est_allocs);
    a.est_frees = a.est_frees.wrapping_add(b.est_frees);
    a.est_alloc_bytes = a.est_alloc_bytes.wrapping_add(b.est_alloc_bytes);
    a.est_free_bytes = a.est_free_bytes.wrapping_add(b.est_free_bytes);
}

/// Blocks allocated and freed as reported: counted, or estimated with
/// sampling.
pub(crate) fn allocs_frees(st: &Stats, sampling: bool) -> (u64, u64) {
    if sampling {
        (fixed_to_count(st.est_allocs), fixed_to_count(st.est_frees))
    } else {
        (st.allocs, st.frees)
    }
}
