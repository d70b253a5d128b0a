//! symres, the filter: JSON lines in, the same lines with their frames
//! resolved out.
//!
//! The resolving is leakd-symbolize's, shared with `leakd-attach
//! --symbolize`; this crate is only what makes it a program: the options
//! (`cli`) and the threads that keep a live stream flowing in input order
//! (`pipeline`). Keeping them apart means no tool crate depends on another.

mod arena;
mod background;
mod cli;
mod pipeline;

pub use cli::{command, run, Cli};
