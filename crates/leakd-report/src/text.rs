//! Text for a person at a terminal, in the shapes they know from BCC's
//! memleak (leak reports), libbpf-tools' execsnoop (columns) and syscount
//! (a table per interval). Each line is rendered as it arrives, except
//! syscount rows, which wait for the `interval` line that closes their
//! table (they are already bounded by syscount's -T).

use std::io::{self, Write};

use crate::input::{Frame, Line};
use crate::model::basename;

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b.abs();
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let sign = if b < 0.0 { "-" } else { "" };
    if u == 0 {
        format!("{sign}{v:.0} B")
    } else {
        format!("{sign}{v:.1} {}", UNITS[u])
    }
}

/// A growth rate: `+320.0 KiB/s`, `-1.0 MiB/s`.
pub fn human_rate(bytes_per_s: f64) -> String {
    let sign = if bytes_per_s >= 0.0 { "+" } else { "" };
    format!("{sign}{}/s", human_bytes(bytes_per_s))
}

/// A duration in nanoseconds: `850 ns`, `4.8 us`, `8.3 ms`, `2.10 s`.
pub fn human_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

/// Wall-clock `HH:MM:SS` in local time of nanoseconds since the epoch.
pub fn clock(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: an all-zero tm is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, properly aligned locals.
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return "??:??:??".into();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// One frame as `function+offset (file:line) [module]`, preceded by one line
/// per function inlined at it (innermost first), each as `function
/// (file:line) [module] (inlined)`. Unresolved: `addr [module+offset]` and
/// symres's reason.
pub fn frame_lines(f: &Frame) -> Vec<String> {
    let module = f.module.as_deref().map(basename);
    let module_part = module.map(|m| format!(" [{m}]")).unwrap_or_default();
    let loc = |file: Option<&str>, line: Option<u64>| match (file, line) {
        (Some(file), Some(line)) => format!(" ({file}:{line})"),
        (Some(file), None) => format!(" ({file})"),
        _ => String::new(),
    };
    let mut out = Vec::new();
    match &f.sym {
        Some(sym) => {
            for i in f.inlined.iter().flatten() {
                out.push(format!(
                    "{}{}{module_part} (inlined)",
                    i.sym.as_deref().unwrap_or("[unknown]"),
                    loc(i.file.as_deref(), i.line)
                ));
            }
            let off = f.sym_offset.map(|o| format!("+{o:#x}")).unwrap_or_default();
            out.push(format!("{sym}{off}{}{module_part}", loc(f.file.as_deref(), f.line)));
        }
        None => {
            let addr = f.addr.map(|a| format!("{a:#x}")).unwrap_or_else(|| "[unknown]".into());
            let place = match (module, f.offset) {
                (Some(m), Some(o)) => format!(" [{m}+{o:#x}]"),
                _ => module_part,
            };
            let reason = f.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            out.push(format!("{addr}{place}{reason}"));
        }
    }
    out
}

/// A block freed with the wrong operator: what made and freed it, and
/// both stacks.
fn mismatch(o: &mut impl Write, l: &Line) -> io::Result<()> {
    let op = |c: &Option<crate::input::Call>| {
        c.as_ref().and_then(|c| c.op.as_deref()).unwrap_or("?").to_string()
    };
    let size = l.size_bytes.map(|n| format!(" of {n} bytes")).unwrap_or_default();
    writeln!(
        o,
        "MISMATCH: {}/{}: block {:#x}{size} made by {} freed by {}",
        l.comm.as_deref().unwrap_or("?"),
        l.pid.unwrap_or(0),
        l.addr.unwrap_or(0),
        op(&l.alloc),
        op(&l.free),
    )?;
    for (what, c) in [("made", &l.alloc), ("freed", &l.free)] {
        writeln!(o, "\t{what} by {} at:", op(c))?;
        for f in c.iter().flat_map(|c| c.stack.iter().flatten()) {
            for s in frame_lines(f) {
                writeln!(o, "\t\t{s}")?;
            }
        }
    }
    Ok(())
}

/// The caller of an allocation, short: `function+offset (file:line)`.
fn caller(stack: Option<&[Frame]>) -> Option<String> {
    let f = stack?.first()?;
    frame_lines(f).pop()
}

/// Quote an argument for display when it would be ambiguous bare.
fn shell_word(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| !c.is_whitespace() && !"'\"\\$`;&|<>()".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[derive(Default)]
pub struct Text {
    exec_header: bool,
    rows: Vec<Row>,
}

struct Row {
    name: String,
    errno: Option<String>,
    count: u64,
    lat_total: Option<u64>,
    lat_avg: Option<u64>,
}

impl Text {
    /// Render one line. Returns an error only when writing fails.
    pub fn line(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        match l.kind.as_ref() {
            "report" => self.report(o, l),
            "stack" => self.stack(o, l),
            "alloc" => self.alloc(o, l),
            "exec" => self.exec(o, l),
            "mismatch" => mismatch(o, l),
            "syscall" | "process" | "process_syscall" => {
                self.row(l);
                Ok(())
            }
            "interval" => self.interval(o, l),
            "hist" => self.hist(o, l),
            "lost" => writeln!(
                o,
                "WARNING: lost {} events ({}), {} in all: totals are low",
                l.count.unwrap_or(0),
                l.reason.as_deref().unwrap_or("unknown"),
                l.total.unwrap_or(0)
            ),
            _ => Ok(()),
        }
    }

    /// At the end of input: what is still held back.
    pub fn finish(&mut self, o: &mut impl Write) -> io::Result<()> {
        self.table(o)
    }

    fn report(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        let bytes = l.outstanding_bytes.unwrap_or(0);
        let pid = l.pid.map(|p| format!(" pid {p}:")).unwrap_or_default();
        let est = if l.estimated == Some(true) { " (estimated)" } else { "" };
        let fin = if l.is_final == Some(true) { ", final" } else { "" };
        writeln!(
            o,
            "[{}]{pid} {bytes} bytes ({}) in {} allocations outstanding from {} stacks{est} \
             (tracked {} allocs, {} frees){fin}",
            clock(l.ts_ns.unwrap_or(0)),
            human_bytes(bytes as f64),
            l.outstanding_count.unwrap_or(0),
            l.stacks.unwrap_or(0),
            l.allocs.unwrap_or(0),
            l.frees.unwrap_or(0),
        )
    }

    fn stack(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        let rate = l.growth_bytes_per_s.unwrap_or(0.0);
        let trend = match (l.growing == Some(true), rate != 0.0) {
            (true, _) => format!(" [GROWING {}]", human_rate(rate)),
            (false, true) => format!(" [{}]", human_rate(rate)),
            (false, false) => String::new(),
        };
        let est = if l.estimated == Some(true) { " (estimated)" } else { "" };
        writeln!(
            o,
            "\t{} bytes in {} allocations from stack{est}{trend}",
            l.outstanding_bytes.unwrap_or(0),
            l.outstanding_count.unwrap_or(0),
        )?;
        for f in l.stack.iter().flatten() {
            for s in frame_lines(f) {
                writeln!(o, "\t\t{s}")?;
            }
        }
        Ok(())
    }

    fn alloc(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        let ts = l.ts_ns.unwrap_or(0);
        let op = l.op.as_deref().unwrap_or("?");
        let mut s = format!(
            "{}.{:06} {} {}/{} {op}",
            clock(ts),
            ts % 1_000_000_000 / 1000,
            l.comm.as_deref().unwrap_or("?"),
            l.pid.unwrap_or(0),
            l.tid.unwrap_or(0),
        );
        if let Some(old) = l.old_addr {
            s.push_str(&format!(" {old:#x}"));
        }
        if let Some(size) = l.size_bytes {
            s.push_str(&format!(" {size} bytes"));
        }
        if let Some(a) = l.align_bytes {
            s.push_str(&format!(" align {a}"));
        }
        match (op, l.addr) {
            ("free" | "munmap", Some(a)) => s.push_str(&format!(" {a:#x}")),
            (_, Some(a)) => s.push_str(&format!(" -> {a:#x}")),
            _ => {}
        }
        if l.failed == Some(true) {
            s.push_str(" FAILED");
        }
        if let Some(c) = caller(l.stack.as_deref()) {
            s.push_str(" from ");
            s.push_str(&c);
        }
        writeln!(o, "{s}")
    }

    fn exec(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        if let Some(n) = l.freed_count {
            // leakd-attach's: not an execsnoop row, but what the exec ended.
            let bytes = l.freed_bytes.unwrap_or(0);
            return writeln!(
                o,
                "[{}] pid {}: exec ({}) ended {n} blocks, {bytes} bytes ({}), of the old \
                 image: counted as freed",
                clock(l.ts_ns.unwrap_or(0)),
                l.pid.unwrap_or(0),
                l.comm.as_deref().unwrap_or("?"),
                human_bytes(bytes as f64),
            );
        }
        if !self.exec_header {
            self.exec_header = true;
            writeln!(
                o,
                "{:<8} {:<16} {:<7} {:<7} {:>4} ARGS",
                "TIME", "PCOMM", "PID", "PPID", "RET"
            )?;
        }
        let args: Vec<String> = match &l.argv {
            Some(a) if !a.is_empty() => a.iter().map(|a| shell_word(a)).collect(),
            _ => vec![shell_word(l.filename.as_deref().unwrap_or(""))],
        };
        let more = if l.argv_truncated == Some(true) { " ..." } else { "" };
        writeln!(
            o,
            "{:<8} {:<16} {:<7} {:<7} {:>4} {}{more}",
            clock(l.ts_ns.unwrap_or(0)),
            l.comm.as_deref().unwrap_or("?"),
            l.pid.unwrap_or(0),
            l.ppid.unwrap_or(0),
            l.ret.unwrap_or(0),
            args.join(" "),
        )
    }

    fn row(&mut self, l: &Line) {
        let sc = l.syscall.as_deref();
        let name = match (l.kind.as_ref(), l.pid, l.comm.as_deref()) {
            ("process", p, c) => format!("{} {}", p.unwrap_or(0), c.unwrap_or("?")),
            ("process_syscall", p, c) => {
                format!("{} {} {}", p.unwrap_or(0), c.unwrap_or("?"), sc.unwrap_or("?"))
            }
            _ => sc.unwrap_or("?").to_string(),
        };
        self.rows.push(Row {
            name,
            errno: l.errno.as_deref().map(str::to_string),
            count: l.count.unwrap_or(0),
            lat_total: l.lat_ns_total,
            lat_avg: l.lat_ns_avg,
        });
    }

    fn interval(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        writeln!(
            o,
            "[{}] interval {} ({}): {} calls in {} rows",
            clock(l.ts_ns.unwrap_or(0)),
            l.seq.unwrap_or(0),
            human_ns(l.interval_ns.unwrap_or(0)),
            l.count.unwrap_or(0),
            l.rows.unwrap_or(0),
        )?;
        self.table(o)
    }

    fn table(&mut self, o: &mut impl Write) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut rows = std::mem::take(&mut self.rows);
        if rows.iter().all(|r| r.lat_total.is_some()) {
            rows.sort_by_key(|r| std::cmp::Reverse(r.lat_total));
        } else {
            rows.sort_by_key(|r| std::cmp::Reverse(r.count));
        }
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(7);
        let errno = rows.iter().any(|r| r.errno.is_some());
        let lat = rows.iter().any(|r| r.lat_total.is_some());
        let mut head = format!("{:<w$}", "SYSCALL");
        if errno {
            head.push_str(&format!(" {:<12}", "ERRNO"));
        }
        head.push_str(&format!(" {:>10}", "COUNT"));
        if lat {
            head.push_str(&format!(" {:>10} {:>10}", "TIME", "AVG"));
        }
        writeln!(o, "{}", head.trim_end())?;
        for r in rows {
            let mut s = format!("{:<w$}", r.name);
            if errno {
                s.push_str(&format!(" {:<12}", r.errno.as_deref().unwrap_or("")));
            }
            s.push_str(&format!(" {:>10}", r.count));
            if lat {
                let t = r.lat_total.map(human_ns).unwrap_or_default();
                let a = r.lat_avg.map(human_ns).unwrap_or_default();
                s.push_str(&format!(" {t:>10} {a:>10}"));
            }
            writeln!(o, "{}", s.trim_end())?;
        }
        writeln!(o)
    }

    fn hist(&mut self, o: &mut impl Write, l: &Line) -> io::Result<()> {
        writeln!(
            o,
            "{} latency, {} calls:",
            l.syscall.as_deref().unwrap_or("?"),
            l.count.unwrap_or(0)
        )?;
        let buckets = l.buckets.as_deref().unwrap_or(&[]);
        let max = buckets.iter().filter_map(|b| b.count).max().unwrap_or(0).max(1);
        for b in buckets {
            let c = b.count.unwrap_or(0);
            let hi = b.lat_ns_max.map(human_ns).unwrap_or_else(|| "inf".into());
            let bar = "*".repeat((c * 40).div_ceil(max) as usize);
            writeln!(
                o,
                "  {:>10} .. {:<10} {c:>10} |{bar:<40}|",
                human_ns(b.lat_ns_min.unwrap_or(0)),
                hi
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse;

    #[test]
    fn units() {
        assert_eq!(human_bytes(24.0), "24 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_rate(327680.0), "+320.0 KiB/s");
        assert_eq!(human_rate(-1048576.0), "-1.0 MiB/s");
        assert_eq!(human_ns(850), "850 ns");
        assert_eq!(human_ns(4775), "4.8 us");
        assert_eq!(human_ns(8_319_501), "8.3 ms");
    }

    #[test]
    fn frames_resolved_inlined_and_not() {
        let l = parse(
            r#"{"type":"stack","stack":[
            {"addr":"0x10","module":"/usr/bin/app","offset":"0x10","sym":"outer","sym_offset":"0x9","file":"a.c","line":7,"inlined":[{"sym":"inner","file":"b.h","line":3}]},
            {"addr":"0x55","module":"/usr/bin/app","offset":"0x20","reason":"no_symbols"}]}"#,
        )
        .unwrap();
        let s = l.stack.unwrap();
        assert_eq!(
            frame_lines(&s[0]),
            vec!["inner (b.h:3) [app] (inlined)", "outer+0x9 (a.c:7) [app]"]
        );
        assert_eq!(frame_lines(&s[1]), vec!["0x55 [app+0x20] (no_symbols)"]);
    }
}
