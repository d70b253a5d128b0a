//! The reports: when they are due, what they count, and how they are
//! written (a `report` line, then one `stack` line per line key, ranked by
//! growth first).
//!
//! Why growth and not just totals: long-lived caches are outstanding too.
//! A stack whose outstanding bytes rose in each of the last `--trend`
//! reports is what a leak looks like over time, so stacks are ranked by
//! growth first.

use leakd_unwind::Unwinder;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use leakd_symbolize::Resolver;
use serde_json::{json, Value};

use leakd_common::bpf;
use leakd_common::cli::CgroupScope;
use leakd_common::container::PidContainers;
use leakd_common::event_loop::Handler;
use leakd_common::out::Output;
use leakd_common::text::{c_string, hex, WallClock};
use leakd_common::{warn, Context, Result};

use crate::sampling::{fixed_to_count, sample_weight};
use crate::sites::{add_stats, allocs_frees, LineKey, SiteKey, Sites, Stats};
use crate::sys;
use crate::table::Table;
use alloc_probes::probes;

/// What a report says about one site. Counts and bytes are exact without
/// sampling and estimates (rounded) with it.
#[derive(Debug, Default, Clone, Copy)]
struct Group {
    bytes: u64,
    count: u64,
    /// With sampling, in the default mode: the scaled-up sums.
    est_bytes: f64,
    est_count: f64,
    /// None in --combined mode (the kernel keeps no per-block times there).
    oldest_ts_ns: Option<u64>,
}

impl Group {
    /// Count one live block of `size` bytes allocated at `ts_ns`.
    fn add_block(&mut self, size: u64, ts_ns: u64, sample_bytes: Option<u64>) {
        let (est_bytes, est_count) = sample_bytes.map_or((0.0, 0.0), |n| sample_weight(size, n));
        self.merge(&Group {
            bytes: size,
            count: 1,
            est_bytes,
            est_count,
            oldest_ts_ns: Some(ts_ns),
        });
    }

    fn merge(&mut self, o: &Group) {
        if let Some(ts) = o.oldest_ts_ns {
            if self.oldest_ts_ns.is_none_or(|t| ts < t) {
                self.oldest_ts_ns = Some(ts);
            }
        }
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.count = self.count.saturating_add(o.count);
        self.est_bytes += o.est_bytes;
        self.est_count += o.est_count;
    }
}

/// Outstanding bytes of one site at the last reports, oldest first.
type History = VecDeque<(Instant, u64)>;

/// The resolver of --symbolize, and its buffers, reused from line to line.
pub(crate) struct Symbolizer {
    resolver: Resolver,
    line: Vec<u8>,
    out: Vec<u8>,
}

impl Symbolizer {
    pub(crate) fn new(resolver: Resolver) -> Self {
        Symbolizer { resolver, line: Vec::new(), out: Vec::new() }
    }
}

/// What a report shows and when (from the command line).
pub(crate) struct Settings {
    pub combined: bool,
    pub sample_bytes: Option<u64>,
    pub top: usize,
    pub older_than_ns: u64,
    pub trend: usize,
    pub every: Duration,
}

pub(crate) struct Reporter {
    allocs: Table,
    sites: Sites,
    settings: Settings,
    /// With --symbolize.
    symbolizer: Option<Symbolizer>,
    clock: WallClock,
    pid: Option<u32>,
    /// The container of each process with a stack line.
    containers: PidContainers,
    /// The cgroup, container or pod traced.
    scope: Option<CgroupScope>,
    history: HashMap<LineKey, History>,
    next_report: Instant,
    ticks: u32,
    usr1: Arc<AtomicBool>,
    /// The DWARF walker's tables (None with --unwind fp).
    unwinder: Option<Unwinder>,
    /// Blocks freed with the wrong operator (see [`Reporter::mismatches`]).
    mismatches: Option<RingBuf<MapData>>,
}

