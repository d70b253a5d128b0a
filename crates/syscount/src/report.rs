//! Turning the ever-growing BPF counters into per-interval rows.
//!
//! The kernel side only adds; each report reads everything, subtracts the
//! previous read and prints the difference. Reading without resetting means
//! an increment that lands during the read is simply part of the next
//! interval, instead of being wiped by a clear that raced with it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use aya::Ebpf;
use serde_json::{json, Map, Value};

use leakd_common::bpf;
use leakd_common::container::CgroupCache;
use leakd_common::event_loop::Handler;
use leakd_common::out::Output;
use leakd_common::procmaps::process_exists;
use leakd_common::text::c_string;
use leakd_common::{Context, Result};

use crate::sys;
use crate::CountArgs;

const HIST_BUCKETS: usize = sys::SYSCOUNT_HIST_BUCKETS as usize;

/// What a row is keyed by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grouping {
    pub process: bool,
    pub syscall: bool,
    pub errno: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RowKey {
    tgid: u32,
    nr: u32,
    err: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    count: u64,
    lat_ns_total: u64,
    lat_count: u64,
}

impl Totals {
    fn add(&mut self, v: &sys::syscount_val) {
        self.count = self.count.wrapping_add(v.count);
        self.lat_ns_total = self.lat_ns_total.wrapping_add(v.lat_ns_total);
        self.lat_count = self.lat_count.wrapping_add(v.lat_count);
    }

    fn since(&self, prev: &Totals) -> Totals {
        Totals {
            count: self.count.wrapping_sub(prev.count),
            lat_ns_total: self.lat_ns_total.wrapping_sub(prev.lat_ns_total),
            lat_count: self.lat_count.wrapping_sub(prev.lat_count),
        }
    }

    fn is_zero(&self) -> bool {
        self.count == 0 && self.lat_count == 0
    }
}

enum Counters {
    Array(PerCpuArray<MapData, sys::syscount_val>),
    Hash(PerCpuHashMap<MapData, sys::syscount_key, sys::syscount_val>),
}

pub(crate) struct Reporter {
    counters: Counters,
    hists: Option<PerCpuArray<MapData, sys::syscount_hist>>,
    comms: Option<BpfHashMap<MapData, u32, sys::syscount_comm>>,
    /// The container of each cgroup id seen (process rows).
    containers: RefCell<CgroupCache>,
    grouping: Grouping,
    latency: bool,
    top: usize,
    text: bool,
    prev: HashMap<RowKey, Totals>,
    prev_hist: HashMap<u32, [u64; HIST_BUCKETS]>,
    seq: u64,
    since: Instant,
}

impl Reporter {
    pub fn new(ebpf: &mut Ebpf, grouping: Grouping, opts: &CountArgs) -> Result<Self> {
        let counters = if grouping.process || grouping.errno {
            Counters::Hash(bpf::take_map(ebpf, "keyed_counts")?)
        } else {
            Counters::Array(bpf::take_map(ebpf, "counts")?)
        };
        let hists = if opts.hist { Some(bpf::take_map(ebpf, "hists")?) } else { None };
        let comms = if grouping.process { Some(bpf::take_map(ebpf, "comms")?) } else { None };
        Ok(Reporter {
            counters,
            hists,
            comms,
            containers: RefCell::new(CgroupCache::new()),
            grouping,
            latency: opts.latency,
            top: opts.top,
            text: opts.text,
            prev: HashMap::new(),
            prev_hist: HashMap::new(),
            seq: 0,
            since: Instant::now(),
        })
    }

    /// Everything counted so far, summed over CPUs.
    fn read(&self) -> Result<HashMap<RowKey, Totals>> {
        let mut now = HashMap::new();
        match &self.counters {
            Counters::Array(a) => {
                for (nr, values) in a.iter().enumerate() {
                    let values = values.context("reading syscall counters")?;
                    let mut t = Totals::default();
                    values.iter().for_each(|v| t.add(v));
                    if !t.is_zero() {
                        now.insert(RowKey { tgid: 0, nr: nr as u32, err: 0 }, t);
                    }
                }
            }
            Counters::Hash(h) => {
                for item in h.iter() {
                    let (k, values) = item.context("reading syscall counters")?;
                    let mut t = Totals::default();
                    values.iter().for_each(|v| t.add(v));
                    now.insert(RowKey { tgid: k.tgid, nr: k.nr, err: k.err }, t);
                }
            }
        }
        Ok(now)
    }

