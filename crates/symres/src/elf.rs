//! One ELF file, reduced to what symbolization needs and nothing that borrows
//! the file: load segments (to turn the file offsets our tools report into
//! ELF addresses), a sorted function table, the build id, the debug link, and
//! the DWARF sections as shared buffers for addr2line.
//!
//! The file is read into memory rather than mapped: a mapped binary that is
//! truncated or replaced under us would kill the process with SIGBUS, and
//! "never crash on bad input" includes files changing on disk.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;

use gimli::{EndianReader, RunTimeEndian};
use goblin::elf::{program_header::PT_LOAD, section_header, sym, Elf};

/// The reader addr2line works on: sections copied (or decompressed) into
/// reference-counted buffers owned by the module.
pub type Reader = EndianReader<RunTimeEndian, Arc<[u8]>>;

#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    addr: u64,
    size: u64,
    name_start: u32,
    name_len: u32,
    rank: u8,
}

/// A function table sorted by address, names in one arena.
#[derive(Default)]
#[allow(clippy::len_without_is_empty)]
pub struct SymbolTable {
    syms: Vec<Symbol>,
    names: String,
}

impl SymbolTable {
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    fn push(&mut self, name: &str, addr: u64, size: u64, rank: u8) {
        let (Ok(start), Ok(len)) = (u32::try_from(self.names.len()), u32::try_from(name.len())) else {
            return;
        };
        self.names.push_str(name);
        self.syms.push(Symbol { addr, size, name_start: start, name_len: len, rank });
    }

    /// Sort by address; of symbols at the same address keep the best one
    /// (sized over unsized, global over weak over local, then the first).
    fn finish(&mut self) {
        self.syms.sort_by(|a, b| {
            a.addr.cmp(&b.addr).then((b.size > 0).cmp(&(a.size > 0))).then(a.rank.cmp(&b.rank))
        });
        self.syms.dedup_by_key(|s| s.addr);
        self.syms.shrink_to_fit();
    }

    /// The function containing `addr`: (index, start address).
    pub fn lookup(&self, addr: u64) -> Option<(usize, u64)> {
        let i = self.syms.partition_point(|s| s.addr <= addr).checked_sub(1)?;
        let s = &self.syms[i];
        if s.size > 0 && addr - s.addr >= s.size {
            return None;
        }
        Some((i, s.addr))
    }

    pub fn name(&self, i: usize) -> &str {
        let s = &self.syms[i];
        let start = s.name_start as usize;
        self.names.get(start..start + s.name_len as usize).unwrap_or("")
    }
}

/// Why a file could not be used.
#[derive(Debug)]
pub enum LoadError {
    Missing(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing(e) => write!(f, "{e}"),
            LoadError::Corrupt(e) => write!(f, "not a usable ELF file: {e}"),
        }
    }
}

pub struct ElfFile {
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<Segment>,
    pub symbols: SymbolTable,
    /// (file name, CRC32) from .gnu_debuglink.
    pub debuglink: Option<(String, u32)>,
    /// DWARF sections by name, present only when the file has .debug_info.
    pub dwarf: Option<DwarfSections>,
    /// Set when the debug sections were there but unusable.
    pub dwarf_error: Option<String>,
}

pub struct DwarfSections {
    sections: Vec<(String, Arc<[u8]>)>,
    endian: RunTimeEndian,
}

impl DwarfSections {
    pub fn context(&self) -> Result<addr2line::Context<Reader>, gimli::Error> {
        let empty: Arc<[u8]> = Arc::from(Vec::new());
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
            let data = self.sections.iter().find(|(s, _)| s == id.name()).map_or_else(|| empty.clone(), |(_, d)| d.clone());
            Ok(EndianReader::new(data, self.endian))
        })?;
        addr2line::Context::from_dwarf(dwarf)
    }
}

