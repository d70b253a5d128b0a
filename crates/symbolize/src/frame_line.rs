//! One input line: find the frames, resolve them, write them back.
//!
//! The input is written by other programs (ours, and whatever a user pipes
//! in), so every field is checked before it is trusted: a frame with a
//! field of the wrong type gets `"reason":"malformed"` and a message naming
//! the field, and the other frames of its line are resolved as usual. What
//! is not a frame (an array element that is not an object, an object with
//! neither addr, module nor offset) is left as it is: a line with nothing
//! else passes through unchanged.

use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHasher};

use crate::answer::{Answer, Reason};
use crate::frame_scan::{self as scan, Item, Member, Scan, Span};
use crate::json::write_str;
use crate::kallsyms::KERNEL_START;
use crate::resolver::{AddrResolver, BuildId, ModuleFrame};
use leakd_common::text::push_hex_string;

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError(pub String);

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LineError {}

/// Fields symres writes; stale ones from an earlier run are replaced.
const OUR_FIELDS: [&str; 6] = ["sym", "sym_offset", "file", "line", "inlined", "reason"];

/// What symres adds to one frame.
#[derive(Clone)]
enum Fields {
    /// The answer (shifted to the frame's address already).
    Resolved(Answer),
    Reason(Reason),
}

/// What symres adds to one frame: `module` and `offset` when they were
/// found through the process's maps, then the answer.
struct Added {
    module: Option<String>,
    offset: Option<u64>,
    fields: Fields,
}

/// One frame of the line and its additions, placed before its closing
/// brace.
struct Edit {
    open: usize,
    close: usize,
    /// The frame has members (a comma goes before the additions).
    has_members: bool,
    /// The frame's members when some are left out (see `replaced`): the
    /// frame is then rewritten from the others instead of copied.
    stale: Option<std::ops::Range<usize>>,
    added: Added,
}

/// A value of the line as written, shortened for a message.
fn short(text: &str, v: Span) -> String {
    let s = &text[v.start..v.end];
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(40).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// What lines need besides the resolver, kept from line to line: buffers,
/// and the answers by frame text.
#[derive(Default)]
pub struct Scratch {
    scan: Scan,
    edits: Vec<Edit>,
    /// The line's answers written as text (see `Answer::Written`).
    texts: Vec<u8>,
    frames: FrameCache,
    /// The last line's frames left unresolved as malformed: where, and why.
    bad: Vec<String>,
}

impl Scratch {
    /// The last line's frames left unresolved as malformed ("reason":
    /// "malformed"): each as `stack[2].addr: why`.
    pub fn bad_frames(&self) -> &[String] {
        &self.bad
    }
}

/// Answers by frame text. A stream repeats its frames (the same stacks in
/// every report, the same call sites in every event), and a frame seen
/// before then costs a hash and a comparison instead of the parsing of its
/// fields and the lookups. A frame is kept when it comes a second time:
/// copying every frame of a stream of new addresses cost more than the
/// cache saved. Frames answered through a live process's maps are not
/// kept: the maps change.
#[derive(Default)]
struct FrameCache {
    /// By the line's pid and the frame text's hash: the text, the answer.
    map: FxHashMap<(Option<u32>, u64), CachedFrame>,
    /// Frames seen once: the hash of each key, in a slot of its own (a
    /// slot taken by another frame forgets the one before: a stream of new
    /// frames costs one store each, not a set that grows and rehashes).
    seen: Vec<u64>,
    /// The text of kept frames that are flat objects, by the hash of their
    /// first `KNOWN_PREFIX` bytes: found again, they are not scanned again.
    known: FxHashMap<u64, Arc<[u8]>>,
}

/// Bytes hashed to find a known frame (tracer frames are longer, and differ
/// within them: their address comes first).
const KNOWN_PREFIX: usize = 32;

/// A frame's text and its answer.
type CachedFrame = (Arc<[u8]>, Fields);

/// Slots of frames seen once (see `FrameCache::seen`).
const SEEN_SLOTS: usize = 1 << 14;

/// Frames remembered before the cache is reset.
const MAX_CACHED_FRAMES: usize = 1 << 16;

impl FrameCache {
    fn key(pid: Option<u32>, frame: &[u8]) -> (Option<u32>, u64) {
        let mut h = FxHasher::default();
        h.write(frame);
        (pid, h.finish())
    }

    fn get(&self, key: (Option<u32>, u64), frame: &[u8]) -> Option<&Fields> {
        let (text, fields) = self.map.get(&key)?;
        (**text == *frame).then_some(fields)
    }

    /// Keep `frame`'s answer if it was seen before (`fields` makes it).
    fn put(&mut self, key: (Option<u32>, u64), frame: &[u8], fields: impl FnOnce() -> Fields) {
        if self.seen.is_empty() {
            self.seen = vec![0; SEEN_SLOTS];
        }
        let mut h = FxHasher::default();
        h.write_u64(key.1);
        h.write_u32(key.0.map_or(0, |p| p.wrapping_add(1)));
        // Never 0, an empty slot.
        let h = h.finish() | 1;
        let slot = &mut self.seen[(h >> 32) as usize % SEEN_SLOTS];
        if *slot != h {
            *slot = h;
            return;
        }
        let fields = fields();
        if self.map.len() >= MAX_CACHED_FRAMES {
            self.map.clear();
            self.known.clear();
        }
        let text: Arc<[u8]> = frame.into();
        // Flat: no value inside is an object or array (strings holding a
        // brace count against it too, which only costs a scan).
        if frame.len() >= KNOWN_PREFIX && !frame[1..].iter().any(|&b| b == b'{' || b == b'[') {
            self.known.insert(Self::prefix_hash(frame), text.clone());
        }
        self.map.insert(key, (text, fields));
    }

    fn prefix_hash(b: &[u8]) -> u64 {
        let mut h = FxHasher::default();
        h.write(&b[..KNOWN_PREFIX]);
        h.finish()
    }

    /// The length of the kept flat frame `rest` starts with, if any.
    fn known_len(&self, rest: &[u8]) -> Option<usize> {
        if rest.len() < KNOWN_PREFIX || self.known.is_empty() {
            return None;
        }
        let text = self.known.get(&Self::prefix_hash(rest))?;
        rest.starts_with(text).then_some(text.len())
    }
}

/// Resolve every frame of `line`. `Ok(None)`: the line has no frames and is
/// to be written unchanged.
#[cfg(test)]
pub fn process(resolver: &mut AddrResolver, line: &[u8]) -> Result<Option<Vec<u8>>, LineError> {
    let mut out = Vec::new();
    Ok(process_into(resolver, &mut Scratch::default(), line, &mut out)?.then_some(out))
}

/// serde_json's account of why `line` is not JSON.
fn not_json(line: &[u8]) -> LineError {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Err(e) => LineError(format!("not JSON: {e}")),
        // The scanner and serde_json disagree (a test guards against it).
        Ok(_) => LineError("not JSON".into()),
    }
}

