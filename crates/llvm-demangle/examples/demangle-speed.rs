//! How fast LLVM's demangler (this crate) and the cpp_demangle crate (what
//! symres used before) demangle a list of names, in process, one thread,
//! and how many of their names agree with a reference (what
//! llvm-symbolizer printed for the same name).
//!
//! Usage: demangle-speed < NAMES, one `MANGLED<TAB>REFERENCE` a line (the
//! reference may be left out); prints one JSON line. Each demangler does
//! the whole list 5 times; the fastest pass counts. With `--diffs`, the
//! names that disagree go to stderr (demangler, name, its text, reference).
//!
//! The pairs come from llvm-symbolizer run on the same addresses with and
//! without `--no-demangle` (see BENCHMARKS.md, 2026-12-07, demangling).

use std::io::BufRead;
use std::time::Instant;

fn main() {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            eprintln!("demangle-speed: error: reading standard input");
            std::process::exit(2);
        };
        let mut it = line.splitn(2, '\t');
        let mangled = it.next().unwrap_or_default().to_string();
        pairs.push((mangled, it.next().map(str::to_string)));
    }
    let cpp = |name: &str| -> Option<String> {
        let sym = cpp_demangle::Symbol::new(name).ok()?;
        let mut s = String::with_capacity(name.len() * 4);
        sym.structured_demangle(&mut s, &Default::default()).ok()?;
        Some(s)
    };
    let llvm = |name: &str| leakd_llvm_demangle::demangle(name);
    let diffs = std::env::args().any(|a| a == "--diffs");
    let mut fields = vec![format!("\"names\":{}", pairs.len())];
    for (label, f) in [("cpp_demangle", &cpp as &dyn Fn(&str) -> Option<String>), ("llvm", &llvm)] {
        let mut best = f64::MAX;
        let mut out = Vec::new();
        for _ in 0..5 {
            out.clear();
            let t = Instant::now();
            for (m, _) in &pairs {
                out.push(f(m));
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        // Spaces after commas differ between demanglers' versions, not
        // what the name says (bench-symres compares names the same way).
        let norm = |s: &str| s.replace(", ", ",");
        let rejected = out.iter().filter(|d| d.is_none()).count();
        // LLVM before 15 wrote `> >` where later ones write `>>`: also
        // counted with no spaces at all.
        let bare = |s: &str| s.replace(' ', "");
        let (mut agree, mut agree_bare) = (0, 0);
        for ((m, r), d) in pairs.iter().zip(&out) {
            let Some(r) = r else { continue };
            let d = d.as_deref().unwrap_or(m);
            if norm(d) == norm(r) {
                agree += 1;
            } else if diffs {
                eprintln!("{label}\t{m}\t{d}\t{r}");
            }
            agree_bare += usize::from(bare(d) == bare(r));
        }
        fields.push(format!(
            "\"{label}\":{{\"ns_per_name\":{:.0},\"seconds\":{best:.4},\"rejected\":{rejected},\"agree\":{agree},\"agree_ignoring_spaces\":{agree_bare}}}",
            best * 1e9 / pairs.len().max(1) as f64
        ));
    }
    println!("{{{}}}", fields.join(","));
}