impl Handler for Reporter {
    /// An exec ended the blocks of the replaced image (see
    /// bpf/leakd-attach.bpf.c): counted as freed there, said here.
    fn event(&mut self, data: &[u8], out: &mut Output) -> Result<()> {
        let e: sys::leakd_attach_exec = bpf::read_event(data);
        out.line(&json!({
            "type": "exec",
            "ts_ns": self.clock.wall_ns(e.ts_ns),
            "pid": e.pid,
            "comm": c_string(&e.comm),
            "freed_count": e.count,
            "freed_bytes": e.bytes,
        }))?;
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> Result<()> {
        let now = Instant::now();
        self.ticks = self.ticks.saturating_add(1);
        if let Some(u) = self.unwinder.as_mut() {
            u.poll();
        }
        self.mismatches(out)?;
        // Shared libraries are mapped by ld.so after exec, once the command
        // runs; refresh our copy of the maps often at first, so frames in
        // them resolve even when the command exits before the first report.
        if self.ticks <= PRIME_TICKS {
            if let Some(pid) = self.pid {
                self.sites.maps.prime(pid);
            }
        }
        let asked = self.usr1.swap(false, Ordering::Relaxed);
        if asked || now >= self.next_report {
            self.report(out, false)?;
            if !asked {
                // Keep the cadence: a SIGUSR1 report does not shift it.
                while self.next_report <= now {
                    self.next_report += self.settings.every;
                }
            }
        }
        Ok(())
    }
}

/// Ticks during which the target's maps are re-read at every tick.
const PRIME_TICKS: u32 = 20;

/// Ranking of stacks: growth first, then outstanding bytes.
fn rank(a: &(f64, u64), b: &(f64, u64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1))
}

/// Growth over a history window: bytes per second between the oldest and
/// newest sample, and whether every step rose. `trend` steps are needed to
/// call a site growing.
fn growth(h: &History, trend: usize) -> (f64, bool) {
    let (Some(&(t0, b0)), Some(&(t1, b1))) = (h.front(), h.back()) else { return (0.0, false) };
    let secs = t1.duration_since(t0).as_secs_f64();
    let rate = if secs > 0.0 { (b1 as f64 - b0 as f64) / secs } else { 0.0 };
    let growing = h.len() > trend && h.iter().zip(h.iter().skip(1)).all(|(a, b)| b.1 > a.1);
    (rate, growing)
}

impl Reporter {
    pub(crate) fn new(
        allocs: Table,
        sites: Sites,
        settings: Settings,
        symbolizer: Option<Symbolizer>,
        pid: Option<u32>,
        usr1: Arc<AtomicBool>,
        unwinder: Option<Unwinder>,
    ) -> Self {
        let next_report = Instant::now() + settings.every;
        Reporter {
            allocs,
            sites,
            settings,
            symbolizer,
            clock: WallClock::new(),
            pid,
            containers: PidContainers::new(),
            scope: None,
            history: HashMap::new(),
            next_report,
            ticks: 0,
            usr1,
            unwinder,
            mismatches: None,
        }
    }

    /// Where the kernel sends blocks freed with the wrong operator.
    pub(crate) fn with_mismatches(mut self, ring: RingBuf<MapData>) -> Self {
        self.mismatches = Some(ring);
        self
    }

