//! Arbitrary bytes as a symres index (after its header, which names the
//! symres that wrote it): loading and lookups must not panic or read out of
//! bounds, and every answer must be JSON object members, since it is
//! copied into output lines as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakd_symbolize::fuzz_index(data);
});