/// Resolve every frame of `line`, appending the rewritten line to `out` (a
/// buffer the caller reuses) and returning whether it did; `out` is left as
/// it was when the line has no frames (to be written unchanged) or is
/// rejected.
///
/// Everything but the frames' additions is copied from the line as it
/// came, byte for byte.
pub fn process_into(
    resolver: &mut AddrResolver,
    scratch: &mut Scratch,
    line: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, LineError> {
    let text = std::str::from_utf8(line).map_err(|_| not_json(line))?;
    let Scratch { scan: s, edits, texts, frames, bad } = scratch;
    bad.clear();
    s.scan(text, &|rest| frames.known_len(rest)).map_err(|_| not_json(line))?;
    if !s.is_object {
        return Err(LineError("not a JSON object".into()));
    }
    // A line without frames goes out as it came, whatever its pid says.
    if s.items.is_empty() {
        return Ok(false);
    }
    let pid = match s.pid {
        None => Ok(None),
        Some(v) if &text[v.start..v.end] == "null" => Ok(None),
        Some(v) => {
            text[v.start..v.end].parse::<u32>().ok().filter(|&p| p > 0).map(Some).ok_or_else(|| {
                LineError(format!("pid: expected a process ID, got {}", short(text, v)))
            })
        }
    };
    resolver.next_generation();
    if resolver.warms() {
        if let Ok(pid) = pid {
            warm(resolver, text, s, pid);
        }
    }
    edits.clear();
    texts.clear();
    // From a cache of answers or a large symbol table, each lookup is a
    // few cache misses in megabytes: the frames are read first, and what
    // their lookups will read is fetched for all of them at once.
    let mut pre = Vec::new();
    if let Ok(pid) = &pid {
        pre = prefetched(resolver, text, s, *pid);
    }
    for i in 0..s.items.len() {
        let (array, index, open, close, members) = match &s.items[i] {
            Item::Frame { array, index, open, close, members } => {
                (*array, *index, *open, *close, Some(members.clone()))
            }
            Item::Known { array, index, open, close } => (*array, *index, *open, *close, None),
        };
        // The line's pid matters once it has a frame (an object without
        // addr, module or offset is not one, and is left alone).
        let pid = match &pid {
            Ok(pid) => *pid,
            Err(e) => match &members {
                Some(m) if !is_frame(text, &s.members[m.clone()]) => continue,
                _ => return Err(e.clone()),
            },
        };
        // A known frame had members when it was answered (only frames are
        // kept).
        let has_members = members.as_ref().is_none_or(|m| !m.is_empty());
        let whole = &line[open..=close];
        let cache_key = FrameCache::key(pid, whole);
        if let Some(fields) = frames.get(cache_key, whole) {
            let added = Added { module: None, offset: None, fields: fields.clone() };
            edits.push(Edit { open, close, has_members, stale: None, added });
            continue;
        }
        // A known frame of another process (or forgotten since): its
        // members after all.
        let members = members.unwrap_or_else(|| s.frame_members(text, open));
        let frame_members = &s.members[members.clone()];
        let parsed = pre.get_mut(i).and_then(Option::take);
        let (added, stale, live) = match frame(resolver, text, frame_members, pid, texts, parsed) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                // This frame alone goes unresolved, said why.
                bad.push(format!("{}[{index}].{e}", s.arrays[array]));
                let stale =
                    frame_members.iter().any(|m| OUR_FIELDS.contains(&key(text, m).as_ref()));
                let added =
                    Added { module: None, offset: None, fields: Fields::Reason(Reason::Malformed) };
                edits.push(Edit {
                    open,
                    close,
                    has_members,
                    stale: stale.then_some(members),
                    added,
                });
                continue;
            }
        };
        if !stale && !live {
            frames.put(cache_key, whole, || match &added.fields {
                Fields::Resolved(a) => Fields::Resolved(a.owned(texts)),
                f => f.clone(),
            });
        }
        let stale = stale.then_some(members);
        edits.push(Edit { open, close, has_members, stale, added });
    }
    if edits.is_empty() {
        return Ok(false);
    }
    write(text, s, edits, texts, out);
    Ok(true)
}

