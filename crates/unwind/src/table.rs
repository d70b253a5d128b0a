//! Compiling one ELF file's CFI into the walker's rows.
//!
//! Every FDE of `.eh_frame` is evaluated with gimli, then those of
//! `.debug_frame` that cover code `.eh_frame` does not (some builds put
//! CFI only there). `.eh_frame_hdr` is not needed: it is a search index
//! over the same FDEs, and the table built here is sorted by itself.
//!
//! Each row is reduced to what the BPF walker can do in a few loads (see
//! bpf/unwind.h); a row it cannot express becomes UNWIND_UNSUPPORTED, not
//! an approximation, so a walk stops there instead of inventing frames.
//! Addresses are turned into file offsets through the executable PT_LOAD
//! segments, consecutive identical rows are merged, and the gaps between
//! FDEs get UNWIND_NONE rows (the frame-pointer walk applies there).

use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection,
};
use goblin::elf::{program_header::PT_LOAD, Elf};
use leakd_common::{anyhow, bail, Context, Result};

use crate::sys;

pub type Row = sys::unwind_row;
type Slice<'a> = gimli::EndianSlice<'a, LittleEndian>;

const RBP: Register = Register(6);
const RSP: Register = Register(7);
const RA: Register = Register(16);

/// A module's rows, sorted by pc (file offsets), and what they came from.
#[derive(Default, Clone)]
pub struct Table {
    pub rows: Vec<Row>,
    /// FDEs read, from .eh_frame and from .debug_frame.
    pub eh_frame_fdes: usize,
    pub debug_frame_fdes: usize,
    /// Rows (before merging) the walker cannot evaluate.
    pub unsupported: usize,
}

impl Table {
    /// The row covering file offset `pc`, if any row starts at or before it.
    pub fn lookup(&self, pc: u64) -> Option<&Row> {
        let i = self.rows.partition_point(|r| u64::from(r.pc) <= pc);
        i.checked_sub(1).map(|i| &self.rows[i])
    }

    /// Bytes the rows take in the kernel.
    pub fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<Row>()
    }
}

/// Build the table of the ELF file at `path`.
pub fn build_file(path: &Path) -> Result<Table> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    build(&data).with_context(|| format!("{}: unwind tables", path.display()))
}

/// An executable segment: addresses [vaddr, vaddr + size) are at file
/// offsets [offset, offset + size).
struct Segment {
    vaddr: u64,
    size: u64,
    offset: u64,
}

fn to_offset(segs: &[Segment], vaddr: u64) -> Option<u64> {
    segs.iter()
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr <= s.size)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// One FDE row before encoding: [start, end) in virtual addresses.
struct Span {
    start: u64,
    end: u64,
    kind: u8,
    cfa_off: u16,
    rbp_off: i8,
}

/// Build the table of an ELF image held in memory.
pub fn build(data: &[u8]) -> Result<Table> {
    let elf = Elf::parse(data).map_err(|e| anyhow!("not a valid ELF file: {e}"))?;
    if !elf.is_64 || elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        bail!("not an x86-64 ELF file");
    }
    let segs: Vec<Segment> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.is_executable())
        .map(|p| Segment { vaddr: p.p_vaddr, size: p.p_filesz, offset: p.p_offset })
        .collect();
    let section = |name: &str| {
        elf.section_headers
            .iter()
            .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(name))
            .filter(|s| s.sh_type != goblin::elf::section_header::SHT_NOBITS)
    };
    let bytes = |s: &goblin::elf::SectionHeader| -> Result<&[u8]> {
        let start = usize::try_from(s.sh_offset)?;
        let end = start.checked_add(usize::try_from(s.sh_size)?).ok_or_else(|| anyhow!("bad"))?;
        data.get(start..end)
            .ok_or_else(|| anyhow!("section beyond the end of the file (truncated?)"))
    };
    let mut bases = BaseAddresses::default();
    if let Some(t) = section(".text") {
        bases = bases.set_text(t.sh_addr);
    }
    if let Some(g) = section(".got") {
        bases = bases.set_got(g.sh_addr);
    }
    let mut table = Table::default();
    let mut spans: Vec<Span> = Vec::new();
    let mut ctx = Box::new(UnwindContext::new());
    if let Some(s) = section(".eh_frame") {
        let eh = EhFrame::new(bytes(s).context(".eh_frame")?, LittleEndian);
        let bases = bases.clone().set_eh_frame(s.sh_addr);
        let mut entries = eh.entries(&bases);
        while let Some(entry) = entries.next().context("parsing .eh_frame")? {
            let CieOrFde::Fde(partial) = entry else { continue };
            let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else { continue };
            table.eh_frame_fdes += 1;
            fde_spans(&eh, &bases, &fde, &mut ctx, &mut spans, &mut table.unsupported);
        }
    }
    if let Some(s) = section(".debug_frame") {
        // Only for code .eh_frame leaves uncovered.
        let mut covered: Vec<(u64, u64)> = spans.iter().map(|s| (s.start, s.end)).collect();
        covered.sort_unstable();
        let is_covered = |a: u64| {
            let i = covered.partition_point(|c| c.0 <= a);
            i > 0 && covered[..i].iter().rev().take(4).any(|c| a < c.1)
        };
        let mut df = DebugFrame::new(bytes(s).context(".debug_frame")?, LittleEndian);
        df.set_address_size(8);
        let mut entries = df.entries(&bases);
        while let Some(entry) = entries.next().context("parsing .debug_frame")? {
            let CieOrFde::Fde(partial) = entry else { continue };
            let Ok(fde) = partial.parse(DebugFrame::cie_from_offset) else { continue };
            if fde.len() == 0 || is_covered(fde.initial_address()) {
                continue;
            }
            table.debug_frame_fdes += 1;
            fde_spans(&df, &bases, &fde, &mut ctx, &mut spans, &mut table.unsupported);
        }
    }
    spans.sort_by_key(|s| s.start);
    table.rows = encode(&spans, &segs)?;
    Ok(table)
}

