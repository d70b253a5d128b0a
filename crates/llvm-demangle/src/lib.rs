//! C++ (Itanium) names as LLVM writes them: llvm-symbolizer, llvm-cxxfilt
//! and lldb print the names of LLVM's demangler, so symres's names agree
//! with theirs. It is also several times faster than the cpp_demangle
//! crate, which was most of symres's time on large C++ binaries such as
//! node. The demangler is C++ (LLVM 19.1.7's `ItaniumDemangle.h`, vendored
//! with its license); `shim.cpp` gives it a C entry point.

use std::ffi::c_char;

#[doc(hidden)]
pub mod crafted;

extern "C" {
    fn leakd_itanium_demangle(
        name: *const c_char,
        len: usize,
        max_output: usize,
        out_len: *mut usize,
    ) -> *mut c_char;
    fn leakd_itanium_free(buf: *mut c_char);
}

/// The longest name given to LLVM's demangler. Its parser and printer
/// recurse with no limit, up to one level per byte of the name, at about
/// 400 bytes of stack a level: `_Z1f` and 6,000 `P`s overflow a thread's
/// 2 MiB stack (a crash, not an error). 1,024 bytes keep the worst case
/// near 0.5 MiB; the longest C++ name of node and libstdc++ is 483 bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The longest readable form, in bytes: a name whose demangled form would
/// be longer is rejected. Substitutions repeat earlier parts of a name, so a
/// crafted name of a few hundred bytes can double its output at each of
/// them, without end (memory exhausted, and LLVM's printer aborts then);
/// the shim stops printing at this length. Far above any real name's: the
/// longest mangled one of node and libstdc++ is 483 bytes.
pub const MAX_OUTPUT_LEN: usize = 64 * 1024;

/// The readable form of an Itanium-mangled name (`_ZN3foo3barEv` →
/// `foo::bar()`), or `None` when LLVM's demangler rejects it, the name is
/// longer than [`MAX_NAME_LEN`] or its readable form would be longer than
/// [`MAX_OUTPUT_LEN`].
pub fn demangle(name: &str) -> Option<String> {
    demangle_with(name, str::to_owned).ok()
}

