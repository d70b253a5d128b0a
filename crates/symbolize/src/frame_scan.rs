//! One pass over a JSON line that validates it and finds the frames.
//!
//! symres adds fields to frames and leaves every other byte of a line as it
//! was, so it needs to know where frames are, not what the rest of the line
//! holds. Building a tree of the line (serde_json's `Value`, or a borrowing
//! one) and writing it back was most of symres's time on tracer output; this
//! scanner records byte spans instead: the frame objects, their members, and
//! the top-level `pid`.
//!
//! It must accept exactly the lines serde_json accepts, since those are the
//! lines symres promises to handle. The grammar is checked here; the rare
//! tokens whose validity also depends on their value (strings with escape
//! sequences, which may hold lone surrogates; numbers with a fraction, an
//! exponent or many digits, which may overflow) are handed to serde_json
//! itself, and a test compares the two on generated lines.

use std::borrow::Cow;

use crate::json::plain_prefix;

/// The members of an answer, in the order symres writes them (see
/// `Scan::answer_members`; `sym_offset` goes between the first two).
pub const ANSWER_KEYS: [&str; 4] = ["sym", "file", "line", "inlined"];

/// Arrays with these names hold frames.
pub const FRAME_ARRAYS: [&str; 2] = ["stack", "frames"];
/// Frames are looked for in objects this many levels (of objects and
/// arrays) below the line's own at most, so a pathological line costs no
/// more than the JSON nesting limit allows.
const MAX_DEPTH: usize = 64;
/// serde_json refuses lines nested deeper than this.
const MAX_NESTING: usize = 127;

/// A byte range of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// One member of a frame object: `"key": value`.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The key, without its quotes.
    pub key: Span,
    /// The key has escape sequences (decode it before comparing).
    pub key_escaped: bool,
    pub value: Span,
    /// The value is a string with escape sequences.
    pub value_escaped: bool,
}

impl Member {
    /// The member as written, from the key's opening quote to the value's
    /// last byte.
    pub fn whole(&self) -> Span {
        Span { start: self.key.start - 1, end: self.value.end }
    }
}

/// What was found where frames belong, in the order of the line.
#[derive(Debug, Clone)]
pub enum Item {
    /// A frame object: `open` is its `{`, `close` its `}`, and its members
    /// are `members[range]` of the scan.
    Frame { array: usize, index: usize, open: usize, close: usize, members: std::ops::Range<usize> },
    /// A frame whose text is that of a frame seen before (see
    /// `Scan::scan`): skipped, its members not recorded.
    Known { array: usize, index: usize, open: usize, close: usize },
}

/// The line is not JSON (serde_json says why).
#[derive(Debug)]
pub struct Invalid;

type R<T> = Result<T, Invalid>;

/// A path segment: an object key or an array index, for messages.
#[derive(Clone, Copy)]
enum Seg {
    Key(Span, bool),
    Index(usize),
}

/// The result of scanning a line. One is reused from line to line, so a
/// stream costs no allocation per line once its vectors have grown.
#[derive(Default)]
pub struct Scan {
    /// The top-level value is an object.
    pub is_object: bool,
    /// The value of the top-level `pid` (the last, when repeated).
    pub pid: Option<Span>,
    pub items: Vec<Item>,
    pub members: Vec<Member>,
    /// The path of each frame array (`stack`, `x.frames`), by `array`.
    pub arrays: Vec<String>,
    /// The path being scanned.
    segs: Vec<Seg>,
}