/// Evaluate one FDE into spans (one per row of its table).
fn fde_spans<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    fde: &gimli::FrameDescriptionEntry<Slice<'a>>,
    ctx: &mut UnwindContext<usize>,
    spans: &mut Vec<Span>,
    unsupported: &mut usize,
) {
    let Ok(mut rows) = fde.rows(section, bases, ctx) else {
        // CFI gimli cannot evaluate: the whole function is unwalkable.
        *unsupported += 1;
        spans.push(Span {
            start: fde.initial_address(),
            end: fde.end_address(),
            kind: sys::unwind_kind_UNWIND_UNSUPPORTED as u8,
            cfa_off: 0,
            rbp_off: 0,
        });
        return;
    };
    loop {
        let row = match rows.next_row() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) => {
                *unsupported += 1;
                break;
            }
        };
        let (kind, cfa_off, rbp_off) = rule(section, row);
        if kind == sys::unwind_kind_UNWIND_UNSUPPORTED as u8 {
            *unsupported += 1;
        }
        spans.push(Span {
            start: row.start_address(),
            end: row.end_address(),
            kind,
            cfa_off,
            rbp_off,
        });
    }
}

/// The PLT's CFA expression, as GNU ld writes it: rsp + 8, plus 8 once
/// the lazy-binding push has run, i.e. when (rip & 15) >= N:
/// DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litN;
/// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus.
fn plt_threshold(expr: &[u8]) -> Option<u16> {
    match expr {
        [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (0x30..=0x3f).contains(lit) =>
        {
            Some(u16::from(lit - 0x30))
        }
        _ => None,
    }
}

fn rule<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> (u8, u16, i8) {
    const UNSUPPORTED: (u8, u16, i8) = (sys::unwind_kind_UNWIND_UNSUPPORTED as u8, 0, 0);
    match row.register(RA) {
        RegisterRule::Offset(-8) => {}
        RegisterRule::Undefined => return (sys::unwind_kind_UNWIND_END as u8, 0, 0),
        _ => return UNSUPPORTED,
    }
    let rbp_off = match row.register(RBP) {
        RegisterRule::Undefined | RegisterRule::SameValue => 0,
        RegisterRule::Offset(n) if n != 0 && n % 8 == 0 && (-1024..=1016).contains(&n) => {
            (n / 8) as i8
        }
        _ => return UNSUPPORTED,
    };
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(off) = u16::try_from(*offset) else { return UNSUPPORTED };
            let kind = match *register {
                RSP => sys::unwind_kind_UNWIND_CFA_RSP,
                RBP => sys::unwind_kind_UNWIND_CFA_RBP,
                _ => return UNSUPPORTED,
            };
            (kind as u8, off, rbp_off)
        }
        CfaRule::Expression(e) => {
            match e.get(section).ok().and_then(|e| plt_threshold(e.0.slice())) {
                Some(n) if rbp_off == 0 => (sys::unwind_kind_UNWIND_PLT as u8, n, 0),
                _ => UNSUPPORTED,
            }
        }
    }
}

/// Sorted spans (by start) to rows by file offset: a row where the rule
/// changes, an UNWIND_NONE row where a gap between FDEs starts.
fn encode(spans: &[Span], segs: &[Segment]) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::with_capacity(spans.len() / 2 + 16);
    let push = |rows: &mut Vec<Row>, pc: u64, kind: u8, cfa_off: u16, rbp_off: i8| -> Result<()> {
        let pc = u32::try_from(pc).map_err(|_| anyhow!("code beyond 4 GiB into the file"))?;
        if let Some(last) = rows.last_mut() {
            if last.pc == pc {
                // A later span at the same address wins (an empty one
                // before it, or a gap marker of the previous FDE).
                *last = Row { pc, kind, cfa_off, rbp_off };
                if rows.len() >= 2 {
                    let prev = rows[rows.len() - 2];
                    if same_rule(&prev, &rows[rows.len() - 1]) {
                        rows.pop();
                    }
                }
                return Ok(());
            }
            if last.kind == kind && last.cfa_off == cfa_off && last.rbp_off == rbp_off {
                return Ok(());
            }
        }
        rows.push(Row { pc, kind, cfa_off, rbp_off });
        Ok(())
    };
    let none = sys::unwind_kind_UNWIND_NONE as u8;
    let mut end_of_last: Option<u64> = None;
    for s in spans {
        if s.end <= s.start {
            continue;
        }
        let (Some(start), Some(end)) = (to_offset(segs, s.start), to_offset(segs, s.end)) else {
            continue;
        };
        if let Some(e) = end_of_last {
            if e < start {
                push(&mut rows, e, none, 0, 0)?;
            }
        }
        push(&mut rows, start, s.kind, s.cfa_off, s.rbp_off)?;
        end_of_last = Some(end_of_last.map_or(end, |e| e.max(end)));
    }
    if let Some(e) = end_of_last {
        push(&mut rows, e, none, 0, 0)?;
    }
    Ok(rows)
}

fn same_rule(a: &Row, b: &Row) -> bool {
    a.kind == b.kind && a.cfa_off == b.cfa_off && a.rbp_off == b.rbp_off
}

#[cfg(test)]
mod tests;
