//! The integration tests: one test binary, a module per tool.
//!
//! One binary rather than one per tool: each test binary links the whole
//! workspace, so six of them cost six links on every change. `support` holds
//! what the modules share; `#[bpf_test]` (crates/test-macros) marks the tests
//! that load BPF programs, which skip outside CI without root and fail in CI.

mod support;

mod allocsnoop;
mod containers;
mod deploy;
mod execsnoop;
mod leakd_attach;
mod leakd_report;
mod man;
mod symres;
mod syscount;
mod unwind;
