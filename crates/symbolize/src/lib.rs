//! The symbolizer behind `symres` and `leakd-attach --symbolize`.
//!
//! Our tracers print raw addresses (module + file offset + build id, or an
//! address and a PID) because resolving names in the kernel or in the hot
//! path would cost events; resolving them afterwards, offline if need be,
//! is this crate's job. It is a library of its own, not part of the symres
//! tool, so that leakd-attach can symbolize in process with the same code
//! (`Resolver`, `Resolver::process_line_into`) without one tool crate
//! depending on another; symres adds the options and the threads.
//!
//! The modules import one way, each only from those below it (a test reads
//! the sources and fails on a cycle):
//!
//! 1. `symbolizer` (the public `Resolver`: a resolver and its line buffers)
//! 2. `frame_line` (one input line of JSON frames: find, resolve, write
//!    back) and `frame_scan` (the validating scanner that finds them)
//! 3. `resolver/` (frame → module → answer, with its caches: loaded
//!    modules, debug files, processes' maps, DWARF shared between threads)
//! 4. the sources of answers: `cache` (the answers runs learned, by build
//!    id), `index` (prebuilt answers), `dwarf`, `elf`,
//!    `kallsyms`, `mmap`, `store` (files in the index directory, safe from
//!    whoever else writes there), `files` (opening the files frames name:
//!    regular ones, without blocking, inside a process's root)
//! 5. what everyone uses: `answer` (Reason, Resolution and how they are
//!    written into a frame), `json` (string bytes), `demangle`, `log`
//!    (messages under the running tool's name), `tables` (the layout the
//!    index and the cache files share, checked to fit)
//!
//! In a filter it must never hold back a live stream (output is flushed
//! whenever the next read could block) and never give up on a whole stream
//! because of one bad line or one bad file.

mod answer;
mod cache;
mod demangle;
mod dwarf;
mod elf;
mod files;
mod frame_line;
mod frame_scan;
mod index;
mod json;
mod kallsyms;
pub mod log;
mod mmap;
mod prefetch;
mod resolver;
mod store;
mod symbolizer;
mod tables;
#[cfg(test)]
mod testing;

pub use answer::{Inlined, Outcome, PidFrame, Reason, Resolution};
#[doc(hidden)]
pub use cache::fuzz as fuzz_cache;
pub use cache::DEFAULT_SIZE as DEFAULT_CACHE_SIZE;
pub use demangle::demangle;
pub use frame_line::LineError;
#[doc(hidden)]
pub use index::fuzz as fuzz_index;
pub use kallsyms::KERNEL_START;
#[doc(hidden)]
pub use resolver::fuzz_elf;
pub use resolver::{CacheWrite, Options, MAX_OPEN_MODULES};
pub use symbolizer::Resolver;

// A resolver can be moved to another thread (checked at compile time).
const _: () = {
    const fn send<T: Send>() {}
    send::<Resolver>()
};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The crate-level module (a file under src/, or a folder) each source
    /// file belongs to.
    fn module_of(path: &Path, src: &Path) -> String {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    }

    /// `crate::x` imports (outside tests) of every crate-level module.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let mut dirs = vec![src.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in files {
            let from = module_of(&f, &src);
            let text = std::fs::read_to_string(&f).unwrap();
            // Tests may use whatever they check against.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let deps = edges.entry(from.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from && from != "lib" {
                    deps.insert(name);
                }
            }
        }
        edges
    }

    /// No module imports, directly or not, a module that imports it.
    #[test]
    fn modules_import_one_way() {
        let edges = imports();
        assert!(edges.len() > 15, "{edges:?}");
        for (m, deps) in &edges {
            for d in deps {
                assert!(edges.contains_key(d), "{m} imports crate::{d}, not a module of ours");
            }
        }
        assert!(edges["frame_line"].contains("resolver"), "{edges:?}");
        // Depth-first from each module; a module on the current path found
        // again is a cycle.
        fn visit<'a>(
            m: &'a str,
            edges: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if let Some(at) = path.iter().position(|p| *p == m) {
                panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
            }
            if !done.insert(m) {
                return;
            }
            path.push(m);
            for d in edges.get(m).into_iter().flatten() {
                visit(d, edges, path, done);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        for m in edges.keys() {
            visit(m, &edges, &mut vec![], &mut done);
        }
    }
}