impl Scan {
    /// Scan `text`, one JSON value (a line), as serde_json would parse it.
    ///
    /// `known` gives the length of a frame seen before when the rest of the
    /// line starts with its text: a stream repeats its frames, and such a
    /// frame, a flat object that was checked whole, is skipped with one
    /// comparison (an `Item::Known`) instead of being scanned again.
    pub fn scan(&mut self, text: &str, known: &dyn Fn(&[u8]) -> Option<usize>) -> R<()> {
        self.is_object = false;
        self.pid = None;
        self.items.clear();
        self.members.clear();
        self.arrays.clear();
        self.segs.clear();
        let mut s = Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
            nesting: 0,
            escaped: false,
            known,
            out: self,
        };
        s.ws();
        if s.peek() == Some(b'{') {
            s.out.is_object = true;
            s.object(Some(0))?;
        } else {
            s.value(None)?;
        }
        s.ws();
        if s.i != s.b.len() {
            return Err(Invalid);
        }
        Ok(())
    }

    /// Whether `text` is object members as symres writes them into a frame
    /// (the parts of an index's answers): keys from `keys`, in that order,
    /// each at most once, each with a string or a small unsigned integer;
    /// no spaces, nothing nested. Empty text is none.
    pub fn fields(&mut self, text: &str, keys: &[&str]) -> bool {
        let mut s = self.checker(text);
        let mut next = 0;
        s.members(keys, &mut next, None)
    }

    /// Whether `text` is members of a frame's answer as symres writes them
    /// (the records of a cache file of answers): keys of
    /// [`ANSWER_KEYS`] from `*next` on, in that order, each at most once
    /// (`*next` moves past those found); `sym` and `file` strings, `line`
    /// a small unsigned integer, `inlined` an array of objects whose
    /// members `fields` takes with the keys `sym`, `file` and `line`. No
    /// spaces. Empty text is none.
    pub fn answer_members(&mut self, text: &[u8], next: &mut usize) -> bool {
        // Nearly every answer is ASCII without an escape sequence: its
        // strings end at the next quote (a cache's second run checks every
        // answer it copies).
        if plain_ascii(text) {
            return plain_members(text, &mut 0, &ANSWER_KEYS, next, None);
        }
        std::str::from_utf8(text).is_ok_and(|t| self.checker(t).members(&ANSWER_KEYS, next, None))
    }

    fn checker<'a>(&'a mut self, text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
            nesting: 0,
            escaped: false,
            known: &|_| None,
            out: self,
        }
    }

    /// The members of the frame object at `open` of `text`, a line scanned
    /// already (for a `Known` frame that needs them after all), as a range
    /// of `members`.
    pub fn frame_members(&mut self, text: &str, open: usize) -> std::ops::Range<usize> {
        let first = self.members.len();
        let mut s = Scanner {
            text,
            b: text.as_bytes(),
            i: open,
            nesting: 0,
            escaped: false,
            known: &|_| None,
            out: self,
        };
        // Cannot fail: the line was scanned whole.
        let _ = s.frame_object();
        first..self.members.len()
    }
}

/// Whether `b` is ASCII without control characters (below 0x20) or
/// backslashes: a JSON string in it ends at the next quote. Eight bytes at
/// a time.
fn plain_ascii(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte below `n` (and maybe of some after one:
    // flagged either way).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut words = b.chunks_exact(8);
    let mut flags = 0;
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a);
        flags |= x & HIGH | below(x, 0x20) | below(x ^ (ONES * u64::from(b'\\')), 1);
    }
    flags == 0 && words.remainder().iter().all(|&c| (0x20..0x80).contains(&c) && c != b'\\')
}

/// `Scanner::members` for text without escape sequences or control
/// characters (`plain_ascii`): each string ends at the next quote.
fn plain_members(
    b: &[u8],
    i: &mut usize,
    keys: &[&str],
    next: &mut usize,
    close: Option<u8>,
) -> bool {
    let first = *i;
    // The string at `*i`, moved past.
    let string = |i: &mut usize| -> Option<std::ops::Range<usize>> {
        if b.get(*i) != Some(&b'"') {
            return None;
        }
        // No backslash or control byte: the first one `plain_prefix`
        // stops at is the closing quote, if any.
        let len = plain_prefix(&b[*i + 1..]);
        if b.get(*i + 1 + len) != Some(&b'"') {
            return None;
        }
        let s = *i + 1..*i + 1 + len;
        *i += len + 2;
        Some(s)
    };
    loop {
        match (b.get(*i), close) {
            (None, None) => return true,
            (Some(&c), Some(end)) if c == end => return true,
            (None, Some(_)) => return false,
            _ => {}
        }
        if *i > first {
            if b[*i] != b',' {
                return false;
            }
            *i += 1;
        }
        let Some(key) = string(i) else { return false };
        // `keys` is a start of ANSWER_KEYS (the inlined calls': the first
        // three), whose place a match finds without a call to memcmp.
        let k = match &b[key] {
            b"sym" => 0,
            b"file" => 1,
            b"line" => 2,
            b"inlined" => 3,
            _ => return false,
        };
        if k < *next || k >= keys.len() {
            return false;
        }
        let inlined = k == 3;
        *next = k + 1;
        if b.get(*i) != Some(&b':') {
            return false;
        }
        *i += 1;
        let ok = match b.get(*i) {
            Some(b'[') if inlined => {
                *i += 1;
                let mut first = true;
                loop {
                    if b.get(*i) == Some(&b']') {
                        *i += 1;
                        break true;
                    }
                    if !first {
                        if b.get(*i) != Some(&b',') {
                            break false;
                        }
                        *i += 1;
                    }
                    first = false;
                    let mut inner = 0;
                    if b.get(*i) != Some(&b'{') {
                        break false;
                    }
                    *i += 1;
                    if !plain_members(b, i, &ANSWER_KEYS[..3], &mut inner, Some(b'}')) {
                        break false;
                    }
                    *i += 1;
                }
            }
            Some(b'"') if !inlined => string(i).is_some(),
            Some(&c @ b'0'..=b'9') if !inlined => {
                let n = b[*i..].iter().take_while(|c| c.is_ascii_digit()).count();
                *i += n;
                // JSON: no leading zero ("0" alone).
                (1..=10).contains(&n) && !(c == b'0' && n > 1)
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    nesting: usize,
    /// The last string scanned had escape sequences.
    escaped: bool,
    known: &'a dyn Fn(&[u8]) -> Option<usize>,
    out: &'a mut Scan,
}

/// The text of a string token's contents (`span` inside the quotes), with
/// escape sequences decoded when it has any.
#[inline]
pub fn string_at<'a>(text: &'a str, span: Span, escaped: bool) -> Cow<'a, str> {
    let raw = &text[span.start..span.end];
    if !escaped {
        return Cow::Borrowed(raw);
    }
    // The scan validated the token with serde_json already.
    match serde_json::from_str::<String>(&text[span.start - 1..span.end + 1]) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(raw),
    }
}

