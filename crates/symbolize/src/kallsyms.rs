//! Kernel symbols from /proc/kallsyms, read once. Without privileges the
//! kernel prints every address as zero; that is reported as no symbols
//! rather than resolving everything to the first symbol.

use std::path::Path;
use std::sync::Arc;

use crate::answer::{Reason, Resolution};

/// Lowest kernel address on x86-64 (and arm64 with 48-bit VAs).
pub const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// kallsyms has no sizes, so a symbol is taken to extend to the next one;
/// an address further than this past its symbol is not code we know of
/// (past the end of a module's text, say), not a huge function.
const MAX_SYMBOL_SPAN: u64 = 1 << 20;

/// Markers of the end of the kernel's text sections: nothing after them is
/// part of the symbol.
const END_MARKERS: [&str; 2] = ["_etext", "_einittext"];

pub struct Kallsyms {
    syms: Vec<(u64, Arc<str>)>,
}

impl Kallsyms {
    pub fn load(path: &Path) -> Result<Kallsyms, Reason> {
        let text = std::fs::read_to_string(path).map_err(|_| Reason::FileMissing)?;
        let k = Kallsyms::parse(&text);
        if k.syms.is_empty() {
            return Err(Reason::NoSymbols);
        }
        Ok(k)
    }

    pub fn parse(text: &str) -> Kallsyms {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(ty, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr == 0 {
                continue;
            }
            syms.push((addr, Arc::from(name)));
        }
        syms.sort_by_key(|s| s.0);
        Kallsyms { syms }
    }

    pub fn lookup(&self, addr: u64) -> Result<Resolution, Reason> {
        let i =
            self.syms.partition_point(|s| s.0 <= addr).checked_sub(1).ok_or(Reason::Unmapped)?;
        let (start, name) = &self.syms[i];
        if addr - start > MAX_SYMBOL_SPAN || END_MARKERS.contains(&name.as_ref()) {
            return Err(Reason::Unmapped);
        }
        Ok(Resolution {
            sym: Some(name.clone()),
            sym_offset: Some(addr - start),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_symbols_only_and_zeroes_ignored() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\t[ext4]\nffffffff81000200 T _etext\n\
             ffffffff82000000 D some_data\nffffffffc0000000 t mod_fn\t[m]\nffffffffc0000100 t mod_last\t[m]\n\
             0000000000000000 T hidden\n",
        );
        let r = k.lookup(0xffffffff81000123).unwrap();
        assert_eq!(r.sym.as_deref(), Some("do_thing"));
        assert_eq!(r.sym_offset, Some(0x23));
        assert_eq!(k.lookup(0xffffffff81000000).unwrap().sym.as_deref(), Some("_stext"));
        assert_eq!(k.lookup(0x1000).unwrap_err(), Reason::Unmapped);
        // Past the end of text, far past a symbol, past the last one.
        assert_eq!(k.lookup(0xffffffff81000300).unwrap_err(), Reason::Unmapped);
        assert_eq!(k.lookup(0xffffffffc0000010).unwrap().sym.as_deref(), Some("mod_fn"));
        assert_eq!(k.lookup(0xffffffffc0000110).unwrap().sym.as_deref(), Some("mod_last"));
        assert_eq!(k.lookup(u64::MAX).unwrap_err(), Reason::Unmapped);
        assert_eq!(k.lookup(0xffffffffc0000000 - 1).unwrap_err(), Reason::Unmapped);
        assert!(Kallsyms::parse("0000000000000000 T a\n").syms.is_empty());
    }
}
