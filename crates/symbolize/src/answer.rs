//! What symres knows about an address, and how it is written into a frame.
//!
//! These types are shared by every part of symres: the resolvers make
//! answers, the prebuilt index stores and replays them, the line writer
//! copies them into frames. They live here, below all of those, so that
//! each imports them and none imports another for them.

use std::sync::Arc;

use crate::json::write_str;
use leakd_common::text::push_hex_string;

/// Why a frame was left unresolved (the `reason` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The address is in no file mapping (anonymous memory, outside every
    /// segment of the module, or the process is gone and the frame has no
    /// module and offset).
    Unmapped,
    /// The file was found but has neither symbols nor DWARF for the address.
    NoSymbols,
    /// The file's build id differs from the frame's, and no debug file with
    /// the frame's build id was found.
    BuildIdMismatch,
    /// The file does not exist (or cannot be read).
    FileMissing,
    /// The file is not a valid ELF file.
    CorruptElf,
    /// The frame has only `addr` and `pid`, and that process is gone.
    NoProcess,
    /// The process's /proc/PID/maps cannot be read (not ours to read).
    NoPermission,
    /// The frame has a field symres reads with a value it cannot take (an
    /// address that is not one, a module without its offset, ...); the
    /// message on stderr says which.
    Malformed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unmapped => "unmapped",
            Reason::NoSymbols => "no_symbols",
            Reason::BuildIdMismatch => "build_id_mismatch",
            Reason::FileMissing => "file_missing",
            Reason::CorruptElf => "corrupt_elf",
            Reason::NoProcess => "no_process",
            Reason::NoPermission => "no_permission",
            Reason::Malformed => "malformed",
        }
    }
}

/// One inlined call, as DWARF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    pub sym: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}

/// What is known about one code address.
///
/// `file`/`line` are the location in the function `sym` itself: when code of
/// other functions was inlined there, that is the line of the outermost
/// inlined call, and `inlined` lists the inlined functions innermost first
/// (outermost last), each with the location within it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub sym: Option<Arc<str>>,
    pub sym_offset: Option<u64>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    pub inlined: Vec<Inlined>,
    /// The fields above as JSON object members, rendered once and copied
    /// into every frame with this answer; and the length of its first
    /// member, `sym` (0 without), after which `sym_offset` is (a cache of
    /// answers keeps the text cut there).
    pub(crate) json: std::sync::OnceLock<(Box<[u8]>, usize)>,
}

impl Resolution {
    /// The same place, with `sym_offset` moved by `by` bytes: a return
    /// address is looked up one byte back (inside the call instruction, so
    /// file/line are those of the call), but its offset is reported as is.
    /// Module answers are cached shifted, so this runs once per address
    /// (kernel answers are not cached).
    pub fn shifted(self, by: u64) -> Resolution {
        Resolution {
            sym_offset: self.sym_offset.map(|o| o.wrapping_add(by)),
            json: Default::default(),
            ..self
        }
    }

    /// `"sym":...,"sym_offset":...` (no braces), as symres writes them into
    /// a frame. Rendered once per answer and reused for every frame.
    pub fn json_fields(&self) -> &str {
        // Made of strs and ASCII: always UTF-8.
        std::str::from_utf8(self.json_bytes()).unwrap_or_default()
    }

    /// `json_fields` as bytes (what a line is written from).
    pub fn json_bytes(&self) -> &[u8] {
        &self.rendered().0
    }

    /// `json_bytes`, and the length of its `sym` member (0 without),
    /// which `sym_offset` follows.
    pub(crate) fn rendered(&self) -> &(Box<[u8]>, usize) {
        self.json.get_or_init(|| self.render())
    }

