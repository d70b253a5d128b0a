//! The tables checked row by row against binutils' own interpretation of
//! the same CFI (`readelf --debug-dump=frames-interp`), on programs built
//! here with and without frame pointers.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void *leaf(size_t n) {
    char buf[300];
    snprintf(buf, sizeof buf, "%zu", n);
    return malloc(n + (unsigned char)buf[0]);
}
__attribute__((noinline)) void *mid(size_t n, int k) {
    void *p = leaf(n);
    for (int i = 0; i < k; i++) printf("%p %d\n", p, i);
    return p;
}
int main(int argc, char **argv) { return mid(argc, argc * 2) != 0; }
"#;

fn compile(name: &str, flags: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leakd-unwind-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, PROGRAM).unwrap();
    let out = dir.join(name);
    let st = Command::new("gcc").args(flags).arg("-o").arg(&out).arg(&src).status().unwrap();
    assert!(st.success(), "gcc failed");
    out
}

/// (pc, expected kind, cfa offset, rbp offset) for each row readelf prints,
/// with CFA expressions left out (kind None).
/// (kind, cfa_off, rbp_off) of a row.
type Rule = (u8, u16, i8);

fn readelf_rows(path: &Path) -> Vec<(u64, Option<Rule>)> {
    let out = Command::new("readelf").arg("--debug-dump=frames-interp").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut in_fde = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(3) == Some(&"FDE") {
            in_fde = true;
            continue;
        }
        if words.get(3) == Some(&"CIE") || words.get(1) == Some(&"ZERO") {
            in_fde = false;
            continue;
        }
        if words.first() == Some(&"LOC") {
            columns = words.iter().map(|s| s.to_string()).collect();
            continue;
        }
        if !in_fde || words.len() != columns.len() {
            continue;
        }
        let Ok(pc) = u64::from_str_radix(words[0], 16) else { continue };
        let col = |name: &str| columns.iter().position(|c| c == name).map(|i| words[i]);
        let ra = col("ra").unwrap();
        if ra == "u" {
            rows.push((pc, Some((sys::unwind_kind_UNWIND_END as u8, 0, 0))));
            continue;
        }
        assert_eq!(ra, "c-8", "{line}");
        let rbp = match col("rbp") {
            None | Some("u") => 0,
            Some(c) => (c.strip_prefix("c").unwrap().parse::<i64>().unwrap() / 8) as i8,
        };
        let cfa = col("CFA").unwrap();
        let expect = if let Some(n) = cfa.strip_prefix("rsp+") {
            Some((sys::unwind_kind_UNWIND_CFA_RSP as u8, n.parse().unwrap(), rbp))
        } else {
            cfa.strip_prefix("rbp+")
                .map(|n| (sys::unwind_kind_UNWIND_CFA_RBP as u8, n.parse().unwrap(), rbp))
        };
        rows.push((pc, expect));
    }
    rows
}

fn file_offset(data: &[u8], vaddr: u64) -> u64 {
    let elf = Elf::parse(data).unwrap();
    let p = elf
        .program_headers
        .iter()
        .find(|p| {
            p.p_type == PT_LOAD && p.is_executable() && p.vm_range().contains(&(vaddr as usize))
        })
        .unwrap();
    vaddr - p.p_vaddr + p.p_offset
}

fn check_against_readelf(path: &Path) -> Table {
    let data = std::fs::read(path).unwrap();
    let table = build(&data).unwrap();
    let expected = readelf_rows(path);
    assert!(expected.len() > 10, "readelf printed {} rows", expected.len());
    let mut checked = 0;
    for (pc, exp) in expected {
        let off = file_offset(&data, pc);
        let row = table.lookup(off).unwrap_or_else(|| panic!("no row for {pc:#x}"));
        match exp {
            Some((kind, cfa, rbp)) => {
                assert_eq!((row.kind, row.cfa_off, row.rbp_off), (kind, cfa, rbp), "at {pc:#x}");
                checked += 1;
            }
            None => assert!(
                row.kind == sys::unwind_kind_UNWIND_PLT as u8
                    || row.kind == sys::unwind_kind_UNWIND_UNSUPPORTED as u8,
                "expression at {pc:#x}: {row:?}"
            ),
        }
    }
    assert!(checked > 10);
    // Sorted, and no two neighbours alike.
    assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc && !same_rule(&w[0], &w[1])));
    table
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}: kind {} cfa+{} rbp {}", self.pc, self.kind, self.cfa_off, self.rbp_off)
    }
}

