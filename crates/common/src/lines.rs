//! Reading JSON lines from a pipe with a bound on each line's length.
//!
//! symres and leakd-report read what another tool (or anything) writes:
//! one line without a newline must not make them buffer without bound, nor
//! lose their place in the stream. A line longer than the bound is consumed
//! to its end without being kept, and the reader goes on with the next one.

use std::io::{self, BufRead, Read};

/// Longest input line accepted; longer ones are skipped as malformed
/// instead of being buffered without bound.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// What [`read_line_bounded`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounded {
    /// The end of the input: nothing was read.
    Eof,
    /// A line (with its `\n`, unless it ended the input) is in the buffer.
    Line,
    /// The line was longer than the bound; it was consumed to its end.
    TooLong,
}

/// Read one line into `buf` (cleared first), keeping at most `max` bytes
/// besides its `\n`; a longer line is read to its end and dropped.
pub fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Bounded> {
    buf.clear();
    let n = (&mut *input).take(max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Bounded::Eof);
    }
    if buf.len() > max && buf.last() != Some(&b'\n') {
        skip_rest_of_line(input)?;
        return Ok(Bounded::TooLong);
    }
    Ok(Bounded::Line)
}

/// Consume input up to and including the next `\n` (or to its end),
/// a buffer at a time, keeping none of it.
fn skip_rest_of_line(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                input.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize) -> Vec<(Bounded, Vec<u8>)> {
        // A tiny buffer: over-long lines span many fill_buf() calls.
        let mut r = io::BufReader::with_capacity(2, input);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            let b = read_line_bounded(&mut r, &mut buf, max).unwrap();
            got.push((b, buf.clone()));
            if b == Bounded::Eof {
                return got;
            }
        }
    }

    #[test]
    fn lines_up_to_the_bound_are_kept_longer_ones_skipped_whole() {
        let got = read_all(b"abcd\nabcde\nabcdefghij\nxy\nabcde", 4);
        let line = |s: &[u8]| (Bounded::Line, s.to_vec());
        assert_eq!(
            got,
            [
                line(b"abcd\n"),
                (Bounded::TooLong, b"abcde".to_vec()),
                (Bounded::TooLong, b"abcde".to_vec()),
                line(b"xy\n"),
                (Bounded::TooLong, b"abcde".to_vec()),
                (Bounded::Eof, Vec::new()),
            ]
        );
    }

    #[test]
    fn a_last_line_without_newline_is_a_line() {
        let got = read_all(b"ab\ncd", 4);
        assert_eq!(got[1], (Bounded::Line, b"cd".to_vec()));
        assert_eq!(got[2].0, Bounded::Eof);
    }
}