impl<'a> Scanner<'a> {
    /// Members as symres writes them (see `Scan::fields`), up to `close`
    /// (the end of the text when `None`), with keys from `keys[*next..]`.
    fn members(&mut self, keys: &[&str], next: &mut usize, close: Option<u8>) -> bool {
        let first = self.i;
        loop {
            match (self.peek(), close) {
                (None, None) => return true,
                (Some(c), Some(end)) if c == end => return true,
                (None, Some(_)) => return false,
                _ => {}
            }
            if self.i > first && self.eat(b',').is_err() {
                return false;
            }
            let Ok((key, escaped)) = self.string() else { return false };
            let Some(k) = keys[*next..]
                .iter()
                .position(|&k| !escaped && k.as_bytes() == &self.b[key.start..key.end])
            else {
                return false;
            };
            let inlined = keys[*next + k] == "inlined";
            *next += k + 1;
            if self.eat(b':').is_err() {
                return false;
            }
            let ok = match self.peek() {
                Some(b'[') if inlined => self.inlined(),
                Some(b'"') if !inlined => self.string().is_ok(),
                Some(b'0'..=b'9') if !inlined => {
                    // JSON: no leading zero ("0" alone).
                    let zero = self.peek() == Some(b'0');
                    let n = self.digits();
                    (1..=10).contains(&n) && !(zero && n > 1)
                }
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }

    /// `[{members},...]`: the inlined calls of an answer.
    fn inlined(&mut self) -> bool {
        if self.eat(b'[').is_err() {
            return false;
        }
        let mut first = true;
        loop {
            if self.eat(b']').is_ok() {
                return true;
            }
            if !first && self.eat(b',').is_err() {
                return false;
            }
            first = false;
            let mut next = 0;
            if self.eat(b'{').is_err()
                || !self.members(&["sym", "file", "line"], &mut next, Some(b'}'))
                || self.eat(b'}').is_err()
            {
                return false;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn nest(&mut self) -> R<()> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(Invalid);
        }
        Ok(())
    }

    /// One value. `walk`: the depth at which frames are looked for inside it
    /// (`None`: not looked for: inside a frame, or too deep).
    fn value(&mut self, walk: Option<usize>) -> R<Span> {
        self.ws();
        let start = self.i;
        match self.peek().ok_or(Invalid)? {
            b'{' => self.object(walk.map(|d| d + 1).filter(|&d| d <= MAX_DEPTH))?,
            b'[' => self.seq(b'[', b']', |s, index| {
                s.out.segs.push(Seg::Index(index));
                s.value(walk.map(|d| d + 1))?;
                s.out.segs.pop();
                Ok(())
            })?,
            b'"' => {
                self.string()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return Err(Invalid),
        }
        Ok(Span { start, end: self.i })
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// A string token; returns its contents' span and whether it has escapes.
    fn string(&mut self) -> R<(Span, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.peek().ok_or(Invalid)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek().ok_or(Invalid)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Invalid);
                            }
                            self.i += 5;
                        }
                        _ => return Err(Invalid),
                    }
                }
                0..=0x1f => return Err(Invalid),
                _ => self.i += 1,
            }
        }
        let span = Span { start, end: self.i };
        self.i += 1;
        // Whether escapes decode (lone surrogates do not) is serde_json's call.
        if escaped && serde_json::from_str::<String>(&self.text[start - 1..self.i]).is_err() {
            return Err(Invalid);
        }
        self.escaped = escaped;
        Ok((span, escaped))
    }

    /// Move past bytes that need no attention in a string.
    fn skip_plain(&mut self) {
        self.i += plain_prefix(self.b.get(self.i..).unwrap_or_default());
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> R<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let mut simple = match self.peek() {
            Some(b'0') => {
                self.i += 1;
                true
            }
            Some(b'1'..=b'9') => self.digits() <= 18,
            _ => return Err(Invalid),
        };
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
            simple = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
            simple = false;
        }
        // Out-of-range numbers are serde_json's call too.
        if !simple && serde_json::from_str::<serde_json::Number>(&self.text[start..self.i]).is_err()
        {
            return Err(Invalid);
        }
        Ok(())
    }

    /// An array or object at `self.i`, from `open` to `close`: `item`
    /// scans each element (a value, or a key and its value), given its
    /// index. (Inlined into each caller: 5% fewer instructions per line.)
    #[inline(always)]
    fn seq(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self, usize) -> R<()>,
    ) -> R<()> {
        self.nest()?;
        self.eat(open)?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            self.nesting -= 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.ws();
            item(self, index)?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    break;
                }
                _ => return Err(Invalid),
            }
        }
        self.nesting -= 1;
        Ok(())
    }

    /// A key and its colon; returns the key's span and whether it has
    /// escapes.
    fn key(&mut self) -> R<(Span, bool)> {
        let key = self.string()?;
        self.ws();
        self.eat(b':')?;
        Ok(key)
    }

    /// An object at `self.i`. `walk`: its depth when frames are looked for
    /// among its members.
    fn object(&mut self, walk: Option<usize>) -> R<()> {
        let top = self.nesting == 0;
        self.seq(b'{', b'}', |s, _| {
            let (key, escaped) = s.key()?;
            // Keys matter only where frames (or the pid) are looked for.
            let k = if top || walk.is_some() {
                string_at(s.text, key, escaped)
            } else {
                Cow::Borrowed("")
            };
            if top && k == "pid" {
                let v = s.value(None)?;
                s.out.pid = Some(v);
                return Ok(());
            }
            s.out.segs.push(Seg::Key(key, escaped));
            if walk.is_some() && FRAME_ARRAYS.contains(&k.as_ref()) {
                s.frame_array()?;
            } else {
                // A member is at its object's level: `value` counts the
                // level its own object or array opens.
                s.value(walk)?;
            }
            s.out.segs.pop();
            Ok(())
        })
    }

    /// The value of a `stack` or `frames` member.
    fn frame_array(&mut self) -> R<()> {
        self.ws();
        let array = self.out.arrays.len();
        self.out.arrays.push(self.path());
        if self.peek() != Some(b'[') {
            // Not an array of frames: checked, left alone.
            self.value(None)?;
            return Ok(());
        }
        self.seq(b'[', b']', |s, index| {
            let known = match s.peek() {
                Some(b'{') => (s.known)(&s.b[s.i..]),
                _ => None,
            };
            if let Some(len) = known {
                // A flat object: one level below this array.
                if s.nesting + 1 > MAX_NESTING {
                    return Err(Invalid);
                }
                let open = s.i;
                s.i += len;
                s.out.items.push(Item::Known { array, index, open, close: s.i - 1 });
            } else if s.peek() == Some(b'{') {
                let open = s.i;
                let first = s.out.members.len();
                s.frame_object()?;
                let members = first..s.out.members.len();
                s.out.items.push(Item::Frame { array, index, open, close: s.i - 1, members });
            } else {
                // Not a frame: checked, left alone.
                s.value(None)?;
            }
            Ok(())
        })
    }

    /// A frame: an object whose members are recorded, not searched.
    fn frame_object(&mut self) -> R<()> {
        self.seq(b'{', b'}', |s, _| {
            let (key, key_escaped) = s.key()?;
            let value = s.value(None)?;
            // A string value was the last string scanned.
            let value_escaped = s.b[value.start] == b'"' && s.escaped;
            s.out.members.push(Member { key, key_escaped, value, value_escaped });
            Ok(())
        })
    }

    /// `a.b[2].stack`, for messages.
    fn path(&self) -> String {
        let mut p = String::new();
        for s in &self.out.segs {
            match *s {
                Seg::Key(span, escaped) => {
                    if !p.is_empty() {
                        p.push('.');
                    }
                    p.push_str(&string_at(self.text, span, escaped));
                }
                Seg::Index(i) => {
                    p.push('[');
                    p.push_str(&i.to_string());
                    p.push(']');
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {

    /// The quick check of answers without escapes (`plain_members`)
    /// agrees with the full one on answers and on their mutations: both
    /// accept what symres writes and nothing else.
    #[test]
    fn plain_answer_check_agrees_with_the_full_one() {
        let full = |t: &str, next: &mut usize| {
            let mut scan = Scan::default();
            scan.checker(t).members(&ANSWER_KEYS, next, None)
        };
        let good = [
            r#""sym":"f<T>","file":"/a/b.c","line":12,"inlined":[{"sym":"g","line":9},{"file":"h.c"}]"#,
            r#""sym":"main""#,
            r#""sym":"fé\u00e9","file":"é.c""#,
            r#""file":"x.rs","line":0"#,
            r#""inlined":[]"#,
            "",
        ];
        for t in good {
            let (mut a, mut b) = (0, 0);
            assert!(Scan::default().answer_members(t.as_bytes(), &mut a), "{t}");
            assert!(full(t, &mut b), "{t}");
            assert_eq!(a, b, "{t}");
        }
        // Keys continue where the head left them: "sym" again is refused.
        let mut next = 1;
        assert!(!Scan::default().answer_members(br#""sym":"f""#, &mut next));
        let alphabet = b"{}[]:,\"0123456789 .-eE\\\nabsymfilnet";
        let mut rng = crate::testing::rng(0x005e_ed0f_a115);
        let mut plain = 0;
        for _ in 0..20_000 {
            let base = good[(rng() % 4) as usize].as_bytes();
            let b = crate::testing::mutate(base, alphabet, &mut rng);
            let Ok(t) = std::str::from_utf8(&b) else { continue };
            plain += usize::from(!t.contains(['\\', '\n']));
            let (mut a, mut c) = (0, 0);
            let quick = Scan::default().answer_members(t.as_bytes(), &mut a);
            assert_eq!(quick, full(t, &mut c), "{t}");
            if quick {
                assert_eq!(a, c, "{t}");
                let line = format!("{{{t}}}");
                assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok(), "{line}");
            }
        }
        assert!(plain > 10_000, "{plain} took the quick path");
    }

    use super::*;

    fn scan(s: &str) -> R<Scan> {
        let mut out = Scan::default();
        out.scan(s, &|_| None).map(|()| out)
    }

    fn valid(s: &str) -> bool {
        scan(s).is_ok()
    }

    /// serde_json's verdict, through the type symres used to parse lines
    /// into (every string decoded, every number converted).
    fn serde_valid(s: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(s).is_ok()
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        let cases = [
            "{}",
            " { } ",
            "[]",
            "1",
            "-0",
            "-",
            "01",
            "1.",
            "1.5",
            ".5",
            "1e5",
            "1E+5",
            "1e",
            "1e-",
            "1.5e400",
            "-1e400",
            "123456789012345678901234567890",
            &"9".repeat(400),
            "18446744073709551615",
            "-9223372036854775809",
            "\"\"",
            "\"a\\u00e9\\n\"",
            "\"\\ud800\"",
            "\"\\ud83d\\ude00\"",
            "\"\\udc00\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "true",
            "tru",
            "nul",
            "null ",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "[1,]",
            "[1 2]",
            "{\"a\":[1,{\"b\":null}]}",
            "{\"stack\":[{\"addr\":\"0x1\"},7,null]}",
            "{} x",
            "{}}",
            "{1:2}",
            "{\"stack\":{}}",
            "\u{feff}{}",
            "{\"k\":\"é\"}",
            "{\"k\":1}\n",
            "{\"k\":1}\r\n",
        ];
        for c in cases {
            assert_eq!(valid(c), serde_valid(c), "{c:?}");
        }
    }

    #[test]
    fn known_frames_are_skipped_but_the_line_still_checked() {
        let frame = r#"{"addr":"0x1234","module":"/lib/x.so"}"#;
        let known = |rest: &[u8]| rest.starts_with(frame.as_bytes()).then_some(frame.len());
        let scan_known = |s: &str| {
            let mut out = Scan::default();
            out.scan(s, &known).map(|()| out)
        };
        let line = format!(r#"{{"stack":[{frame}, {frame} ,{{"addr":"0x1"}}]}}"#);
        let s = scan_known(&line).unwrap();
        assert!(matches!(
            s.items[..],
            [
                Item::Known { index: 0, .. },
                Item::Known { index: 1, .. },
                Item::Frame { index: 2, .. }
            ]
        ));
        let Item::Known { open, close, .. } = s.items[1] else { panic!() };
        assert_eq!(&line[open..=close], frame);
        assert!(s.members.len() == 1, "only the unknown frame's members");
        for bad in [
            format!(r#"{{"stack":[{frame}}}"#),
            format!(r#"{{"stack":[{frame}]"#),
            format!(r#"{{"stack":[{frame}x]}}"#),
        ] {
            assert!(scan_known(&bad).is_err(), "{bad}");
        }
        // At the nesting limit, a known frame counts as the object it is.
        for n in 124..128 {
            let deep = format!("{}{{\"stack\":[{frame}]}}{}", "[".repeat(n), "]".repeat(n));
            assert_eq!(scan_known(&deep).is_ok(), serde_valid(&deep), "{n}");
        }
    }

    /// Frames are found in objects down to MAX_DEPTH levels below the
    /// line's, whether the levels are objects or arrays, and not below.
    #[test]
    fn frames_are_looked_for_down_to_max_depth() {
        let frame = r#"{"stack":[{"addr":"0x1"}]}"#;
        for n in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1] {
            let objects = format!("{}{frame}{}", "{\"a\":".repeat(n), "}".repeat(n));
            let arrays = format!("{{\"a\":{}{frame}{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
            let mixed = format!("{}{frame}{}", "{\"a\":[".repeat(n / 2), "]}".repeat(n / 2));
            for line in [&objects, &arrays, &mixed] {
                let levels = if line == &mixed { n / 2 * 2 } else { n };
                let found = scan(line).unwrap().items.len();
                assert_eq!(found, usize::from(levels <= MAX_DEPTH), "{levels} levels: {line}");
            }
        }
    }

    #[test]
    fn nesting_limit_is_serde_jsons() {
        for n in 120..135 {
            for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("{\"stack\":[", "]}")] {
                let s = format!("{}1{}", open.repeat(n), close.repeat(n));
                assert_eq!(valid(&s), serde_valid(&s), "{open} x {n}");
            }
        }
    }

    #[test]
    fn random_lines_agree_with_serde_json() {
        // Mutations of a realistic line: every verdict must match.
        let base = r#"{"type":"alloc","pid":12,"x":[1.5,-2e3,"\u00e9\n"],"stack":[{"addr":"0x1","module":"/a b","offset":"0x10","build_id":"ab","return_address":true},{"kernel":false}]}"#;
        let alphabet = b"{}[]:,\"\\ 0123456789.eE+-truefalsnul\x01xu";
        let mut next = crate::testing::rng(0x9e37_79b9_7f4a_7c15);
        let mut verdicts = [0; 2];
        for _ in 0..50_000 {
            let b = crate::testing::mutate(base.as_bytes(), alphabet, &mut next);
            let s = String::from_utf8(b).unwrap();
            assert_eq!(valid(&s), serde_valid(&s), "{s}");
            verdicts[usize::from(valid(&s))] += 1;
        }
        // Both verdicts, many times each: the mutations are not all fatal.
        assert!(verdicts.iter().all(|&n| n > 5_000), "{verdicts:?}");
    }

    #[test]
    fn finds_frames_members_pid_and_paths() {
        let line = r#"{"pid":3,"a":[{"frames":[{"addr":"0x1", "k":[1]}, 5]}],"stack":null,"b":{"pid":4,"stack":"x"}}"#;
        let s = scan(line).unwrap();
        assert_eq!(&line[s.pid.unwrap().start..s.pid.unwrap().end], "3");
        assert_eq!(s.arrays, ["a[0].frames", "stack", "b.stack"]);
        // Neither 5 nor "x" is a frame.
        assert_eq!(s.items.len(), 1);
        let Item::Frame { open, close, members, .. } = s.items[0].clone() else { panic!() };
        assert_eq!(&line[open..=close], r#"{"addr":"0x1", "k":[1]}"#);
        let m: Vec<&str> =
            s.members[members].iter().map(|m| &line[m.whole().start..m.whole().end]).collect();
        assert_eq!(m, [r#""addr":"0x1""#, r#""k":[1]"#]);
    }
}