    /// Write a `mismatch` line per block the kernel saw freed with the
    /// wrong operator since the last call. Read at every tick (the kernel
    /// sends them without a wakeup: they are rare) and in each report
    /// before idle stacks are deleted, so the allocation's stack is still
    /// there: the kernel sends the record before it counts the free.
    fn mismatches(&mut self, out: &mut Output) -> Result<()> {
        let Some(ring) = self.mismatches.as_mut() else { return Ok(()) };
        let mut got: Vec<sys::leakd_attach_mismatch> = Vec::new();
        while let Some(item) = ring.next() {
            got.push(bpf::read_event(&item));
        }
        for e in got {
            let site = SiteKey { caller: e.alloc_caller, stack_id: e.alloc_stack_id, pid: e.pid };
            let line = self.sites.line_key(&site);
            let maps = &mut self.sites.maps;
            let alloc_stack = alloc_probes::stack_frames(maps, e.pid, &line.1);
            let n = (e.nr_frames as usize).min(e.frames.len());
            let kept = alloc_probes::kept_frames(maps, e.pid, &e.frames[..n]);
            let free_stack = alloc_probes::stack_frames(maps, e.pid, &e.frames[..kept]);
            let mut v = json!({
                "type": "mismatch",
                "ts_ns": self.clock.wall_ns(e.ts_ns),
                "pid": e.pid,
                "tid": e.tid,
                "comm": c_string(&e.comm),
                "addr": hex(e.addr),
                "size_bytes": e.size,
            });
            if let (Some(c), Some(obj)) = (self.containers.get(e.pid), v.as_object_mut()) {
                c.enrich(obj);
            }
            v["alloc"] = json!({ "op": probes::op_name(e.alloc_op), "stack": alloc_stack });
            v["free"] = json!({ "op": probes::op_name(e.free_op), "stack": free_stack });
            self.emit(out, v)?;
        }
        Ok(())
    }

    /// With -v: the unwind tables loaded and why walks stopped.
    pub(crate) fn unwind_summary(&self) {
        if let Some(u) = &self.unwinder {
            u.summary();
        }
    }

    /// What the report and stack lines say about containers: the scope
    /// traced and the containers of the processes, read while they ran.
    pub(crate) fn with_containers(
        mut self,
        containers: PidContainers,
        scope: Option<CgroupScope>,
    ) -> Self {
        self.containers = containers;
        self.scope = scope;
        self
    }

    /// `container` and `pod` of the report line: the container traced (by
    /// -p or --container), or the pod of a --pod run.
    fn add_target_container(&mut self, header: &mut Value) {
        let Some(obj) = header.as_object_mut() else { return };
        if let Some(pid) = self.pid {
            if let Some(c) = self.containers.get(pid) {
                c.enrich(obj);
            }
            return;
        }
        let Some(scope) = &self.scope else { return };
        if let Some(c) = scope.container() {
            c.enrich(obj);
        } else if let Some(p) = scope
            .selected
            .as_ref()
            .and_then(|s| s.resolved.containers.first())
            .and_then(|c| c.pod_json())
        {
            obj.insert("pod".into(), p);
        }
    }

    /// With --symbolize, load now the modules of processes that run in a
    /// container: when the container exits (killed, OOM-killed), its files
    /// go with it, and the final report, made after, is still symbolized
    /// from what was loaded while they were there.
    pub(crate) fn preload_modules(&mut self, pids: &[u32]) {
        if self.symbolizer.is_none() {
            return;
        }
        for &pid in pids {
            if !alloc_probes::probes::has_own_root(pid) {
                continue;
            }
            let Ok(entries) = leakd_common::procmaps::read_maps(pid) else { continue };
            let starts: Vec<u64> = entries
                .iter()
                .filter(|m| m.exec && m.path.as_deref().is_some_and(|p| p.is_absolute()))
                .map(|m| m.start)
                .collect();
            let frames: Vec<Value> =
                starts.iter().filter_map(|&a| self.sites.maps.frame(pid, a)).collect();
            let v = json!({"type": "stack", "pid": pid, "stack": frames});
            let Some(Symbolizer { resolver, line, out }) = self.symbolizer.as_mut() else { return };
            line.clear();
            if serde_json::to_writer(&mut *line, &v).is_ok() {
                out.clear();
                let _ = resolver.process_line_into(line, out);
            }
        }
    }

    /// Write a line, symbolized with --symbolize (exactly as `| symres`).
    fn emit(&mut self, out: &mut Output, v: Value) -> Result<()> {
        let Some(Symbolizer { resolver, line, out: resolved }) = self.symbolizer.as_mut() else {
            out.line(&v)?;
            return Ok(());
        };
        // Serialized once; symres rewrites the bytes (or leaves them).
        line.clear();
        serde_json::to_writer(&mut *line, &v).context("formatting a stack line")?;
        resolved.clear();
        match resolver.process_line_into(line, resolved) {
            Ok(true) => out.json_line(resolved)?,
            Ok(false) => out.json_line(line)?,
            Err(e) => {
                warn!("symbolizing: {e}");
                out.json_line(line)?;
            }
        }
        Ok(())
    }

