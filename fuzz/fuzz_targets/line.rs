//! Arbitrary bytes as one input line: must yield a line or an error, never a
//! panic. Frames name files that do not exist, so no file system work counts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // With warm threads: each line's frames are also read ahead of time.
    let mut r = leakd_symbolize::Resolver::new(leakd_symbolize::Options { warm_threads: 2, ..leakd_symbolize::Options::default() });
    let first = r.process_line_bytes(data);
    if let Ok(Some(out)) = &first {
        // symres copies the line and adds fields: what it writes must be
        // JSON again.
        assert!(serde_json::from_slice::<serde_json::Value>(out).is_ok(), "{}", String::from_utf8_lossy(out));
    }
    // Frames are kept on their second sighting and known by their text
    // after that: the caches must not change a thing.
    for _ in 0..2 {
        assert_eq!(r.process_line_bytes(data), first);
    }
});
