//! One parsed input line, borrowed from the line's bytes.
//!
//! Every leakd tool's line is decoded into one flat struct rather than a
//! `serde_json::Value`: a 100 MB stream is mostly repeated stacks, and a
//! typed parse that borrows its strings costs a fraction of building a tree
//! of maps per line. Fields a line type does not have stay `None`; fields we
//! do not render are skipped unparsed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A line of any leakd tool. `kind` is its `"type"`.
#[derive(Deserialize, Debug, Default)]
pub struct Line<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub ts_ns: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub tid: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub ppid: Option<u64>,
    #[serde(rename = "final", default)]
    pub is_final: Option<bool>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub outstanding_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub outstanding_count: Option<u64>,
    /// In a report line, the number of distinct stacks.
    #[serde(default, deserialize_with = "lenient_opt")]
    pub stacks: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub allocs: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub frees: Option<u64>,
    #[serde(default)]
    pub growth_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub growing: Option<bool>,
    #[serde(default)]
    pub estimated: Option<bool>,
    #[serde(default, borrow)]
    pub stack: Option<Vec<Frame<'a>>>,
    // allocsnoop
    #[serde(default, borrow)]
    pub op: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub comm: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub size_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub addr: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub old_addr: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub align_bytes: Option<u64>,
    #[serde(default)]
    pub failed: Option<bool>,
    // mismatch (leakd-attach, allocsnoop): the call that made the block
    // and the one that freed it
    #[serde(default, borrow)]
    pub alloc: Option<Call<'a>>,
    #[serde(default, borrow)]
    pub free: Option<Call<'a>>,
    // exec (leakd-attach): the replaced image's blocks that ended with it
    #[serde(default, deserialize_with = "lenient_opt")]
    pub freed_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub freed_bytes: Option<u64>,
    // execsnoop
    #[serde(default, borrow)]
    pub filename: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub argv: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    pub argv_truncated: Option<bool>,
    #[serde(default)]
    pub ret: Option<i64>,
    // syscount
    #[serde(default, borrow)]
    pub syscall: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub count: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub lat_ns_total: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub lat_ns_avg: Option<u64>,
    #[serde(default, borrow)]
    pub errno: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub seq: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub interval_ns: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub rows: Option<u64>,
    #[serde(default)]
    pub buckets: Option<Vec<Bucket>>,
    // lost
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub total: Option<u64>,
}

/// One side of a mismatch line: the operation and its stack.
#[derive(Deserialize, Debug, Default)]
pub struct Call<'a> {
    #[serde(default, borrow)]
    pub op: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub stack: Option<Vec<Frame<'a>>>,
}

/// A syscount latency histogram bucket.
#[derive(Deserialize, Debug)]
pub struct Bucket {
    #[serde(default, deserialize_with = "lenient_opt")]
    pub lat_ns_min: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub lat_ns_max: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub count: Option<u64>,
}

/// A stack frame as our tracers write it, with the fields symres adds.
#[derive(Deserialize, Debug, Default)]
pub struct Frame<'a> {
    #[serde(default, deserialize_with = "lenient_opt")]
    pub addr: Option<u64>,
    #[serde(default, borrow)]
    pub module: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub offset: Option<u64>,
    #[serde(default, borrow)]
    pub build_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sym: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub sym_offset: Option<u64>,
    #[serde(default, borrow)]
    pub file: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub line: Option<u64>,
    #[serde(default, borrow)]
    pub inlined: Option<Vec<Inlined<'a>>>,
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
}

/// A function symres found inlined at a frame's address.
#[derive(Deserialize, Debug, Default)]
pub struct Inlined<'a> {
    #[serde(default, borrow)]
    pub sym: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub file: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt")]
    pub line: Option<u64>,
}

/// Parse one line. The error says what is wrong, for the warning.
pub fn parse(text: &str) -> Result<Line<'_>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Numbers come as JSON integers or as strings, hex (`"0x1f"`) or decimal
/// (our tools write addresses as hex strings; symres accepts both forms).
/// A float (a sampled estimate) is rounded.
fn lenient_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer, or a string of one in hex or decimal")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom(format!("negative number {v}")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if (0.0..1.8e19).contains(&v) {
                Ok(Some(v.round() as u64))
            } else {
                Err(E::custom(format!("number out of range {v}")))
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.map(Some).map_err(|_| E::custom(format!("not a number: {s:?}")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_every_form() {
        let l = parse(
            r#"{"type":"stack","outstanding_bytes":"0x10","allocs":"12","frees":3.0,"pid":null}"#,
        )
        .unwrap();
        assert_eq!(l.outstanding_bytes, Some(16));
        assert_eq!(l.allocs, Some(12));
        assert_eq!(l.frees, Some(3));
        assert_eq!(l.pid, None);
        assert!(parse(r#"{"type":"stack","outstanding_bytes":"zz"}"#).is_err());
        assert!(parse(r#"{"type":"stack","outstanding_bytes":-1}"#).is_err());
        assert!(parse(r#"{"outstanding_bytes":1}"#).is_err(), "type is required");
    }

    #[test]
    fn escaped_strings_are_owned() {
        let l = parse(r#"{"type":"exec","argv":["a\"b","c"]}"#).unwrap();
        assert_eq!(l.argv.unwrap()[0], "a\"b");
    }
}