    /// Print one report; returns the number of outstanding blocks that
    /// passed the filters.
    pub(crate) fn report(&mut self, out: &mut Output, final_: bool) -> Result<u64> {
        // Fresh maps for a live target (interval() has just read them
        // during the first ticks).
        if !final_ && self.ticks > PRIME_TICKS {
            if let Some(pid) = self.pid {
                self.sites.maps.prime(pid);
            }
        }
        let mono_now = WallClock::monotonic_now_ns();
        let now = Instant::now();
        // Live blocks first, totals second: the kernel counts an alloc before
        // it inserts the block, so every block seen is already counted and a
        // line never shows more outstanding than allocated.
        let mut live: HashSet<SiteKey> = HashSet::new();
        let per_site = if self.settings.combined {
            None
        } else {
            Some(self.sites_of_blocks(mono_now, &mut live)?)
        };
        let totals = self.sites.totals()?;
        // Before the gc may delete the stacks of sites whose last block
        // was just freed with the wrong operator.
        self.mismatches(out)?;
        if self.ticks <= PRIME_TICKS {
            // Libraries may not all be mapped yet: the frames kept may change.
            self.sites.forget_lines();
        }
        let groups = match per_site {
            None => self.groups_of_totals(&totals),
            Some(per_site) => self.groups_of_sites(per_site),
        };
        let line_totals = self.line_totals(&totals, &groups);
        // Every tracked block since the start, outstanding or not (shows
        // that tracing saw the traffic even when nothing is left); summed
        // before the gc folds idle sites away.
        let mut all = Stats::default();
        for st in totals.values().chain(self.sites.folded().values()) {
            add_stats(&mut all, st);
        }
        if !final_ {
            self.sites.gc(&totals, &live)?;
        }
        self.sites.prune_lines(&totals, &live);
        self.update_history(&groups, now);

        let total_count = groups.values().fold(0u64, |a, g| a.saturating_add(g.count));
        self.write_header(out, &groups, &all, mono_now, final_)?;
        self.write_stacks(out, groups, &line_totals, mono_now)?;
        out.flush()?;
        Ok(total_count)
    }

    /// --combined: outstanding per line from the kernel's per-site totals.
    fn groups_of_totals(&mut self, totals: &HashMap<SiteKey, Stats>) -> HashMap<LineKey, Group> {
        let sampling = self.settings.sample_bytes.is_some();
        let mut groups: HashMap<LineKey, Group> = HashMap::new();
        for (k, st) in totals {
            let count = st.allocs.saturating_sub(st.frees);
            if count == 0 {
                continue;
            }
            let (bytes, count) = if sampling {
                (
                    st.est_alloc_bytes.saturating_sub(st.est_free_bytes),
                    fixed_to_count(st.est_allocs.saturating_sub(st.est_frees)),
                )
            } else {
                (st.alloc_bytes.saturating_sub(st.free_bytes), count)
            };
            let g = groups.entry(self.sites.line_key(k)).or_default();
            g.bytes = g.bytes.saturating_add(bytes);
            g.count = g.count.saturating_add(count);
        }
        groups
    }