/// Whether an object of a frame array is a frame: it has `addr`, `module`
/// or `offset` (others, such as `{"foo":1}`, are left alone).
fn is_frame(text: &str, members: &[Member]) -> bool {
    members.iter().any(|m| matches!(key(text, m).as_ref(), "addr" | "module" | "offset"))
}

fn key<'a>(text: &'a str, m: &Member) -> Cow<'a, str> {
    scan::string_at(text, m.key, m.key_escaped)
}

/// Whether member `m` is left out when its frame is rewritten: symres's
/// own fields from an earlier run, and a null `module` or `offset` that
/// symres fills in (a JSON object must not have the key twice).
fn replaced(text: &str, m: &Member, added: &Added) -> bool {
    match key(text, m).as_ref() {
        "module" => added.module.is_some(),
        "offset" => added.offset.is_some(),
        k => OUR_FIELDS.contains(&k),
    }
}

/// The line with every frame's additions.
fn write(text: &str, s: &Scan, edits: &[Edit], texts: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len() + edits.len() * 160);
    let b = text.as_bytes();
    let mut at = 0;
    for e in edits {
        let mut first = match &e.stale {
            None => {
                out.extend_from_slice(&b[at..e.close]);
                !e.has_members
            }
            Some(members) => {
                out.extend_from_slice(&b[at..e.open]);
                out.push(b'{');
                let mut first = true;
                for m in s.members[members.clone()].iter().filter(|m| !replaced(text, m, &e.added))
                {
                    if !first {
                        out.push(b',');
                    }
                    let w = m.whole();
                    out.extend_from_slice(&b[w.start..w.end]);
                    first = false;
                }
                first
            }
        };
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        if let Some(m) = &e.added.module {
            sep(out);
            out.extend_from_slice(b"\"module\":");
            write_str(out, m);
        }
        if let Some(o) = e.added.offset {
            sep(out);
            out.extend_from_slice(b"\"offset\":");
            push_hex_string(out, o);
        }
        sep(out);
        match &e.added.fields {
            Fields::Resolved(r) => out.extend_from_slice(r.json(texts)),
            Fields::Reason(r) => {
                out.extend_from_slice(b"\"reason\":\"");
                out.extend_from_slice(r.as_str().as_bytes());
                out.push(b'"');
            }
        }
        if e.stale.is_some() {
            out.push(b'}');
            at = e.close + 1;
        } else {
            at = e.close;
        }
    }
    out.extend_from_slice(&b[at..]);
}