    /// The members `write_answer` writes for the parts of this answer,
    /// written straight into one reused buffer and copied out at their
    /// size: parts in a buffer of their own, a vector of ranges, a UTF-8
    /// check and a shrinking copy were a tenth of a cold run over a large
    /// build.
    fn render(&self) -> (Box<[u8]>, usize) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|o| {
            let Ok(mut o) = o.try_borrow_mut() else {
                let mut o = Vec::new();
                let sym = self.render_into(&mut o);
                return (o.into_boxed_slice(), sym);
            };
            o.clear();
            let sym = self.render_into(&mut o);
            (Box::from(&o[..]), sym)
        })
    }

    /// Render into `o` (empty); the length of the `sym` member.
    fn render_into(&self, o: &mut Vec<u8>) -> usize {
        let sep = |o: &mut Vec<u8>| {
            if !o.is_empty() {
                o.push(b',');
            }
        };
        if let Some(sym) = &self.sym {
            o.extend_from_slice(b"\"sym\":");
            write_str(o, sym);
        }
        let sym_len = o.len();
        if let Some(x) = self.sym_offset {
            sep(o);
            o.extend_from_slice(b"\"sym_offset\":");
            push_hex_string(o, x);
        }
        if let Some(file) = &self.file {
            sep(o);
            o.extend_from_slice(b"\"file\":");
            write_str(o, file);
        }
        if let Some(line) = self.line {
            sep(o);
            o.extend_from_slice(b"\"line\":");
            push_decimal(o, line);
        }
        if !self.inlined.is_empty() {
            sep(o);
            o.extend_from_slice(b"\"inlined\":[");
            for (i, f) in self.inlined.iter().enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                o.push(b'{');
                members_into(o, f.sym.as_deref(), f.file.as_deref(), f.line);
                o.push(b'}');
            }
            o.push(b']');
        }
        sym_len
    }
}

/// `n` in decimal (as `write!` would, without its machinery).
fn push_decimal(o: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    o.extend_from_slice(&digits[at..]);
}

/// The members an answer adds to a frame, from their parts: `sym`,
/// `sym_offset`, `file`, `line` and `inlined`, in that order, each left
/// out when absent (an empty part). A part is member text as [`members`]
/// writes it; each inlined call is the members of one element of
/// `"inlined"`. Resolutions and index answers are both written by this,
/// so they agree byte for byte. False (and `o` as it was) when an inlined
/// part is missing (`None`, from a damaged index).
pub(crate) fn write_answer<'a>(
    o: &mut Vec<u8>,
    sym: &[u8],
    sym_offset: Option<u64>,
    file: &[u8],
    line: &[u8],
    inlined: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) -> bool {
    let base = o.len();
    let sep = |o: &mut Vec<u8>| {
        if o.len() > base {
            o.push(b',');
        }
    };
    o.extend_from_slice(sym);
    if let Some(x) = sym_offset {
        sep(o);
        o.extend_from_slice(b"\"sym_offset\":");
        push_hex_string(o, x);
    }
    for t in [file, line] {
        if !t.is_empty() {
            sep(o);
            o.extend_from_slice(t);
        }
    }
    if inlined.len() > 0 {
        sep(o);
        o.extend_from_slice(b"\"inlined\":[");
        for (i, t) in inlined.enumerate() {
            let Some(t) = t else {
                o.truncate(base);
                return false;
            };
            if i > 0 {
                o.push(b',');
            }
            o.push(b'{');
            o.extend_from_slice(t);
            o.push(b'}');
        }
        o.push(b']');
    }
    true
}

/// The known ones of `"sym"`, `"file"` and `"line"`, as object members
/// (empty when none is).
pub(crate) fn members(sym: Option<&str>, file: Option<&str>, line: Option<u32>) -> Vec<u8> {
    let mut o = Vec::new();
    members_into(&mut o, sym, file, line);
    o
}

/// `members`, appended to `o`.
fn members_into(o: &mut Vec<u8>, sym: Option<&str>, file: Option<&str>, line: Option<u32>) {
    let base = o.len();
    let key = |o: &mut Vec<u8>, k: &str| {
        if o.len() > base {
            o.push(b',');
        }
        write_str(o, k);
        o.push(b':');
    };
    for (k, v) in [("sym", sym), ("file", file)] {
        if let Some(v) = v {
            key(o, k);
            write_str(o, v);
        }
    }
    if let Some(l) = line {
        key(o, "line");
        push_decimal(o, l);
    }
}

pub type Outcome = Result<Arc<Resolution>, Reason>;

/// A symbol's name demangled, and its `sym` member as a frame gets it,
/// made once per symbol (by whichever thread meets it first): an answer
/// from the symbol alone, the only kind a binary without line info gives,
/// is then that member copied and its `sym_offset` (escaping the name for
/// each address cost more than looking it up).
#[derive(Debug, Clone)]
pub struct SymText {
    pub name: Arc<str>,
    /// `"sym":"..."`, or nothing for an empty name (none: DWARF may name
    /// the function).
    pub json: Arc<[u8]>,
}