#[test]
fn omit_frame_pointer_rows_match_readelf() {
    let t = check_against_readelf(&compile("nofp", &["-O2", "-fomit-frame-pointer"]));
    // leaf's 300-byte buffer: a CFA well above rsp+8 somewhere.
    assert!(t
        .rows
        .iter()
        .any(|r| r.kind == sys::unwind_kind_UNWIND_CFA_RSP as u8 && r.cfa_off > 300));
    // The PLT's expression is understood, not given up on.
    assert!(t.rows.iter().any(|r| r.kind == sys::unwind_kind_UNWIND_PLT as u8), "{:?}", t.rows);
    // _start's return address is undefined: the outermost frame.
    assert!(t.rows.iter().any(|r| r.kind == sys::unwind_kind_UNWIND_END as u8));
}

#[test]
fn frame_pointer_rows_match_readelf() {
    let t = check_against_readelf(&compile("fp", &["-O2", "-fno-omit-frame-pointer"]));
    assert!(t.rows.iter().any(|r| r.kind == sys::unwind_kind_UNWIND_CFA_RBP as u8
        && r.cfa_off == 16
        && r.rbp_off == -2));
}

#[test]
fn debug_frame_only_is_used() {
    // -fno-asynchronous-unwind-tables -g: CFI in .debug_frame only.
    let path =
        compile("dbg", &["-O2", "-g", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables"]);
    let data = std::fs::read(&path).unwrap();
    let t = build(&data).unwrap();
    assert!(t.debug_frame_fdes >= 3, "{} FDEs from .debug_frame", t.debug_frame_fdes);
    let elf = Elf::parse(&data).unwrap();
    let main = elf.syms.iter().find(|s| elf.strtab.get_at(s.st_name) == Some("main")).unwrap();
    let row = t.lookup(file_offset(&data, main.st_value)).unwrap();
    assert_eq!((row.kind, row.cfa_off), (sys::unwind_kind_UNWIND_CFA_RSP as u8, 8));
}

#[test]
fn gaps_between_functions_have_no_rule() {
    let spans = [
        Span { start: 0x1000, end: 0x1010, kind: 1, cfa_off: 8, rbp_off: 0 },
        Span { start: 0x1010, end: 0x1020, kind: 1, cfa_off: 8, rbp_off: 0 },
        Span { start: 0x1030, end: 0x1040, kind: 1, cfa_off: 16, rbp_off: 0 },
    ];
    let segs = [Segment { vaddr: 0x1000, size: 0x1000, offset: 0x800 }];
    let rows = encode(&spans, &segs).unwrap();
    let got: Vec<(u32, u8, u16)> = rows.iter().map(|r| (r.pc, r.kind, r.cfa_off)).collect();
    assert_eq!(got, [(0x800, 1, 8), (0x820, 0, 0), (0x830, 1, 16), (0x840, 0, 0)]);
}

#[test]
fn truncated_and_foreign_files_are_errors() {
    let path = compile("trunc", &["-O2"]);
    let data = std::fs::read(&path).unwrap();
    for len in [0, 10, 64, data.len() / 2] {
        // An error or a table, never a panic.
        let _ = build(&data[..len]);
    }
    assert!(build(b"not an elf file at all").is_err());
    assert!(build_file(Path::new("/dev/null")).is_err());
}

/// `cargo test -p leakd-unwind -- --ignored --nocapture big_binary`: the
/// time to build the table of the biggest binary around.
#[test]
#[ignore]
fn big_binary() {
    let path = std::env::var_os("UNWIND_BIG").map(PathBuf::from).unwrap_or("/usr/bin/node".into());
    let t0 = std::time::Instant::now();
    let t = build_file(&path).unwrap();
    eprintln!(
        "{}: {} rows ({} KiB) from {} + {} FDEs, {} unsupported, in {:?}",
        path.display(),
        t.rows.len(),
        t.bytes() / 1024,
        t.eh_frame_fdes,
        t.debug_frame_fdes,
        t.unsupported,
        t0.elapsed()
    );
}