/// A value of a frame symres reads.
#[derive(Clone, Copy)]
struct Value {
    span: Span,
    /// A string with escape sequences.
    escaped: bool,
}

/// The fields of a frame symres reads (the last of duplicate keys wins, as
/// in most JSON readers).
#[derive(Default)]
struct Given {
    addr: Option<Value>,
    offset: Option<Value>,
    module: Option<Value>,
    build_id: Option<Value>,
    kernel: Option<Value>,
    return_address: Option<Value>,
}

/// Parse the DWARF units the line's frames (module and offset) will use
/// for the first time at once (`Resolver::warm`).
fn warm(r: &mut AddrResolver, text: &str, s: &Scan, pid: Option<u32>) {
    let mut targets = Vec::new();
    for item in &s.items {
        let members = match item {
            Item::Frame { members, .. } => members,
            Item::Known { .. } => continue,
        };
        let Ok(Some(p)) = parse_frame(r, text, &s.members[members.clone()]) else { continue };
        if let (Some(module), Some(offset)) = (&p.module, p.offset) {
            targets.extend(r.cold_target(&ModuleFrame {
                module,
                offset: offset.saturating_sub(p.back),
                back: p.back,
                build_id: p.build_id.as_deref(),
                pid,
            }));
        }
    }
    r.warm(targets);
}

/// The frames of a line read (`None` for those known by their text), and
/// what their lookups in caches of answers or symbol tables will read
/// fetched at once,
/// stage by stage (see `AddrResolver::prefetch`).
fn prefetched<'a>(
    r: &mut AddrResolver,
    text: &'a str,
    s: &Scan,
    pid: Option<u32>,
) -> Vec<Option<Result<Option<Parsed<'a>>, String>>> {
    let pre: Vec<_> = s
        .items
        .iter()
        .map(|item| match item {
            Item::Frame { members, .. } => Some(parse_frame(r, text, &s.members[members.clone()])),
            Item::Known { .. } => None,
        })
        .collect();
    let frames: Vec<ModuleFrame> = pre
        .iter()
        .flatten()
        .filter_map(|p| match p {
            Ok(Some(Parsed {
                module: Some(module), offset: Some(offset), build_id, back, ..
            })) => Some(ModuleFrame {
                module,
                offset: offset.saturating_sub(*back),
                back: *back,
                build_id: build_id.as_deref(),
                pid,
            }),
            _ => None,
        })
        .collect();
    r.prefetch(&frames);
    drop(frames);
    pre
}

/// A frame's members, read.
struct Parsed<'a> {
    addr: Option<u64>,
    offset: Option<u64>,
    module: Option<Cow<'a, str>>,
    build_id: Option<BuildId>,
    kernel: bool,
    /// 1 for a return address (see `frame`).
    back: u64,
    /// Fields symres adds were there already.
    stale: bool,
    module_key: bool,
    offset_key: bool,
}

/// Read a frame's members (errors start with the field name).
fn parse_frame<'a>(
    r: &mut AddrResolver,
    text: &'a str,
    members: &[Member],
) -> Result<Option<Parsed<'a>>, String> {
    let mut g = Given::default();
    let mut stale = false;
    let (mut module_key, mut offset_key, mut addr_key) = (false, false, false);
    for m in members {
        let k = key(text, m);
        let slot = match k.as_ref() {
            "addr" => {
                addr_key = true;
                &mut g.addr
            }
            "offset" => {
                offset_key = true;
                &mut g.offset
            }
            "module" => {
                module_key = true;
                &mut g.module
            }
            "build_id" => &mut g.build_id,
            "kernel" => &mut g.kernel,
            "return_address" => &mut g.return_address,
            k => {
                stale |= OUR_FIELDS.contains(&k);
                continue;
            }
        };
        *slot = (&text[m.value.start..m.value.end] != "null")
            .then_some(Value { span: m.value, escaped: m.value_escaped });
    }
    // Not a frame (see `is_frame`).
    if !(addr_key || module_key || offset_key) {
        return Ok(None);
    }
    let addr = opt_u64(text, g.addr, "addr")?;
    let offset = opt_u64(text, g.offset, "offset")?;
    let module = match g.module {
        None => None,
        Some(v) => match str_value(text, v) {
            Some(s) if !s.is_empty() => Some(s),
            _ => return Err(format!("module: expected a file name, got {}", short(text, v.span))),
        },
    };
    let build_id = match g.build_id {
        None => None,
        Some(v) => match str_value(text, v) {
            Some(s) => r.parse_build_id(&s).map_err(|e| format!("build_id: {e}"))?,
            None => {
                return Err(format!("build_id: expected a hex string, got {}", short(text, v.span)))
            }
        },
    };
    let kernel = bool_value(text, g.kernel, "kernel")?;
    let back = u64::from(bool_value(text, g.return_address, "return_address")?);
    Ok(Some(Parsed { addr, offset, module, build_id, kernel, back, stale, module_key, offset_key }))
}