/// [`demangle`], the readable form lent to `f` rather than copied into a
/// `String` of its own (a caller that keeps it in another form copies it
/// once, not twice); `f` is given back, not called, when the name is
/// rejected.
pub fn demangle_with<R, F: FnOnce(&str) -> R>(name: &str, f: F) -> Result<R, F> {
    if name.len() > MAX_NAME_LEN {
        return Err(f);
    }
    let mut len = 0usize;
    // SAFETY: the shim reads exactly `name.len()` bytes from `name`'s
    // pointer (no NUL needed) and writes one usize through `len`, a live
    // local.
    let buf = unsafe {
        leakd_itanium_demangle(name.as_ptr().cast(), name.len(), MAX_OUTPUT_LEN, &mut len)
    };
    if buf.is_null() {
        return Err(f);
    }
    // SAFETY: a non-null result is a malloc'd buffer of at least `len`
    // initialized bytes, owned by us until leakd_itanium_free.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    // Mangled names are ASCII, but a source name (`<length><bytes>`) may
    // carry any bytes: those are replaced, never trusted.
    let r = match std::str::from_utf8(bytes) {
        Ok(s) => f(s),
        // Slower: not for every name.
        Err(_) => f(&String::from_utf8_lossy(bytes)),
    };
    // SAFETY: `buf` came from leakd_itanium_demangle and is freed once;
    // `bytes` (which borrows it) is not used after this.
    unsafe { leakd_itanium_free(buf) };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::crafted::{doubling, printing};
    use super::demangle;

    #[test]
    fn demangles_as_llvm_does() {
        assert_eq!(demangle("_ZN3foo3barEv").as_deref(), Some("foo::bar()"));
        assert_eq!(demangle("_Z3addii").as_deref(), Some("add(int, int)"));
        assert_eq!(
            demangle("_ZNSt6vectorIiSaIiEE9push_backERKi").as_deref(),
            Some("std::vector<int, std::allocator<int>>::push_back(int const&)")
        );
        // A local name's discriminator (parse_discriminator, in the shim).
        assert_eq!(demangle("_ZZ4mainE1x_0").as_deref(), Some("main::x"));
        assert_eq!(demangle("_ZN3foo3barEv.cold").as_deref(), Some("foo::bar() (.cold)"));
        // Rejected: not a mangled name, a truncated one, nothing.
        assert_eq!(demangle("main"), None);
        assert_eq!(demangle("_ZN3foo"), None);
        assert_eq!(demangle("_Z"), None);
        assert_eq!(demangle(""), None);
    }

    #[test]
    fn names_past_the_limit_are_not_parsed() {
        // Deep enough to overflow this test thread's stack if parsed.
        let deep = format!("_Z1f{}v", "P".repeat(20_000));
        assert_eq!(demangle(&deep), None);
        let at_limit = format!("_Z1f{}v", "P".repeat(super::MAX_NAME_LEN - 5));
        assert_eq!(at_limit.len(), super::MAX_NAME_LEN);
        let d = demangle(&at_limit).expect("demangles");
        assert_eq!(d, format!("f(void{})", "*".repeat(super::MAX_NAME_LEN - 5)));
    }

    #[test]
    fn output_is_capped() {
        assert_eq!(
            demangle(&doubling(3)).as_deref(),
            Some("f(A, B<A, A>, B<B<A, A>, B<A, A>>, B<B<B<A, A>, B<A, A>>, B<B<A, A>, B<A, A>>>)")
        );
        // About 2^46 bytes (2^41 times `A`) from 464 bytes: all memory, or
        // a very long time, if printed.
        let crafted = doubling(41);
        assert_eq!(crafted.len(), 464);
        assert_eq!(demangle(&crafted), None);
        // At the limit, and one byte past it.
        let at_limit = printing(super::MAX_OUTPUT_LEN, demangle);
        assert!(at_limit.len() <= super::MAX_NAME_LEN, "{}", at_limit.len());
        assert_eq!(demangle(&at_limit).map(|d| d.len()), Some(super::MAX_OUTPUT_LEN));
        assert_eq!(demangle(&printing(super::MAX_OUTPUT_LEN + 1, demangle)), None);
    }

    /// `open` n times, `middle`, `close` n times: as deep as MAX_NAME_LEN
    /// allows.
    fn nested(head: &str, open: &str, middle: &str, close: &str, tail: &str) -> String {
        let fixed = head.len() + middle.len() + tail.len();
        let n = (super::MAX_NAME_LEN - fixed) / (open.len() + close.len());
        format!("{head}{}{middle}{}{tail}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn deepest_names_fit_a_resolving_threads_stack() {
        // symres resolves on threads of Rust's default 2 MiB stack. LLVM's
        // parser and printer recurse once per level of nesting, with no
        // limit: the deepest a name of MAX_NAME_LEN bytes can nest, in each
        // of the ways that cost a level for the fewest bytes. (All of them
        // fit in 256 KiB, not in 128 KiB, on x86-64.)
        let names = [
            // f(void*****...) and f(int const* const* ...)
            nested("_Z1f", "P", "v", "", ""),
            nested("_Z1f", "PK", "i", "", ""),
            // f(int (*...) [][]...)
            nested("_Z1fP", "A_", "i", "", ""),
            // f(A<A<A<...int>>>)
            nested("_Z1f", "1AI", "i", "E", ""),
            // f(void (*(*...)())())
            nested("_Z1f", "PF", "v", "vE", ""),
            // f<-(-(-(...1)))>(): expressions
            nested("_Z1fIX", "ng", "Li1E", "", "EEvv"),
            // f<(1 + (1 + ...))>()
            nested("_Z1fIX", "plLi1E", "Li1E", "", "EEvv"),
            // a::b::c... nested names, and local names (f()::g()::...)
            nested("_Z", "Z", "1fv", "E1gv", ""),
        ];
        let outcomes = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                names.iter().map(|n| (n.len(), demangle(n).map(|d| d.len()))).collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        // Each as deep as the limit allows, and demangled in full.
        assert!(
            outcomes.iter().all(|(len, d)| *len > super::MAX_NAME_LEN - 6 && d.is_some()),
            "{outcomes:?}"
        );
    }

    #[test]
    fn long_names_grow_the_allocator() {
        // 100 template arguments: more nodes than the first 4 KiB block
        // holds.
        let mut name = String::from("_Z1fI");
        for _ in 0..100 {
            name.push_str("N1a1bIiEE");
        }
        name.push_str("EvT_");
        assert!(name.len() <= super::MAX_NAME_LEN);
        let d = demangle(&name).expect("demangles");
        assert_eq!(d.matches("a::b<int>").count(), 101);
    }
}