    /// The default mode: outstanding per site from the live blocks, old
    /// enough for --older-than; `live` gets every site with a live block.
    /// The blocks are read in place and folded as they come: the memory
    /// this takes is bounded by the number of sites, not of blocks.
    fn sites_of_blocks(
        &self,
        mono_now: u64,
        live: &mut HashSet<SiteKey>,
    ) -> Result<HashMap<SiteKey, Group>> {
        let (older_than_ns, sample_bytes) =
            (self.settings.older_than_ns, self.settings.sample_bytes);
        // Every site with a live block gets an entry (empty when none of
        // its blocks is old enough): the entries are then also the live
        // sites, with one hash per block instead of two. Consecutive blocks
        // of one site (a leak from one stack) are summed before hashing.
        let mut sites: HashMap<SiteKey, Group> = HashMap::new();
        let mut run: Option<(SiteKey, Group)> = None;
        self.allocs.for_each_block(|pid, b| {
            let key = SiteKey { caller: b.caller, stack_id: b.stack_id, pid };
            let old_enough = mono_now.saturating_sub(b.ts_ns) >= older_than_ns;
            match &mut run {
                Some((k, _)) if *k == key => {}
                _ => {
                    if let Some((k, g)) = run.take() {
                        sites.entry(k).or_default().merge(&g);
                    }
                    run = Some((key, Group::default()));
                }
            }
            if let (true, Some((_, g))) = (old_enough, run.as_mut()) {
                g.add_block(b.size, b.ts_ns, sample_bytes);
            }
        });
        if let Some((k, g)) = run {
            sites.entry(k).or_default().merge(&g);
        }
        live.extend(sites.keys().copied());
        sites.retain(|_, g| g.count > 0);
        Ok(sites)
    }

    /// The default mode: per line from per site (a line key holds a whole
    /// stack: built and hashed per site, never per block).
    fn groups_of_sites(&mut self, sites: HashMap<SiteKey, Group>) -> HashMap<LineKey, Group> {
        let mut groups: HashMap<LineKey, Group> = HashMap::new();
        for (key, site) in &sites {
            groups.entry(self.sites.line_key(key)).or_default().merge(site);
        }
        if self.settings.sample_bytes.is_some() {
            for g in groups.values_mut() {
                g.bytes = g.est_bytes.round() as u64;
                g.count = g.est_count.round() as u64;
            }
        }
        groups
    }

    /// Cumulative totals per printed line: merged over its sites, plus
    /// those of its sites deleted earlier.
    fn line_totals(
        &mut self,
        totals: &HashMap<SiteKey, Stats>,
        groups: &HashMap<LineKey, Group>,
    ) -> HashMap<LineKey, Stats> {
        let mut line_totals: HashMap<LineKey, Stats> = HashMap::new();
        for (k, st) in totals {
            let line = self.sites.line_key(k);
            if groups.contains_key(&line) {
                add_stats(line_totals.entry(line).or_default(), st);
            }
        }
        for (line, st) in line_totals.iter_mut() {
            if let Some(f) = self.sites.folded().get(line) {
                add_stats(st, f);
            }
        }
        line_totals
    }

    /// Update the growth history: a line with nothing outstanding now
    /// counts as 0, and is forgotten once it stayed at 0 for the window.
    fn update_history(&mut self, groups: &HashMap<LineKey, Group>, now: Instant) {
        for (k, h) in self.history.iter_mut() {
            if !groups.contains_key(k) {
                h.push_back((now, 0));
            }
        }
        for (k, g) in groups {
            self.history.entry(k.clone()).or_default().push_back((now, g.bytes));
        }
        let keep = self.settings.trend + 1;
        self.history.retain(|_, h| {
            while h.len() > keep {
                h.pop_front();
            }
            h.iter().any(|s| s.1 > 0)
        });
    }

    /// The `report` line.
    fn write_header(
        &mut self,
        out: &mut Output,
        groups: &HashMap<LineKey, Group>,
        all: &Stats,
        mono_now: u64,
        final_: bool,
    ) -> Result<()> {
        // Saturating: sizes come from the kernel (and from the target's
        // arguments), so a sum may not fit.
        let total_bytes = groups.values().fold(0u64, |a, g| a.saturating_add(g.bytes));
        let total_count = groups.values().fold(0u64, |a, g| a.saturating_add(g.count));
        let mut header = json!({
            "type": "report",
            "ts_ns": self.clock.wall_ns(mono_now),
        });
        if let Some(pid) = self.pid {
            header["pid"] = json!(pid);
        }
        self.add_target_container(&mut header);
        header["final"] = json!(final_);
        header["outstanding_bytes"] = json!(total_bytes);
        header["outstanding_count"] = json!(total_count);
        header["stacks"] = json!(groups.len());
        let (allocs, frees) = allocs_frees(all, self.settings.sample_bytes.is_some());
        header["allocs"] = json!(allocs);
        header["frees"] = json!(frees);
        if let Some(n) = self.settings.sample_bytes {
            header["estimated"] = json!(true);
            header["sample_bytes"] = json!(n);
        }
        out.line(&header)?;
        Ok(())
    }