impl ElfFile {
    /// Read and parse `path`. Never panics on malformed files (goblin's
    /// parser is additionally fenced off with catch_unwind by the caller).
    pub fn open(path: &std::path::Path) -> Result<ElfFile, LoadError> {
        let data = std::fs::read(path).map_err(LoadError::Missing)?;
        ElfFile::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<ElfFile, LoadError> {
        let elf = Elf::parse(data).map_err(|e| LoadError::Corrupt(e.to_string()))?;
        let endian = if elf.little_endian { RunTimeEndian::Little } else { RunTimeEndian::Big };

        let segments = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| Segment { offset: p.p_offset, vaddr: p.p_vaddr, filesz: p.p_filesz })
            .collect();

        let mut symbols = SymbolTable::default();
        for (syms, strtab) in [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)] {
            for s in syms.iter() {
                let t = s.st_type();
                if !(t == sym::STT_FUNC || t == sym::STT_GNU_IFUNC) || s.st_shndx == 0 || s.st_value == 0 {
                    continue;
                }
                let Some(name) = strtab.get_at(s.st_name) else { continue };
                if name.is_empty() {
                    continue;
                }
                let rank = match s.st_bind() {
                    sym::STB_GLOBAL => 0,
                    sym::STB_WEAK => 1,
                    _ => 2,
                };
                symbols.push(name, s.st_value, s.st_size, rank);
            }
        }
        symbols.finish();

        let build_id = build_id(&elf, data);

        let mut debuglink = None;
        let mut debug_secs = Vec::new();
        let mut has_info = false;
        let mut dwarf_error = None;
        for sh in &elf.section_headers {
            let Some(name) = elf.shdr_strtab.get_at(sh.sh_name) else { continue };
            if name == ".gnu_debuglink" {
                debuglink = section_bytes(data, sh).and_then(|b| parse_debuglink(b, elf.little_endian));
                continue;
            }
            if !name.starts_with(".debug_") && !name.starts_with(".zdebug_") {
                continue;
            }
            if name.starts_with(".zdebug_") {
                // Old GNU compression, long superseded by SHF_COMPRESSED.
                dwarf_error = Some(format!("{name}: .zdebug compression is not supported"));
                continue;
            }
            if sh.sh_type == section_header::SHT_NOBITS {
                continue;
            }
            let bytes = match section_bytes(data, sh) {
                Some(b) => b,
                None => {
                    dwarf_error = Some(format!("{name} lies outside the file"));
                    continue;
                }
            };
            let bytes = if sh.sh_flags & u64::from(section_header::SHF_COMPRESSED) != 0 {
                match decompress(bytes, elf.is_64, elf.little_endian) {
                    Ok(b) => Cow::Owned(b),
                    Err(e) => {
                        dwarf_error = Some(format!("{name}: {e}"));
                        continue;
                    }
                }
            } else {
                Cow::Borrowed(bytes)
            };
            has_info |= name == ".debug_info";
            debug_secs.push((name.to_string(), Arc::from(bytes.into_owned())));
        }
        let dwarf = has_info.then_some(DwarfSections { sections: debug_secs, endian });

        Ok(ElfFile { build_id, segments, symbols, debuglink, dwarf, dwarf_error })
    }
}

/// The ELF address that file offset `offset` is loaded at.
pub fn offset_to_vaddr(segments: &[Segment], offset: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| offset >= s.offset && offset - s.offset < s.filesz.max(1))
        .and_then(|s| s.vaddr.checked_add(offset - s.offset))
}

fn section_bytes<'a>(data: &'a [u8], sh: &section_header::SectionHeader) -> Option<&'a [u8]> {
    let start = usize::try_from(sh.sh_offset).ok()?;
    let len = usize::try_from(sh.sh_size).ok()?;
    data.get(start..start.checked_add(len)?)
}

