//! Turning kernel bytes and numbers into JSON values, by one documented rule.
//!
//! Names the kernel hands us (comm, filenames, argv) are bytes, not text. JSON
//! strings must be Unicode, and silently replacing bad bytes with U+FFFD would
//! lose information a user may need (a file name is still a valid name when it
//! is not UTF-8). The rule, stated in every man page's OUTPUT section:
//!
//! > Valid UTF-8 is written unchanged, except the backslash. Each byte that is
//! > not part of a valid UTF-8 sequence, and each backslash, is written as the
//! > four characters `\xHH` (a backslash, `x` and two lower-case hex digits;
//! > a backslash is `\x5c`).
//!
//! Escaping the backslash too is what makes the rule unambiguous: every
//! backslash in a string written by it starts an escape, so a name that
//! holds the four characters `\xff` (written `\x5cxff`) cannot be told for
//! one holding the byte 0xff (written `\xff`).

use std::time::Duration;

/// Apply the non-UTF-8 rule described in the module docs.
pub fn bytes_to_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if valid.contains('\\') {
            out.push_str(&valid.replace('\\', "\\x5c"));
        } else {
            out.push_str(valid);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `bytes_to_string`, without a copy when the bytes are UTF-8 (and hold
/// no backslash) already.
pub fn to_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\\') => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(bytes_to_string(bytes)),
    }
}

/// The bytes `s` stands for under the rule, when it holds `\xHH` sequences
/// that the rule writes: those decoded. `None` when `s` stands for its own
/// bytes (text from elsewhere may hold the characters `\x41`: the rule
/// would have written the byte they decode to as itself, so they are left
/// alone).
pub fn string_to_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.contains("\\x") {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let (mut i, mut decoded) = (0, false);
    while i < b.len() {
        let hex = b.get(i + 2..i + 4).filter(|h| {
            b[i] == b'\\'
                && b[i + 1] == b'x'
                && h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        });
        match hex
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(v) => {
                out.push(v);
                i += 4;
                decoded = true;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    (decoded && bytes_to_string(&out) == s).then_some(out)
}

/// Bytes up to the first NUL (a C string in a fixed-size buffer).
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    }
}

/// A C string buffer (such as `comm`) as a JSON string.
pub fn c_string(bytes: &[u8]) -> String {
    bytes_to_string(until_nul(bytes))
}

/// Addresses are written as `"0x..."` strings: JSON numbers above 2^53 are not
/// exact in many consumers (jq among them).
pub fn hex(addr: u64) -> String {
    let mut o = Vec::with_capacity(18);
    push_hex(&mut o, addr);
    String::from_utf8(o).unwrap_or_default()
}

/// `hex(v)` appended to `o`: a filter writing one per frame pays no
/// formatting machinery and no allocation (ten times the cost).
pub fn push_hex(o: &mut Vec<u8>, v: u64) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1) as usize;
    o.extend_from_slice(b"0x");
    for i in (0..digits).rev() {
        o.push(b"0123456789abcdef"[(v >> (4 * i) & 0xf) as usize]);
    }
}

/// `push_hex` as a JSON string, `"0x..."` (hex digits need no escaping).
pub fn push_hex_string(o: &mut Vec<u8>, v: u64) {
    o.push(b'"');
    push_hex(o, v);
    o.push(b'"');
}

/// Bytes (a build id) as lower-case hex digits, two per byte.
pub fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps (`bpf_ktime_get_ns`) into
/// wall-clock nanoseconds since the Unix epoch, with an offset taken once.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        WallClock { offset_ns: real - mono }
    }

    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(monotonic_ns as i128 + self.offset_ns).unwrap_or(0)
    }

    /// Now, on the kernel's monotonic clock.
    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Parse a duration in seconds (`10`, `0.5`) as given on the command line.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    // A millisecond at least (a shorter interval is a busy loop), ten years
    // at most (beyond that, a typo).
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&v) {
        return Err(format!("'{s}': expected seconds from {MIN_SECONDS} to {MAX_SECONDS}"));
    }
    Ok(Duration::from_secs_f64(v))
}

const MIN_SECONDS: f64 = 0.001;
const MAX_SECONDS: f64 = 315_360_000.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_passes_and_bad_bytes_are_escaped() {
        assert_eq!(bytes_to_string(b"caf\xc3\xa9"), "café");
        assert_eq!(bytes_to_string(b"a\xffb\xfe"), "a\\xffb\\xfe");
        assert_eq!(bytes_to_string(b"\xc3"), "\\xc3");
    }

    #[test]
    fn a_literal_backslash_is_escaped_so_escapes_are_unambiguous() {
        // The four characters \xff and the byte 0xff used to both be \xff.
        assert_eq!(bytes_to_string(b"\\xff"), "\\x5cxff");
        assert_eq!(bytes_to_string(b"\xff"), "\\xff");
        assert_eq!(bytes_to_string(b"C:\\dir"), "C:\\x5cdir");
        assert_eq!(to_text(b"a\\b"), "a\\x5cb");
        assert_eq!(string_to_bytes("\\x5cxff").as_deref(), Some(&b"\\xff"[..]));
    }

    #[test]
    fn strings_written_by_the_rule_read_back() {
        for bytes in [
            &b"a\xffb\xfe"[..],
            b"\xc3",
            b"caf\xc3\xa9\xff",
            b"\\x\xff",
            b"/tmp/nu\xff/prog",
            b"a\\b",
        ] {
            let s = bytes_to_string(bytes);
            assert_eq!(string_to_bytes(&s).as_deref(), Some(bytes), "{s}");
        }
        // Text that stands for itself: no escapes, escapes the rule would
        // not write (a valid byte, upper case, cut short), or a mix.
        for s in ["plain", "caf\u{e9}", "\\x41", "\\xFF", "\\xf", "\\x", "a\\x41\\xff"] {
            assert_eq!(string_to_bytes(s), None, "{s}");
        }
    }

    #[test]
    fn c_string_stops_at_nul() {
        assert_eq!(c_string(b"sh\0\0junk"), "sh");
        assert_eq!(c_string(b"full"), "full");
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("1e-300").is_err());
        assert!(parse_seconds("1e100").unwrap_err().contains("expected seconds from"));
        assert_eq!(parse_seconds("0.001"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn hex_addresses() {
        assert_eq!(hex(0x7f00_dead_beef), "0x7f00deadbeef");
        assert_eq!(hex(0), "0x0");
        for v in [1, 0xf, 0x10, 0xabc, 0x7fff_ffff, 0x1_0000_0000, u64::MAX - 1, u64::MAX] {
            assert_eq!(hex(v), format!("{v:#x}"));
        }
        let mut o = b"x".to_vec();
        push_hex_string(&mut o, 0xabc);
        assert_eq!(o, b"x\"0xabc\"");
    }
}