/// Resolve one frame; also says whether it must be rewritten (it holds
/// members that `replaced` leaves out), and whether it was answered through
/// a live process's maps. Errors start with the field name.
fn frame(
    r: &mut AddrResolver,
    text: &str,
    members: &[Member],
    pid: Option<u32>,
    texts: &mut Vec<u8>,
    parsed: Option<Result<Option<Parsed<'_>>, String>>,
) -> Result<Option<(Added, bool, bool)>, String> {
    let parsed = match parsed {
        Some(p) => p,
        None => parse_frame(r, text, members),
    };
    let Some(parsed) = parsed? else { return Ok(None) };
    let Parsed { addr, offset, module, build_id, kernel, back, mut stale, module_key, offset_key } =
        parsed;

    // Our tools' stack frames are return addresses (`back`): the call is
    // the byte before, and the next instruction may belong to another line
    // (or, after a call that never returns, another function).
    let mut found_module = None;
    let mut live = false;
    let mut found_offset = None;
    let outcome: Result<Answer, Reason> = match (addr, &module, offset) {
        (Some(a), None, _) if kernel || a >= KERNEL_START => {
            r.resolve_kernel(a.saturating_sub(back), back).map(Answer::Made)
        }
        (_, Some(m), Some(off)) => r.answer_module_offset(
            &ModuleFrame {
                module: m,
                offset: off.saturating_sub(back),
                back,
                build_id: build_id.as_deref(),
                pid,
            },
            texts,
        ),
        (Some(a), _, _) => match pid {
            Some(pid) => {
                live = true;
                let pf = r.answer_pid_addr(
                    pid,
                    a.saturating_sub(back),
                    back,
                    build_id.as_deref(),
                    texts,
                );
                if module.is_none() {
                    found_module = pf.module;
                }
                if offset.is_none() {
                    found_offset = pf.offset;
                }
                pf.outcome
            }
            None => Err(Reason::Unmapped),
        },
        (None, Some(_), None) => {
            return Err("offset: missing (a frame with a module needs its file offset)".into())
        }
        (None, None, _) => {
            return Err("addr: missing (a frame needs addr, or module and offset)".into())
        }
    };
    let fields = match outcome {
        Ok(res) => Fields::Resolved(res),
        Err(reason) => Fields::Reason(reason),
    };
    // A null module or offset is replaced by the one found.
    stale |= (module_key && found_module.is_some()) || (offset_key && found_offset.is_some());
    Ok(Some((Added { module: found_module, offset: found_offset, fields }, stale, live)))
}

/// The contents of a string value, or `None` when it is not a string.
fn str_value(text: &str, Value { span: v, escaped }: Value) -> Option<Cow<'_, str>> {
    if text.as_bytes()[v.start] != b'"' {
        return None;
    }
    Some(scan::string_at(text, Span { start: v.start + 1, end: v.end - 1 }, escaped))
}

