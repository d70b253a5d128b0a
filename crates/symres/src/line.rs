//! One input line: find the frames, resolve them, write them back.
//!
//! The input is written by other programs (ours, and whatever a user pipes
//! in), so every field is checked before it is trusted: a line with a wrong
//! type anywhere in a frame is rejected as a whole with a message naming the
//! field, instead of being half-resolved.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use crate::kallsyms::KERNEL_START;
use crate::resolve::{Outcome, Reason, Resolver};
use leakd_common::text::hex;

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError(pub String);

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LineError {}

/// Arrays with these names hold frames.
const FRAME_ARRAYS: [&str; 2] = ["stack", "frames"];
/// Frames are looked for this deep at most (serde_json refuses lines nested
/// deeper than 128 levels).
const MAX_DEPTH: usize = 64;
/// Fields symres writes; stale ones from an earlier run are replaced.
const OUR_FIELDS: [&str; 6] = ["sym", "sym_offset", "file", "line", "inlined", "reason"];

/// A JSON value that borrows its strings from the input line and keeps
/// object fields in order in a plain vector: symres only edits frames and
/// writes everything back, so it needs neither a hash map per object nor a
/// copy of every string (which serde_json::Value would cost, per frame).
#[derive(Debug)]
enum J<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    /// Fields, then symres's pre-rendered fields (`"sym":...`) if any.
    Obj(Vec<(Cow<'a, str>, J<'a>)>, Option<Fields>),
}

#[derive(Debug, Clone)]
enum Fields {
    /// The cached answer, and how far to move its `sym_offset` (1 for a
    /// return address, looked up one byte back).
    Resolved(Arc<crate::resolve::Resolution>, u64),
    Reason(Reason),
}

impl<'a> J<'a> {
    fn get(fields: &'a [(Cow<'a, str>, J<'a>)], key: &str) -> Option<&'a J<'a>> {
        // The last of duplicate keys wins, as in most JSON readers.
        fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(true) => out.extend_from_slice(b"true"),
            J::Bool(false) => out.extend_from_slice(b"false"),
            J::Num(n) => {
                let _ = write!(out, "{n}");
            }
            J::Str(s) => write_cow(out, s),
            J::Arr(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            J::Obj(fields, extra) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_cow(out, k);
                    out.push(b':');
                    v.write(out);
                }
                if let Some(x) = extra {
                    if !fields.is_empty() {
                        out.push(b',');
                    }
                    match x {
                        Fields::Resolved(r, shift) => r.write_json_fields(out, *shift),
                        Fields::Reason(r) => {
                            out.extend_from_slice(b"\"reason\":\"");
                            out.extend_from_slice(r.as_str().as_bytes());
                            out.push(b'"');
                        }
                    }
                }
                out.push(b'}');
            }
        }
    }

    fn short(&self) -> String {
        let mut b = Vec::new();
        self.write(&mut b);
        let s = String::from_utf8_lossy(&b);
        if s.chars().count() > 40 {
            let cut: String = s.chars().take(40).collect();
            format!("{cut}...")
        } else {
            s.into_owned()
        }
    }
}

/// A string of the input line, written back. serde_json borrows a string
/// only when it had no escape sequence, and rejects raw control characters,
/// so a borrowed one is copied as it came, without looking for characters
/// to escape (most of a line: paths, build ids, hex numbers, keys).
fn write_cow(out: &mut Vec<u8>, s: &Cow<'_, str>) {
    match s {
        Cow::Borrowed(b) => {
            out.reserve(b.len() + 2);
            out.push(b'"');
            out.extend_from_slice(b.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(o) => write_str(out, o),
    }
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Most strings (keys, paths, hex numbers) need no escaping: copy them.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Cannot fail: writing to a Vec, and a str is always serializable.
    let _ = serde_json::to_writer(&mut *out, s);
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<J<'de>, E> {
        Ok(Number::from_f64(v).map_or(J::Null, J::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_none<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        // serde_json gives no size hint; stacks are about 16 frames deep.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(J::Arr(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        // A frame has up to six fields (addr, module, offset, build id...).
        let mut v = Vec::with_capacity(6);
        while let Some((Key(k), x)) = map.next_entry::<Key<'de>, J<'de>>()? {
            v.push((k, x));
        }
        Ok(J::Obj(v, None))
    }
}

impl<'de> Deserialize<'de> for J<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KV;
        impl<'de> Visitor<'de> for KV {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KV)
    }
}

/// Resolve every frame of `line`. `Ok(None)`: the line has no frames and is
/// to be written unchanged.
pub fn process(resolver: &mut Resolver, line: &[u8]) -> Result<Option<Vec<u8>>, LineError> {
    let mut out = Vec::new();
    Ok(process_into(resolver, line, &mut out)?.then_some(out))
}

/// Like `process`, appending the rewritten line to `out` (a buffer the
/// caller reuses) and returning whether it did; `out` is left as it was when
/// the line has no frames or is rejected.
pub fn process_into(resolver: &mut Resolver, line: &[u8], out: &mut Vec<u8>) -> Result<bool, LineError> {
    // One UTF-8 check of the whole line is cheaper than serde_json's check
    // of every string; a line that is not UTF-8 takes the byte path, which
    // says where the bad byte is.
    let parsed: Result<J<'_>, _> = match std::str::from_utf8(line) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(line),
    };
    let mut v = parsed.map_err(|e| LineError(format!("not JSON: {e}")))?;
    let J::Obj(top, _) = &mut v else {
        return Err(LineError("not a JSON object".into()));
    };
    let pid = match J::get(top, "pid") {
        None | Some(J::Null) => None,
        Some(p) => Some(
            match p {
                J::Num(n) => n.as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0),
                _ => None,
            }
            .ok_or_else(|| LineError(format!("pid: expected a process ID, got {}", p.short())))?,
        ),
    };
    resolver.next_generation();
    let mut found = false;
    let mut path = String::new();
    walk_object(resolver, top, pid, &mut found, &mut path, 0)?;
    if !found {
        return Ok(false);
    }
    out.reserve(line.len() * 3);
    v.write(out);
    Ok(true)
}

