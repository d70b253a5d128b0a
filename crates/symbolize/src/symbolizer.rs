//! The library's face: a resolver and the buffers it rewrites lines with.
//!
//! leakd-attach symbolizes in process through this (`--symbolize`), symres
//! through the same type on each of its threads.

use crate::answer::{Outcome, PidFrame};
use crate::frame_line::{self, LineError, Scratch};
use crate::resolver::{parse_build_id, AddrResolver, ModuleFrame, Options};

/// The resolver with its caches; one per stream (or per leakd-attach run).
pub struct Resolver {
    addrs: AddrResolver,
    lines: Scratch,
}

// A resolver can be moved to another thread (checked at compile time).
const _: () = {
    const fn send<T: Send>() {}
    send::<Resolver>()
};

impl Resolver {
    pub fn new(opts: Options) -> Self {
        Resolver { addrs: AddrResolver::new(opts), lines: Scratch::default() }
    }

    /// Another resolver with the same options, for another thread: it has
    /// caches of its own but shares this one's parsed DWARF (most of what
    /// a new address costs in a large binary).
    pub fn fresh(&self) -> Self {
        Resolver { addrs: self.addrs.fresh(), lines: Scratch::default() }
    }

    /// Resolve a file offset in a module, as recorded for a process that may
    /// have exited. `build_id` is the GNU build id in hex ("" or `None` when
    /// unknown); an invalid one is treated as unknown. The module is named
    /// as in a frame (by our tools' non-UTF-8 rule).
    pub fn resolve_module_offset(
        &mut self,
        module: &std::path::Path,
        offset: u64,
        build_id: Option<&str>,
    ) -> Outcome {
        let id = build_id.and_then(|b| parse_build_id(b).ok().flatten());
        let name = leakd_common::text::to_text(module.as_os_str().as_encoded_bytes());
        self.addrs.resolve_module_offset(&ModuleFrame {
            module: &name,
            offset,
            back: 0,
            build_id: id.as_deref(),
            pid: None,
        })
    }

    /// Resolve an address of a live process through its /proc/PID/maps.
    pub fn resolve_pid_addr(&mut self, pid: u32, addr: u64) -> PidFrame {
        self.addrs.next_generation();
        self.addrs.resolve_pid_addr(pid, addr, 0, None)
    }

    /// Resolve a kernel address through /proc/kallsyms.
    pub fn resolve_kernel(&mut self, addr: u64) -> Outcome {
        self.addrs.resolve_kernel(addr, 0)
    }

    /// Add symbols to every frame of one JSON line (without its newline),
    /// appending the rewritten line to `out`. `Ok(false)`: the line has no
    /// frames; write it as it was, byte for byte (`out` is left as it was,
    /// as it is when the line is rejected).
    pub fn process_line_into(
        &mut self,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<bool, LineError> {
        frame_line::process_into(&mut self.addrs, &mut self.lines, line, out)
    }

    /// The frames of the last line given to `process_line_into` that were
    /// left unresolved as malformed (`"reason":"malformed"`), each as
    /// `stack[2].addr: why`.
    pub fn bad_frames(&self) -> &[String] {
        self.lines.bad_frames()
    }

    /// `process_line_into` with a new buffer: `Ok(None)` when the line has
    /// no frames.
    pub fn process_line_bytes(
        &mut self,
        line: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, LineError> {
        let mut out = Vec::new();
        Ok(self.process_line_into(line, &mut out)?.then_some(out))
    }

    /// Whether lines now come few at a time (see `AddrResolver::set_warm`).
    pub fn set_warm(&mut self, on: bool) {
        self.addrs.set_warm(on);
    }

    /// This resolver's part of the cache of answers, handed over when its
    /// last line is answered (see `AddrResolver::finish_cache`).
    pub fn finish_cache(&mut self) {
        self.addrs.finish_cache();
    }

    /// Write the cache of answers: what this resolver and those made from
    /// it by `fresh` learned, once they are done (`Options::cache`).
    pub fn write_cache(&mut self) {
        self.addrs.write_cache();
    }

    /// What `write_cache` would write, to be written later or elsewhere
    /// (see `AddrResolver::take_cache_write`).
    pub fn take_cache_write(&mut self) -> Option<crate::resolver::CacheWrite> {
        self.addrs.take_cache_write()
    }

    /// Build the index of `file` (see `AddrResolver::build_index`).
    pub fn build_index(
        &mut self,
        file: &std::path::Path,
        threads: usize,
    ) -> std::result::Result<(std::path::PathBuf, usize), String> {
        self.addrs.build_index(file, threads)
    }
}