impl SymText {
    /// Made from the name, copied once into each form (the JSON written in
    /// a buffer kept for the next name).
    pub fn new(name: &str) -> SymText {
        thread_local! {
            static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let json = |o: &mut Vec<u8>| {
            o.clear();
            if !name.is_empty() {
                o.extend_from_slice(b"\"sym\":");
                write_str(o, name);
            }
            Arc::<[u8]>::from(&o[..])
        };
        let json = JSON.with(|o| match o.try_borrow_mut() {
            Ok(mut o) => json(&mut o),
            Err(_) => json(&mut Vec::new()),
        });
        SymText { name: name.into(), json }
    }
}

/// A frame resolved through a live process's maps: the module and file
/// offset found there, and the outcome.
#[derive(Debug, Clone)]
pub struct PidFrame<T = Arc<Resolution>> {
    pub module: Option<String>,
    pub offset: Option<u64>,
    pub outcome: Result<T, Reason>,
}

/// What symres writes into a frame of a line: an answer made from symbols
/// and DWARF, or one read ready-made from an index.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Made(Arc<Resolution>),
    /// JSON object members (checked, but not known to be UTF-8 if the
    /// index file changed since).
    Text(Arc<[u8]>),
    /// Such text, written at this range of the line's buffer of answers
    /// (a new frame's answer costs no allocation of its own).
    Written(std::ops::Range<usize>),
}

impl Answer {
    /// The answer as JSON object members (`texts`: the buffer `Written`
    /// answers are in).
    pub(crate) fn json<'a>(&'a self, texts: &'a [u8]) -> &'a [u8] {
        match self {
            Answer::Made(r) => r.json_bytes(),
            Answer::Text(t) => t,
            Answer::Written(r) => texts.get(r.clone()).unwrap_or_default(),
        }
    }

    /// The answer standing on its own (to be kept past the line).
    pub(crate) fn owned(&self, texts: &[u8]) -> Answer {
        match self {
            Answer::Written(_) => Answer::Text(self.json(texts).into()),
            a => a.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_shift_only_the_offset() {
        let r = Resolution {
            sym: Some("f".into()),
            sym_offset: Some(0x10),
            file: Some("a.c".into()),
            line: Some(3),
            inlined: vec![Inlined { sym: Some("g".into()), file: None, line: Some(4) }],
            json: Default::default(),
        };
        assert_eq!(
            r.json_fields(),
            r#""sym":"f","sym_offset":"0x10","file":"a.c","line":3,"inlined":[{"sym":"g","line":4}]"#
        );
        assert_eq!(
            r.clone().shifted(1).json_fields(),
            r#""sym":"f","sym_offset":"0x11","file":"a.c","line":3,"inlined":[{"sym":"g","line":4}]"#
        );
        let bare = Resolution { file: Some("a.c".into()), ..Default::default() };
        assert_eq!(bare.json_fields(), r#""file":"a.c""#);
        let off = Resolution { sym_offset: Some(0), line: Some(1), ..Default::default() };
        assert_eq!(off.json_fields(), r#""sym_offset":"0x0","line":1"#);
    }

    /// An answer rendered straight agrees with the one `write_answer`
    /// makes from its parts (as the index writes answers), escapes and
    /// all, and numbers are written as `write!` writes them.
    #[test]
    fn rendered_answers_are_write_answers() {
        for n in [0, 7, 10, 99, 100, 65535, u32::MAX] {
            let mut o = Vec::new();
            push_decimal(&mut o, n);
            assert_eq!(o, n.to_string().as_bytes());
        }
        let f = |s: &str| Some(Arc::<str>::from(s));
        let inl = |sym, file, line| Inlined { sym, file, line };
        for r in [
            Resolution::default(),
            Resolution { sym_offset: Some(0), ..Default::default() },
            Resolution {
                sym: f("a\"b\\c\u{1}é"),
                sym_offset: Some(0xff),
                file: f("/x/y.rs"),
                line: Some(0),
                inlined: vec![
                    inl(f("g"), None, Some(12)),
                    inl(None, f("h\"i"), None),
                    inl(None, None, None),
                ],
                json: Default::default(),
            },
            Resolution {
                line: Some(3),
                inlined: vec![inl(f("k"), None, None)],
                ..Default::default()
            },
        ] {
            let m = |sym: Option<&Arc<str>>, file: Option<&Arc<str>>, line| {
                members(sym.map(|s| &**s), file.map(|s| &**s), line)
            };
            let parts: Vec<Vec<u8>> =
                r.inlined.iter().map(|i| m(i.sym.as_ref(), i.file.as_ref(), i.line)).collect();
            let mut want = Vec::new();
            assert!(write_answer(
                &mut want,
                &m(r.sym.as_ref(), None, None),
                r.sym_offset,
                &m(None, r.file.as_ref(), None),
                &m(None, None, r.line),
                parts.iter().map(|p| Some(&p[..])),
            ));
            assert_eq!(r.json_bytes(), &want[..], "{r:?}");
        }
    }
}