    fn read_hists(&self) -> Result<HashMap<u32, [u64; HIST_BUCKETS]>> {
        let mut now = HashMap::new();
        if let Some(h) = &self.hists {
            for (nr, values) in h.iter().enumerate() {
                let values = values.context("reading latency histograms")?;
                let mut b = [0u64; HIST_BUCKETS];
                for v in values.iter() {
                    for (sum, x) in b.iter_mut().zip(v.buckets.iter()) {
                        *sum = sum.wrapping_add(*x);
                    }
                }
                if b.iter().any(|&x| x != 0) {
                    now.insert(nr as u32, b);
                }
            }
        }
        Ok(now)
    }

    /// `container` and `pod` of a process row, from the cgroup the kernel
    /// recorded with its name (a cached lookup, no system call per row).
    fn add_container(&self, tgid: u32, m: &mut Map<String, Value>) {
        let Some(c) = self.comms.as_ref().and_then(|m| m.get(&tgid, 0).ok()) else { return };
        if c.cgroup_id == 0 {
            return;
        }
        if let Some(info) = self.containers.borrow_mut().get(c.cgroup_id) {
            info.enrich(m);
        }
    }

    fn comm(&self, tgid: u32) -> String {
        if let Some(c) = self.comms.as_ref().and_then(|m| m.get(&tgid, 0).ok()) {
            return c_string(&c.comm);
        }
        std::fs::read_to_string(format!("/proc/{tgid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default()
    }

    /// Print the rows of what was counted since the last report, then the
    /// interval marker.
    pub fn report(&mut self, out: &mut Output) -> Result<()> {
        // Before the read: a process gone by then has made its last call,
        // so once this report has printed its rows they can go.
        let gone = self.exited();
        let now = self.read()?;
        let mut rows: Vec<(RowKey, Totals)> = now
            .iter()
            .map(|(k, t)| (*k, t.since(&self.prev.get(k).copied().unwrap_or_default())))
            .filter(|(_, t)| !t.is_zero())
            .collect();
        self.prev = now;
        let total: u64 = rows.iter().map(|(_, t)| t.count).sum();
        let distinct = rows.len();
        sort_rows(&mut rows, self.latency);
        if self.top > 0 {
            rows.truncate(self.top);
        }
        let hist_now = self.read_hists()?;
        let mut hists: Vec<(u32, [u64; HIST_BUCKETS])> = hist_now
            .iter()
            .map(|(nr, b)| {
                let prev = self.prev_hist.get(nr);
                let mut d = *b;
                if let Some(p) = prev {
                    d.iter_mut().zip(p.iter()).for_each(|(x, y)| *x = x.wrapping_sub(*y));
                }
                (*nr, d)
            })
            .filter(|(_, d)| d.iter().any(|&x| x != 0))
            .collect();
        self.prev_hist = hist_now;
        hists.sort_by(|a, b| {
            b.1.iter().sum::<u64>().cmp(&a.1.iter().sum::<u64>()).then(a.0.cmp(&b.0))
        });
        if self.top > 0 {
            hists.truncate(self.top);
        }

        self.seq += 1;
        let elapsed = self.since.elapsed();
        self.since = Instant::now();
        let wall =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let rows: Vec<Value> = rows.iter().map(|(k, t)| self.row(k, t)).collect();
        let hists: Vec<Value> = hists.iter().map(|(nr, b)| hist_line(*nr, b)).collect();
        let marker = json!({
            "type": "interval",
            "seq": self.seq,
            "ts_ns": wall,
            "interval_ns": elapsed.as_nanos() as u64,
            "count": total,
            "rows": distinct,
        });
        if self.text {
            let mut s = String::new();
            text_table(&mut s, &marker, &rows, &hists);
            out.text(&s)?;
            out.flush()?;
        } else {
            for v in rows.iter().chain(hists.iter()) {
                out.line(v)?;
            }
            out.line(&marker)?;
        }
        self.forget(&gone)
    }

    /// The processes of the rows read so far that have exited (with -P or
    /// -M; none otherwise).
    fn exited(&self) -> HashSet<u32> {
        if !self.grouping.process {
            return HashSet::new();
        }
        let tgids: HashSet<u32> = self.prev.keys().map(|k| k.tgid).collect();
        tgids.into_iter().filter(|&t| !process_exists(t)).collect()
    }

    /// Drop the rows and names of processes `gone` (exited before the last
    /// read, so all their calls are reported): a long run meets a new
    /// process at every fork of its workload, and the kernel's table would
    /// fill up. (A PID reused before the delete would lose its new
    /// process's first calls with them.)
    fn forget(&mut self, gone: &HashSet<u32>) -> Result<()> {
        let Counters::Hash(h) = &mut self.counters else { return Ok(()) };
        if gone.is_empty() {
            return Ok(());
        }
        let rows: Vec<RowKey> =
            self.prev.keys().filter(|k| gone.contains(&k.tgid)).copied().collect();
        for k in rows {
            let key = sys::syscount_key { tgid: k.tgid, nr: k.nr, err: k.err };
            match h.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(leakd_common::Error::new(e)
                        .context("dropping the rows of an exited process"))
                }
            }
            self.prev.remove(&k);
        }
        if let Some(c) = &mut self.comms {
            for tgid in gone {
                let _ = c.remove(tgid);
            }
        }
        Ok(())
    }