/// NT_GNU_BUILD_ID from the note sections, or from PT_NOTE segments when
/// the section headers are gone.
fn build_id(elf: &Elf<'_>, data: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let find = |it: Option<goblin::elf::note::NoteIterator<'_>>| -> Option<Vec<u8>> {
        it?.take(64)
            .map_while(Result::ok)
            .find(|n| n.n_type == NT_GNU_BUILD_ID && n.name == "GNU" && !n.desc.is_empty())
            .map(|n| n.desc.to_vec())
    };
    find(elf.iter_note_sections(data, Some(".note.gnu.build-id")))
        .or_else(|| find(elf.iter_note_sections(data, None)))
        .or_else(|| find(elf.iter_note_headers(data)))
}

fn parse_debuglink(b: &[u8], little: bool) -> Option<(String, u32)> {
    let nul = b.iter().position(|&c| c == 0)?;
    let name = std::str::from_utf8(&b[..nul]).ok()?.to_string();
    let crc_at = (nul + 1).div_ceil(4) * 4;
    let crc: [u8; 4] = b.get(crc_at..crc_at + 4)?.try_into().ok()?;
    let crc = if little { u32::from_le_bytes(crc) } else { u32::from_be_bytes(crc) };
    (!name.is_empty() && !name.contains('/')).then_some((name, crc))
}

/// SHF_COMPRESSED sections: an Elf{32,64}_Chdr, then zlib data.
fn decompress(b: &[u8], is_64: bool, little: bool) -> Result<Vec<u8>, String> {
    const ELFCOMPRESS_ZLIB: u32 = 1;
    let rd32 = |at: usize| -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
    };
    let rd64 = |at: usize| -> Option<u64> {
        let a: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if little { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) })
    };
    let (ty, size, hdr) = if is_64 {
        (rd32(0), rd64(8), 24)
    } else {
        (rd32(0), rd32(4).map(u64::from), 12)
    };
    let (Some(ty), Some(size)) = (ty, size) else { return Err("truncated compression header".into()) };
    if ty != ELFCOMPRESS_ZLIB {
        return Err(format!("unsupported compression type {ty}"));
    }
    // Refuse absurd sizes from corrupt headers before allocating.
    if size > (b.len() as u64).saturating_mul(1032).max(1 << 20) {
        return Err("implausible uncompressed size".into());
    }
    let mut out = Vec::with_capacity(size as usize);
    flate2::read::ZlibDecoder::new(b.get(hdr..).unwrap_or_default())
        .take(size)
        .read_to_end(&mut out)
        .map_err(|e| format!("zlib: {e}"))?;
    if out.len() as u64 != size {
        return Err("compressed data is truncated".into());
    }
    Ok(out)
}

/// The CRC32 gdb checks .gnu_debuglink targets against.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debuglink_is_name_then_aligned_crc() {
        let mut b = b"prog.debug\0\0".to_vec();
        b.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        assert_eq!(parse_debuglink(&b, true), Some(("prog.debug".to_string(), 0x1234_5678)));
        assert_eq!(parse_debuglink(b"x\0", true), None);
    }

    #[test]
    fn symbol_lookup_respects_sizes() {
        let mut t = SymbolTable::default();
        t.push("b", 0x2000, 0x10, 0);
        t.push("a", 0x1000, 0x100, 0);
        t.push("a_local_alias", 0x1000, 0x100, 2);
        t.push("nosize", 0x3000, 0, 0);
        t.finish();
        assert_eq!(t.lookup(0x1000).map(|(i, s)| (t.name(i), s)), Some(("a", 0x1000)));
        assert_eq!(t.lookup(0x10ff).map(|(i, _)| t.name(i)), Some("a"));
        assert_eq!(t.lookup(0x1100), None);
        assert_eq!(t.lookup(0x2008).map(|(i, _)| t.name(i)), Some("b"));
        assert_eq!(t.lookup(0x3100).map(|(i, _)| t.name(i)), Some("nosize"));
        assert_eq!(t.lookup(0xfff), None);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(ElfFile::parse(b"\x7fELF\x02\x01\x01garbage"), Err(LoadError::Corrupt(_))));
        assert!(matches!(ElfFile::parse(b""), Err(LoadError::Corrupt(_))));
    }
}
