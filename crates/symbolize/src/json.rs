//! JSON string bytes: which need escaping, and writing a string.
//!
//! Strings are most of a line and most of what symres writes; both the
//! scanner (reading) and the answers (writing) skip the plain bytes eight
//! at a time with the one test here.

/// How many bytes at the start of `b` need no attention in a JSON string
/// (all but `"`, `\\` and control characters), found eight at a time:
/// strings are most of a line, and most of what symres writes.
pub fn plain_prefix(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` below `n` (the classic bit trick:
    // bytes after the first such byte may be flagged wrongly, the first is
    // always right).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let special = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if special != 0 {
            // Little-endian: the lowest flagged bit is the first byte.
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..].iter().take_while(|&&c| c != b'"' && c != b'\\' && c >= 0x20).count()
}

/// A string written into a frame, escaped as JSON requires.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Most strings (names, paths) need no escaping: copy them.
    if plain_prefix(s.as_bytes()) == s.len() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Cannot fail: writing to a Vec, and a str is always serializable.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prefix_stops_at_the_first_special_byte() {
        for len in 0..40 {
            let plain = vec![b'a'; len];
            assert_eq!(plain_prefix(&plain), len);
            for at in 0..len {
                // Specials, and bytes right next to them that are not.
                for (c, special) in [
                    (b'"', true),
                    (b'\\', true),
                    (0, true),
                    (0x1f, true),
                    (0x20, false),
                    (0xc3, false),
                    (b'#', false),
                    (b']', false),
                ] {
                    let mut b = plain.clone();
                    b[at] = c;
                    // A special byte later must not hide behind an earlier one.
                    if at + 1 < len {
                        b[len - 1] = b'"';
                    }
                    let first = if special {
                        at
                    } else if at + 1 < len {
                        len - 1
                    } else {
                        len
                    };
                    assert_eq!(plain_prefix(&b), first, "{c:#x} at {at} of {len}");
                }
            }
        }
    }
}