    /// The `stack` lines of the --top lines, ranked.
    fn write_stacks(
        &mut self,
        out: &mut Output,
        groups: HashMap<LineKey, Group>,
        line_totals: &HashMap<LineKey, Stats>,
        mono_now: u64,
    ) -> Result<()> {
        let trend = self.settings.trend;
        let sampling = self.settings.sample_bytes.is_some();
        let mut ranked: Vec<(LineKey, Group, f64, bool)> = groups
            .into_iter()
            .map(|(k, g)| {
                let (rate, growing) =
                    self.history.get(&k).map_or((0.0, false), |h| growth(h, trend));
                (k, g, rate, growing)
            })
            .collect();
        ranked.sort_by(|a, b| rank(&(a.2, a.1.bytes), &(b.2, b.1.bytes)));
        let top = self.settings.top;
        let n = if top == 0 { ranked.len() } else { top.min(ranked.len()) };
        for (k, g, rate, growing) in ranked.into_iter().take(n) {
            let st = line_totals.get(&k).copied().unwrap_or_default();
            let (allocs, frees) = allocs_frees(&st, sampling);
            let (pid, addrs) = &*k;
            let caller = addrs.first().copied().unwrap_or(0);
            let stack = alloc_probes::stack_frames(&mut self.sites.maps, *pid, addrs);
            let mut v = json!({
                "type": "stack",
                "pid": pid,
                "outstanding_bytes": g.bytes,
                "outstanding_count": g.count,
                "allocs": allocs,
                "frees": frees,
            });
            if let Some(ts) = g.oldest_ts_ns {
                v["oldest_age_ms"] = json!(mono_now.saturating_sub(ts) / 1_000_000);
            }
            v["growth_bytes_per_s"] = json!((rate * 10.0).round() / 10.0);
            v["growing"] = json!(growing);
            if sampling {
                v["estimated"] = json!(true);
            }
            v["caller"] = json!(hex(caller));
            if let (Some(c), Some(obj)) = (self.containers.get(*pid), v.as_object_mut()) {
                c.enrich(obj);
            }
            v["stack"] = Value::Array(stack);
            self.emit(out, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_needs_a_rise_at_every_step() {
        let t = Instant::now();
        let h: History = [
            (t, 0),
            (t + Duration::from_secs(1), 10),
            (t + Duration::from_secs(2), 20),
            (t + Duration::from_secs(3), 30),
        ]
        .into_iter()
        .collect();
        let (rate, growing) = growth(&h, 3);
        assert!((rate - 10.0).abs() < 1e-9);
        assert!(growing);
        let flat: History = [
            (t, 10),
            (t + Duration::from_secs(1), 20),
            (t + Duration::from_secs(2), 20),
            (t + Duration::from_secs(3), 30),
        ]
        .into_iter()
        .collect();
        assert!(!growth(&flat, 3).1);
        // Too short a history is never "growing".
        let short: History = [(t, 10), (t + Duration::from_secs(1), 20)].into_iter().collect();
        assert!(!growth(&short, 3).1);
    }

    #[test]
    fn ranks_growth_before_bytes() {
        let mut v = vec![(0.0, 100u64), (5.0, 1), (0.0, 200)];
        v.sort_by(rank);
        assert_eq!(v, vec![(5.0, 1), (0.0, 200), (0.0, 100)]);
    }
}
