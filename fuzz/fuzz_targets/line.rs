//! Arbitrary bytes as one input line: must yield a line or an error, never a
//! panic. Frames name files that do not exist, so no file system work counts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = symres::Resolver::new(symres::Options::default());
    if let Ok(Some(out)) = r.process_line_bytes(data) {
        // symres copies the line and adds fields: what it writes must be
        // JSON again.
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "{}", String::from_utf8_lossy(&out));
    }
});