/// 1 to 16 hex digits (every frame has two such numbers).
fn parse_hex(h: &[u8]) -> Option<u64> {
    if h.is_empty() || h.len() > 16 {
        return None;
    }
    h.iter().try_fold(0u64, |n, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// `true`, `false` or absent (false).
fn bool_value(text: &str, v: Option<Value>, name: &str) -> Result<bool, String> {
    match v.map(|Value { span: v, .. }| (v, &text[v.start..v.end])) {
        None | Some((_, "false")) => Ok(false),
        Some((_, "true")) => Ok(true),
        Some((v, _)) => Err(format!("{name}: expected true or false, got {}", short(text, v))),
    }
}

/// An address or offset: `"0x1a2b"` (hex), `"6699"` (decimal string) or a
/// JSON integer. Anything else, or anything above 2^64-1, is an error.
fn opt_u64(text: &str, value: Option<Value>, key: &str) -> Result<Option<u64>, String> {
    let Some(value) = value else { return Ok(None) };
    let v = value.span;
    // As our tracers write them: "0x" and hex digits, no escapes.
    if let (Some(h), false) = (
        text.as_bytes()[v.start..v.end].strip_prefix(b"\"0x").and_then(|h| h.strip_suffix(b"\"")),
        value.escaped,
    ) {
        if let Some(n) = parse_hex(h) {
            return Ok(Some(n));
        }
    }
    let raw = &text[v.start..v.end];
    let not_address = || format!("{key}: not a 64-bit address: {}", short(text, v));
    if let Some(s) = str_value(text, value) {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => parse_hex(h.as_bytes()),
            None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            None => None,
        };
        return parsed.map(Some).ok_or_else(not_address);
    }
    match raw.as_bytes()[0] {
        b'0'..=b'9' => raw.parse().map(Some).map_err(|_| not_address()),
        b'-' => Err(not_address()),
        _ => Err(format!("{key}: expected a hex string like \"0x1234\", got {}", short(text, v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::Options;

    fn run(line: &str) -> Result<Option<String>, String> {
        let mut r = AddrResolver::new(Options::default());
        process(&mut r, line.as_bytes())
            .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
            .map_err(|e| e.0)
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for s in ["", "plain/path.rs", "q\"uote", "back\\slash", "nl\n\t\u{1}", "é\u{7f}"] {
            let mut o = Vec::new();
            write_str(&mut o, s);
            assert_eq!(String::from_utf8(o).unwrap(), serde_json::to_string(s).unwrap());
        }
        let mut r = AddrResolver::new(Options::default());
        let e = process(&mut r, b"{\"stack\":[{\"addr\":\"\xff\"}]}").unwrap_err();
        assert!(e.0.starts_with("not JSON"), "{e}");
    }

    #[test]
    fn lines_without_frames_pass_through() {
        assert_eq!(run(r#"{"type":"exec","pid":1,"addr":"0x1234"}"#), Ok(None));
        assert_eq!(run(r#"{"type":"x","stack":null}"#), Ok(None));
        // Deep but valid JSON is not an error: frames are just not looked
        // for below MAX_DEPTH.
        let deep = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        assert_eq!(run(&deep), Ok(None));
    }

    /// A line resolved, and what its malformed frames said.
    fn run_frames(line: &str) -> (String, Vec<String>) {
        let mut r = AddrResolver::new(Options::default());
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        match process_into(&mut r, &mut scratch, line.as_bytes(), &mut out) {
            Ok(true) => (String::from_utf8(out).unwrap(), scratch.bad_frames().to_vec()),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        assert!(run("not json").unwrap_err().starts_with("not JSON"));
        assert_eq!(run("[1]").unwrap_err(), "not a JSON object");
        assert_eq!(
            run(r#"{"type":"a","pid":"12","stack":[{"addr":"0x1"}]}"#).unwrap_err(),
            "pid: expected a process ID, got \"12\""
        );
        // A line without frames is written unchanged, whatever its pid.
        for line in [
            r#"{"type":"exec","pid":"12"}"#,
            r#"{"type":"a","pid":0,"stack":[]}"#,
            r#"{"pid":-1}"#,
            r#"{"pid":"x","stack":[{"foo":1}]}"#,
        ] {
            assert_eq!(run(line), Ok(None), "{line}");
        }
    }

    /// Issue 18, item 9: what is not a frame (an element that is not an
    /// object, an object without addr, module or offset, a frame array
    /// that is not an array) is left alone, and a line with nothing else
    /// passes through unchanged.
    #[test]
    fn lines_whose_arrays_hold_no_frames_pass_through() {
        for line in [
            r#"{"stack":["a"]}"#,
            r#"{"meta":{"stack":[1,2]}}"#,
            r#"{"stack":[{"foo":1}]}"#,
            r#"{"type":"a","stack":5}"#,
            r#"{"type":"a","stack":[7,null,[{"x":1}],{"sym":"f"}]}"#,
        ] {
            assert_eq!(run(line), Ok(None), "{line}");
        }
        // Beside a frame, they are copied as they came.
        let (out, bad) =
            run_frames(r#"{"stack":["a",{"foo":1},{"module":"/no/x","offset":"0x10"}]}"#);
        assert_eq!(
            out,
            r#"{"stack":["a",{"foo":1},{"module":"/no/x","offset":"0x10","reason":"file_missing"}]}"#
        );
        assert!(bad.is_empty(), "{bad:?}");
    }

    /// Issue 18, item 9: a malformed frame gets "reason":"malformed" and
    /// says why; the other frames of its line are resolved all the same.
    #[test]
    fn malformed_frames_get_a_reason_and_the_others_are_resolved() {
        let cases = [
            (
                r#"{"addr":"0x1ffffffffffffffff"}"#,
                "stack[0].addr: not a 64-bit address: \"0x1ffffffffffffffff\"",
            ),
            (r#"{"addr":1e30}"#, "stack[0].addr: not a 64-bit address: 1e30"),
            (r#"{"addr":-1}"#, "stack[0].addr: not a 64-bit address: -1"),
            (r#"{"addr":true}"#, "stack[0].addr: expected a hex string like \"0x1234\", got true"),
            (
                r#"{"module":"/bin/true"}"#,
                "stack[0].offset: missing (a frame with a module needs its file offset)",
            ),
            (
                r#"{"offset":"0x10"}"#,
                "stack[0].addr: missing (a frame needs addr, or module and offset)",
            ),
            (
                r#"{"module":"/x","offset":"0x1","build_id":"xyz"}"#,
                "stack[0].build_id: build_id must be an even number of hex digits, at most 128",
            ),
            (r#"{"module":5,"offset":"0x1"}"#, "stack[0].module: expected a file name, got 5"),
        ];
        let good = r#"{"module":"/no/y","offset":"0x20"}"#;
        for (frame, why) in cases {
            let line = format!(r#"{{"type":"a","stack":[{frame},{good}]}}"#);
            let (out, bad) = run_frames(&line);
            let want = format!(
                r#"{{"type":"a","stack":[{},{}]}}"#,
                frame.replace('}', r#","reason":"malformed"}"#).replacen(r#"{,"#, "{", 1),
                good.replace('}', r#","reason":"file_missing"}"#)
            );
            assert_eq!(out, want, "{line}");
            assert_eq!(bad, [why], "{line}");
            assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
        }
        // Nested arrays are named by their path; a stale reason is
        // replaced, not doubled.
        let (out, bad) =
            run_frames(r#"{"x":{"frames":[{"module":"/bin/true","reason":"unmapped"}]}}"#);
        assert_eq!(out, r#"{"x":{"frames":[{"module":"/bin/true","reason":"malformed"}]}}"#);
        assert_eq!(
            bad,
            ["x.frames[0].offset: missing (a frame with a module needs its file offset)"]
        );
    }

    #[test]
    fn the_rest_of_a_line_is_copied_byte_for_byte() {
        // Spaces, number forms and escapes that a parse-and-reserialize
        // would have changed; frames get their fields before their brace.
        let line = r#" { "type" : "a\u00e9\/", "n":[1.50, -0.0, 1e3],"stack":[ {"module":"/no/x", "offset":"0x10"} ,{"module":"/no/y","offset":16 } ] } "#;
        let want = line
            .replace(r#""0x10"}"#, r#""0x10","reason":"file_missing"}"#)
            .replace("16 }", "16 ,\"reason\":\"file_missing\"}");
        assert_eq!(run(line), Ok(Some(want)));
    }

    #[test]
    fn output_fed_back_comes_out_the_same() {
        // symres's own fields from an earlier run are replaced, not doubled:
        // the frame is rewritten from its other members.
        let line = r#"{"type":"a","stack":[{"addr":"0x1000"},{"module":"/no/x","offset":"0x10","x":[1]}]}"#;
        let once = run(line).unwrap().unwrap();
        assert_eq!(
            once,
            r#"{"type":"a","stack":[{"addr":"0x1000","reason":"unmapped"},{"module":"/no/x","offset":"0x10","x":[1],"reason":"file_missing"}]}"#
        );
        assert_eq!(run(&once), Ok(Some(once.clone())));
        let stale =
            r#"{"stack":[{"sym":"old","module":"/no/x","line":3,"offset":"0x10","inlined":[]}]}"#;
        assert_eq!(
            run(stale),
            Ok(Some(
                r#"{"stack":[{"module":"/no/x","offset":"0x10","reason":"file_missing"}]}"#.into()
            ))
        );
    }

    /// `v` with symres's fields taken out of every frame.
    fn without_ours(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if let (true, serde_json::Value::Array(frames)) =
                        (scan::FRAME_ARRAYS.contains(&k.as_str()), &mut *x)
                    {
                        for f in frames.iter_mut().filter_map(|f| f.as_object_mut()) {
                            f.retain(|k, _| !OUR_FIELDS.contains(&k.as_str()));
                        }
                    } else {
                        without_ours(x);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(without_ours),
            _ => {}
        }
    }

    #[test]
    fn mutated_lines_come_out_as_json_with_only_our_fields_added() {
        let base = r#"{"type":"a","x":{"frames":[{"addr":"0xffffffff81000000","kernel":true}]},"stack":[{"addr":"0x1","module":"/no/a","offset":"0x10","build_id":"ab","return_address":true},{"module":"/no/b","offset":5,"sym":"s"}],"n":[1.5,"\u00e9"]}"#;
        let alphabet = b"{}[]:,\"\\ 0123456789.eE+-xtruefalsnul";
        let mut next = crate::testing::rng(0x2545_f491_4f6c_dd1d);
        // One resolver, as in a stream (kallsyms is read once).
        let mut r = AddrResolver::new(Options::default());
        let mut scratch = Scratch::default();
        let mut rewritten = 0;
        for _ in 0..20_000 {
            let b = crate::testing::mutate(base.as_bytes(), alphabet, &mut next);
            let Ok(text) = String::from_utf8(b) else { continue };
            let mut out = Vec::new();
            let first = process_into(&mut r, &mut scratch, text.as_bytes(), &mut out);
            // Again, with the frames kept (and known) now: the same.
            let mut again = Vec::new();
            assert_eq!(
                process_into(&mut r, &mut scratch, text.as_bytes(), &mut again),
                first,
                "{text}"
            );
            assert_eq!(again, out, "{text}");
            let Ok(true) = first else { continue };
            let out = String::from_utf8(out).unwrap();
            let mut vout: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {text} -> {out}"));
            let mut vin: serde_json::Value = serde_json::from_str(&text).unwrap();
            without_ours(&mut vout);
            without_ours(&mut vin);
            assert_eq!(vout, vin, "{text} -> {out}");
            rewritten += 1;
        }
        assert!(rewritten > 2_000, "only {rewritten} lines were rewritten");
    }

    #[test]
    fn frames_are_cached_by_text_and_pid() {
        let mut c = FrameCache::default();
        let (f1, f2) = (&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]);
        let k = |pid, f| FrameCache::key(pid, f);
        c.put(k(Some(7), f1), f1, || Fields::Reason(Reason::Unmapped));
        assert!(c.get(k(Some(7), f1), f1).is_none(), "kept when seen twice");
        c.put(k(Some(7), f1), f1, || Fields::Reason(Reason::Unmapped));
        assert!(matches!(c.get(k(Some(7), f1), f1), Some(Fields::Reason(Reason::Unmapped))));
        assert!(c.get(k(None, f1), f1).is_none(), "another process's frame");
        assert!(c.get(k(Some(7), f2), f2).is_none());
        // A hash collision is a miss, not another frame's answer.
        assert!(c.get(k(Some(7), f1), f2).is_none());
        // The same frame, repeated in a line and across lines, gets the same
        // answer from the cache as from the lookups.
        let mut r = AddrResolver::new(Options::default());
        let mut scratch = Scratch::default();
        let line =
            br#"{"stack":[{"module":"/no/x","offset":"0x10"},{"module":"/no/x","offset":"0x10"}]}"#;
        let mut outs = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            assert_eq!(process_into(&mut r, &mut scratch, line, &mut out), Ok(true));
            outs.push(String::from_utf8(out).unwrap());
        }
        assert_eq!(scratch.frames.map.len(), 1);
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0].matches("\"reason\":\"file_missing\"").count(), 2, "{}", outs[0]);
        // The second time, the frames were known by their text, not scanned.
        assert!(scratch.scan.items.iter().all(|i| matches!(i, Item::Known { .. })));
        // Known text under another pid: its members are read after all.
        let with_pid = br#"{"pid":7,"stack":[{"module":"/no/x","offset":"0x10"},{"module":"/no/x","offset":"0x10"}]}"#;
        let mut out = Vec::new();
        assert_eq!(process_into(&mut r, &mut scratch, with_pid, &mut out), Ok(true));
        assert!(matches!(scratch.scan.items[0], Item::Known { .. }));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            outs[0].replace("{\"stack\"", "{\"pid\":7,\"stack\"")
        );
        // A known frame inside a line that is not JSON after it is no help.
        let bad = br#"{"stack":[{"module":"/no/x","offset":"0x10"}}"#;
        assert!(process_into(&mut r, &mut scratch, bad, &mut Vec::new())
            .is_err_and(|e| e.0.starts_with("not JSON")));
    }

    #[test]
    fn addr_without_pid_is_unmapped_and_missing_module_is_reported() {
        let out = run(r#"{"type":"a","stack":[{"addr":"0x1000"},{"module":"/nonexistent/x","offset":"0x10"}]}"#).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"type":"a","stack":[{"addr":"0x1000","reason":"unmapped"},{"module":"/nonexistent/x","offset":"0x10","reason":"file_missing"}]}"#
        );
    }
}
