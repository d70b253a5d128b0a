//! Arbitrary bytes as an ELF file: parse it, build its DWARF context and
//! look up a few addresses. Corrupt files must give errors, not panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leakd_symbolize::fuzz_elf(data);
});