type Fieldz<'a> = Vec<(Cow<'a, str>, J<'a>)>;

fn walk_object(
    r: &mut Resolver,
    obj: &mut Fieldz<'_>,
    pid: Option<u32>,
    found: &mut bool,
    path: &mut String,
    depth: usize,
) -> Result<(), LineError> {
    // Frames are never this deep: below it the line is left as it is.
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for (k, v) in obj.iter_mut() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        if FRAME_ARRAYS.contains(&k.as_ref()) {
            match v {
                J::Arr(frames) => {
                    for (i, f) in frames.iter_mut().enumerate() {
                        let J::Obj(f, extra) = f else {
                            return Err(LineError(format!("{path}[{i}]: a frame must be an object, got {}", f.short())));
                        };
                        *found = true;
                        frame(r, f, extra, pid).map_err(|e| LineError(format!("{path}[{i}].{e}")))?;
                    }
                }
                J::Null => {}
                other => return Err(LineError(format!("{path}: expected an array of frames, got {}", other.short()))),
            }
        } else {
            walk_value(r, v, pid, found, path, depth + 1)?;
        }
        path.truncate(len);
    }
    Ok(())
}

fn walk_value(
    r: &mut Resolver,
    v: &mut J<'_>,
    pid: Option<u32>,
    found: &mut bool,
    path: &mut String,
    depth: usize,
) -> Result<(), LineError> {
    match v {
        J::Obj(o, _) => walk_object(r, o, pid, found, path, depth + 1),
        J::Arr(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk_value(r, x, pid, found, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Resolve one frame object in place. Errors start with the field name.
fn frame(r: &mut Resolver, f: &mut Fieldz<'_>, extra: &mut Option<Fields>, pid: Option<u32>) -> Result<(), String> {
    let addr = opt_u64(f, "addr")?;
    let offset = opt_u64(f, "offset")?;
    let module = match J::get(f, "module") {
        None | Some(J::Null) => None,
        // A clone of a borrowed Cow: no copy of the string.
        Some(J::Str(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => return Err(format!("module: expected a file name, got {}", other.short())),
    };
    let build_id = match J::get(f, "build_id") {
        None | Some(J::Null) => None,
        Some(J::Str(s)) => r.parse_build_id(s).map_err(|e| format!("build_id: {e}"))?,
        Some(other) => return Err(format!("build_id: expected a hex string, got {}", other.short())),
    };
    let kernel = match J::get(f, "kernel") {
        None | Some(J::Null) => false,
        Some(J::Bool(b)) => *b,
        Some(other) => return Err(format!("kernel: expected true or false, got {}", other.short())),
    };

    // Our tools' stack frames are return addresses: the call is the byte
    // before, and the next instruction may belong to another line (or, after
    // a call that never returns, another function).
    let back = match J::get(f, "return_address") {
        None | Some(J::Null) | Some(J::Bool(false)) => 0,
        Some(J::Bool(true)) => 1,
        Some(other) => return Err(format!("return_address: expected true or false, got {}", other.short())),
    };
    let outcome: Outcome = match (addr, &module, offset) {
        (Some(a), None, _) if kernel || a >= KERNEL_START => r.resolve_kernel(a.saturating_sub(back)),
        (_, Some(m), Some(off)) => r.resolve_module_offset(Path::new(m.as_ref()), off.saturating_sub(back), build_id.as_deref(), pid),
        (Some(a), _, _) => match pid {
            Some(pid) => {
                let mut pf = r.resolve_pid_addr(pid, a.saturating_sub(back), build_id.as_deref());
                pf.offset = pf.offset.map(|o| o.wrapping_add(back));
                if module.is_none() {
                    if let Some(m) = pf.module {
                        f.push((Cow::Borrowed("module"), J::Str(Cow::Owned(m))));
                    }
                }
                if offset.is_none() {
                    if let Some(o) = pf.offset {
                        f.push((Cow::Borrowed("offset"), J::Str(Cow::Owned(hex(o)))));
                    }
                }
                pf.outcome
            }
            None => Err(Reason::Unmapped),
        },
        (None, Some(_), None) => return Err("offset: missing (a frame with a module needs its file offset)".into()),
        (None, None, _) => return Err("addr: missing (a frame needs addr, or module and offset)".into()),
    };
    if f.iter().any(|(k, _)| OUR_FIELDS.contains(&k.as_ref())) {
        f.retain(|(k, _)| !OUR_FIELDS.contains(&k.as_ref()));
    }
    *extra = Some(match outcome {
        Ok(res) => Fields::Resolved(res, back),
        Err(reason) => Fields::Reason(reason),
    });
    Ok(())
}

/// An address or offset: `"0x1a2b"` (hex), `"6699"` (decimal string) or a
/// JSON integer. Anything else, or anything above 2^64-1, is an error.
fn opt_u64(f: &Fieldz<'_>, key: &str) -> Result<Option<u64>, String> {
    match J::get(f, key) {
        None | Some(J::Null) => Ok(None),
        Some(J::Str(s)) => {
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(h) if !h.is_empty() && h.len() <= 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    u64::from_str_radix(h, 16).ok()
                }
                Some(_) => None,
                None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                None => None,
            };
            parsed.map(Some).ok_or_else(|| format!("{key}: not a 64-bit address: {}", J::Str(s.clone()).short()))
        }
        Some(J::Num(n)) => n.as_u64().map(Some).ok_or_else(|| format!("{key}: not a 64-bit address: {n}")),
        Some(other) => Err(format!("{key}: expected a hex string like \"0x1234\", got {}", other.short())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Options;

    fn run(line: &str) -> Result<Option<String>, String> {
        let mut r = Resolver::new(Options::default());
        process(&mut r, line.as_bytes()).map(|o| o.map(|b| String::from_utf8(b).unwrap())).map_err(|e| e.0)
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for s in ["", "plain/path.rs", "q\"uote", "back\\slash", "nl\n\t\u{1}", "é\u{7f}"] {
            let mut o = Vec::new();
            write_str(&mut o, s);
            assert_eq!(String::from_utf8(o).unwrap(), serde_json::to_string(s).unwrap());
        }
        let mut r = Resolver::new(Options::default());
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

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        assert!(run("not json").unwrap_err().starts_with("not JSON"));
        assert_eq!(run("[1]").unwrap_err(), "not a JSON object");
        assert_eq!(run(r#"{"type":"a","stack":5}"#).unwrap_err(), "stack: expected an array of frames, got 5");
        assert_eq!(run(r#"{"type":"a","stack":[7]}"#).unwrap_err(), "stack[0]: a frame must be an object, got 7");
        assert_eq!(
            run(r#"{"type":"a","stack":[{"addr":"0x1ffffffffffffffff"}]}"#).unwrap_err(),
            "stack[0].addr: not a 64-bit address: \"0x1ffffffffffffffff\""
        );
        assert_eq!(
            run(r#"{"type":"a","stack":[{"addr":1e30}]}"#).unwrap_err(),
            "stack[0].addr: not a 64-bit address: 1e+30"
        );
        assert_eq!(
            run(r#"{"type":"a","stack":[{"addr":-1}]}"#).unwrap_err(),
            "stack[0].addr: not a 64-bit address: -1"
        );
        assert_eq!(
            run(r#"{"type":"a","x":{"frames":[{"module":"/bin/true"}]}}"#).unwrap_err(),
            "x.frames[0].offset: missing (a frame with a module needs its file offset)"
        );
        assert_eq!(run(r#"{"type":"a","pid":"12","stack":[]}"#).unwrap_err(), "pid: expected a process ID, got \"12\"");
        assert_eq!(
            run(r#"{"type":"a","stack":[{"module":"/x","offset":"0x1","build_id":"xyz"}]}"#).unwrap_err(),
            "stack[0].build_id: build_id must be an even number of hex digits, at most 128"
        );
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
