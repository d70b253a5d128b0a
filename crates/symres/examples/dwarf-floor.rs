//! The floor under any symbolizer built on the addr2line crate, for
//! scripts/bench-symres: addr2line's own lookups of the addresses on stdin
//! (hex, one per line, as GNU addr2line takes them) in BIN, in one thread,
//! with nothing else: no JSON, no demangling, no caches, no output but the
//! timings. Each lookup walks every frame at the address (inlined ones
//! too) and reads its raw name, file and line, which is what symres needs
//! of it. The context over all units is built first and timed apart, so
//! the lookup rate is the most the crate allows per thread; the lookups
//! include each unit's parse on first use. They are timed in the order
//! given (a filter's, which writes lines as they come) and again, with a
//! new context, in address order (the best case, which would need the
//! whole input read before the first line is written).
//!
//! Usage: dwarf-floor BIN < ADDRS; prints one JSON line on stdout.

use std::io::BufRead;
use std::time::Instant;

use gimli::{EndianSlice, RunTimeEndian};

fn main() {
    if let Err(e) = run() {
        eprintln!("dwarf-floor: error: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: dwarf-floor BIN < ADDRS")?;
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let elf = goblin::elf::Elf::parse(&data).map_err(|e| format!("{path}: {e}"))?;
    let endian = if elf.little_endian { RunTimeEndian::Little } else { RunTimeEndian::Big };
    let section = |id: gimli::SectionId| -> Result<EndianSlice<'_, RunTimeEndian>, gimli::Error> {
        let bytes = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(id.name()))
            .and_then(|sh| {
                data.get(
                    usize::try_from(sh.sh_offset).ok()?
                        ..usize::try_from(sh.sh_offset.checked_add(sh.sh_size)?).ok()?,
                )
            })
            .unwrap_or_default();
        Ok(EndianSlice::new(bytes, endian))
    };
    let mut addrs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading standard input: {e}"))?;
        let hex = line.trim().trim_start_matches("0x");
        addrs.push(u64::from_str_radix(hex, 16).map_err(|e| format!("{line:?}: {e}"))?);
    }

    // Each order gets a context of its own: the units' parse on first use
    // is part of what a lookup costs.
    let context = || -> Result<addr2line::Context<_>, String> {
        let dwarf = gimli::Dwarf::load(section).map_err(|e| e.to_string())?;
        addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())
    };
    let t0 = Instant::now();
    let ctx = context()?;
    let context_ms = ms(t0);
    let (lookups_ms, slowest_ms, frames) = look_up(&ctx, &addrs);
    let ctx = context()?;
    addrs.sort_unstable();
    let (sorted_lookups_ms, _, _) = look_up(&ctx, &addrs);
    println!(
        "{{\"addresses\":{},\"frames\":{frames},\"context_ms\":{context_ms:.1},\"lookups_ms\":{lookups_ms:.1},\"slowest_ms\":{slowest_ms:.1},\"sorted_lookups_ms\":{sorted_lookups_ms:.1}}}",
        addrs.len()
    );
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Milliseconds to look up every address of `addrs` in turn, those of the
/// slowest lookup (a first parse of a large unit), and the frames found.
fn look_up<R: gimli::Reader>(ctx: &addr2line::Context<R>, addrs: &[u64]) -> (f64, f64, u64) {
    let t0 = Instant::now();
    let (mut frames, mut slowest) = (0u64, 0f64);
    for &a in addrs {
        let t = Instant::now();
        let Ok(mut it) = ctx.find_frames(a).skip_all_loads() else { continue };
        while let Ok(Some(f)) = it.next() {
            frames += 1;
            std::hint::black_box(f.function.map(|n| n.name));
            std::hint::black_box(f.location.map(|l| (l.file, l.line)));
        }
        slowest = slowest.max(ms(t));
    }
    (ms(t0), slowest, frames)
}
