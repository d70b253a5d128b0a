//! DWARF unwinding of user stacks in BPF, for code built without frame
//! pointers (distribution packages, libstdc++, Rust release builds, C at
//! -O2), where the kernel's frame-pointer walk stops after one frame.
//!
//! Why tables and not the CFI itself: the BPF side cannot run a DWARF CFA
//! program, and must not loop unbounded. So user space evaluates each
//! module's CFI once ([`table`]) into a sorted array of rows, one per change
//! of the rule, each saying how to find the caller's frame from the current
//! one in a few loads: CFA = rsp or rbp + offset, the return address at
//! CFA-8, rbp saved at CFA+n or untouched. That covers compiler-generated
//! code on x86-64 almost entirely (parca-agent and the opentelemetry
//! profiler found the same); the rest is marked so the walker stops there
//! with a reason instead of guessing.
//!
//! Why rows by file offset: one table per file then serves every process
//! that maps it, at any address, and a library mapped after attach needs
//! only its own table ([`loader`]).

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/unwind.rs"));
}

pub mod loader;
pub mod table;

pub use loader::{configure, exec_files, Mode, UnwindArgs, Unwinder, POLL};
pub use table::{build_file, Table};