    fn row(&self, k: &RowKey, t: &Totals) -> Value {
        let g = self.grouping;
        let ty = match (g.process, g.syscall) {
            (true, true) => "process_syscall",
            (true, false) => "process",
            _ => "syscall",
        };
        let mut m = Map::new();
        m.insert("type".into(), json!(ty));
        if g.process {
            m.insert("pid".into(), json!(k.tgid));
            m.insert("comm".into(), json!(self.comm(k.tgid)));
            self.add_container(k.tgid, &mut m);
        }
        if g.syscall {
            m.insert("syscall".into(), json!(syscall_name(k.nr)));
            m.insert("nr".into(), json!(syscall_nr(k.nr)));
        }
        if g.errno {
            m.insert(
                "errno".into(),
                json!(errno_name(k.err).map(str::to_string).unwrap_or_else(|| k.err.to_string())),
            );
            m.insert("errno_nr".into(), json!(k.err));
        }
        m.insert("count".into(), json!(t.count));
        if self.latency {
            m.insert("lat_ns_total".into(), json!(t.lat_ns_total));
            m.insert(
                "lat_ns_avg".into(),
                json!(t.lat_ns_total.checked_div(t.lat_count).unwrap_or(0)),
            );
        }
        Value::Object(m)
    }
}

impl Handler for Reporter {
    fn event(&mut self, _data: &[u8], _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> Result<()> {
        self.report(out)
    }

    /// A report now, of the counts since the previous one, as an interval
    /// boundary would; the next report starts from here.
    fn usr1(&mut self, out: &mut Output) -> Result<()> {
        self.report(out)
    }
}

/// By count (or time with -L), highest first; ties in key order so that
/// output is deterministic.
fn sort_rows(rows: &mut [(RowKey, Totals)], latency: bool) {
    rows.sort_by(|(ka, a), (kb, b)| {
        let primary = if latency {
            b.lat_ns_total.cmp(&a.lat_ns_total).then(b.count.cmp(&a.count))
        } else {
            b.count.cmp(&a.count).then(b.lat_ns_total.cmp(&a.lat_ns_total))
        };
        primary.then(ka.cmp(kb))
    });
}

/// The name for this architecture; a number the table does not know (a
/// syscall newer than the `syscalls` crate) is printed as that number.
pub(crate) fn syscall_name(nr: u32) -> String {
    if nr == sys::SYSCOUNT_NR_OTHER {
        return "other".to_string();
    }
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => nr.to_string(),
    }
}

fn syscall_nr(nr: u32) -> i64 {
    if nr == sys::SYSCOUNT_NR_OTHER {
        -1
    } else {
        i64::from(nr)
    }
}

pub(crate) fn errno_name(err: u32) -> Option<&'static str> {
    syscalls::Errno::new(err as i32).name()
}

/// Bucket b holds 2^b..2^(b+1)-1 ns (bucket 0 also 0 ns; the last one
/// everything longer).
fn bucket_bounds(b: usize) -> (u64, Option<u64>) {
    let lo = if b == 0 { 0 } else { 1u64 << b };
    let hi = if b + 1 >= HIST_BUCKETS { None } else { Some((1u64 << (b + 1)) - 1) };
    (lo, hi)
}

fn hist_line(nr: u32, b: &[u64; HIST_BUCKETS]) -> Value {
    let buckets: Vec<Value> = b
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != 0)
        .map(|(i, &c)| {
            let (lo, hi) = bucket_bounds(i);
            json!({"lat_ns_min": lo, "lat_ns_max": hi, "count": c})
        })
        .collect();
    json!({
        "type": "hist",
        "syscall": syscall_name(nr),
        "nr": syscall_nr(nr),
        "count": b.iter().sum::<u64>(),
        "buckets": buckets,
    })
}

