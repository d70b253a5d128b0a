//! The floor under symres on a binary with symbols and (almost) no line
//! info, such as /usr/bin/node, for scripts/bench-symres: the work no
//! implementation can skip, done as simply as it can be, in one thread.
//! Each address of stdin (hex, one per line) is looked up among the
//! binary's function symbols (a binary search over their sorted starts),
//! and each distinct name found is demangled once, with the demangler
//! symres uses (its names must not change): nothing else (no JSON, no
//! DWARF, no output but the timings). The sorted table is built first and
//! timed apart; the demangling is also timed alone.
//!
//! Usage: symbol-floor BIN < ADDRS; prints one JSON line on stdout.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("symbol-floor: error: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: symbol-floor BIN < ADDRS")?;
    let mut addrs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading standard input: {e}"))?;
        let hex = line.trim().trim_start_matches("0x");
        addrs.push(u64::from_str_radix(hex, 16).map_err(|e| format!("{line:?}: {e}"))?);
    }
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;

    let t0 = Instant::now();
    let elf = goblin::elf::Elf::parse(&data).map_err(|e| format!("{path}: {e}"))?;
    let mut syms: Vec<(u64, u64, &str)> = Vec::new();
    for (table, names) in [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)] {
        for s in table.iter() {
            let func =
                matches!(s.st_type(), goblin::elf::sym::STT_FUNC | goblin::elf::sym::STT_GNU_IFUNC);
            if func && s.st_shndx != 0 && s.st_value != 0 {
                if let Some(name) = names.get_at(s.st_name).filter(|n| !n.is_empty()) {
                    syms.push((s.st_value, s.st_size, name));
                }
            }
        }
    }
    syms.sort_unstable_by_key(|s| (s.0, s.1 == 0));
    syms.dedup_by_key(|s| s.0);
    let starts: Vec<u64> = syms.iter().map(|s| s.0).collect();
    let table_ms = ms(t0.elapsed());

    let t0 = Instant::now();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut demangling = Duration::ZERO;
    let mut found = 0u64;
    for &a in &addrs {
        let Some(i) = starts.partition_point(|&s| s <= a).checked_sub(1) else { continue };
        let (start, size, name) = syms[i];
        if size > 0 && a - start >= size {
            continue;
        }
        found += 1;
        if !names.contains_key(name) {
            let t = Instant::now();
            let d = leakd_symbolize::demangle(name);
            demangling += t.elapsed();
            names.insert(name, d);
        }
    }
    let lookups_ms = ms(t0.elapsed());
    println!(
        "{{\"addresses\":{},\"found\":{found},\"distinct_names\":{},\"symbols\":{},\"table_ms\":{table_ms:.1},\"lookups_ms\":{lookups_ms:.1},\"demangle_ms\":{:.1}}}",
        addrs.len(),
        names.len(),
        syms.len(),
        ms(demangling),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
