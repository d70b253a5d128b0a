//! Arbitrary bytes as a symres cache file of answers (whole, and after a
//! good header whose CRC is made to match, so that the tables are
//! reached): loading, lookups and merging new answers in must not panic or
//! read out of bounds, and every answer must be JSON object members, since
//! it is copied into output lines as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakd_symbolize::fuzz_cache(data);
});