fn text_table(s: &mut String, marker: &Value, rows: &[Value], hists: &[Value]) {
    use std::fmt::Write as _;
    let secs = marker["interval_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
    let _ = writeln!(
        s,
        "[interval {} ({secs:.3} s): {} calls in {} rows]",
        marker["seq"], marker["count"], marker["rows"]
    );
    let cols: Vec<&str> = rows
        .first()
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter(|k| *k != "type" && *k != "nr" && *k != "errno_nr")
                .map(String::as_str)
                .collect()
        })
        .unwrap_or_default();
    if !cols.is_empty() {
        let widths: Vec<usize> = cols
            .iter()
            .map(|c| rows.iter().map(|r| cell(&r[*c]).len()).max().unwrap_or(0).max(c.len()))
            .collect();
        let line = |vals: Vec<String>| -> String {
            let mut l = String::new();
            for (i, (v, w)) in vals.iter().zip(&widths).enumerate() {
                let numeric = rows.first().is_some_and(|r| r[cols[i]].is_number());
                if i > 0 {
                    l.push_str("  ");
                }
                if numeric {
                    let _ = write!(l, "{v:>w$}");
                } else {
                    let _ = write!(l, "{v:<w$}");
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(s, "{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
        for r in rows {
            let _ = writeln!(s, "{}", line(cols.iter().map(|c| cell(&r[*c])).collect()));
        }
    }
    for h in hists {
        let _ = writeln!(s, "\n{} ({} calls)", cell(&h["syscall"]), h["count"]);
        let buckets = h["buckets"].as_array().cloned().unwrap_or_default();
        let max = buckets.iter().filter_map(|b| b["count"].as_u64()).max().unwrap_or(1).max(1);
        for b in &buckets {
            let c = b["count"].as_u64().unwrap_or(0);
            let lo = b["lat_ns_min"].as_u64().unwrap_or(0);
            let hi =
                b["lat_ns_max"].as_u64().map(|h| h.to_string()).unwrap_or_else(|| "inf".into());
            let stars = ((c as f64 / max as f64) * 40.0).ceil() as usize;
            let _ = writeln!(s, "  {lo:>15} -> {hi:<15} ns : {c:<10} |{:<40}|", "*".repeat(stars));
        }
    }
    let _ = writeln!(s);
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_table_and_unknown_numbers_stay_numbers() {
        assert_eq!(syscall_name(syscalls::Sysno::getppid.id() as u32), "getppid");
        assert_eq!(syscall_name(1000), "1000");
        assert_eq!(syscall_name(sys::SYSCOUNT_NR_OTHER), "other");
        assert_eq!(syscall_nr(sys::SYSCOUNT_NR_OTHER), -1);
        assert_eq!(errno_name(9), Some("EBADF"));
        assert_eq!(errno_name(4000), None);
    }

    #[test]
    fn deltas_and_order() {
        let a = Totals { count: 10, lat_ns_total: 100, lat_count: 9 };
        let b = Totals { count: 4, lat_ns_total: 40, lat_count: 4 };
        assert_eq!(a.since(&b), Totals { count: 6, lat_ns_total: 60, lat_count: 5 });
        let k = |nr| RowKey { tgid: 0, nr, err: 0 };
        let mut rows = vec![
            (k(1), Totals { count: 5, lat_ns_total: 1, lat_count: 5 }),
            (k(2), Totals { count: 9, lat_ns_total: 0, lat_count: 9 }),
            (k(0), Totals { count: 5, lat_ns_total: 7, lat_count: 5 }),
        ];
        sort_rows(&mut rows, false);
        assert_eq!(rows.iter().map(|r| r.0.nr).collect::<Vec<_>>(), vec![2, 0, 1]);
        sort_rows(&mut rows, true);
        assert_eq!(rows.iter().map(|r| r.0.nr).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn histogram_buckets_cover_everything() {
        assert_eq!(bucket_bounds(0), (0, Some(1)));
        assert_eq!(bucket_bounds(1), (2, Some(3)));
        assert_eq!(bucket_bounds(10), (1024, Some(2047)));
        assert_eq!(bucket_bounds(HIST_BUCKETS - 1), (1u64 << (HIST_BUCKETS - 1), None));
    }
}
