//! C++ (Itanium) names as LLVM writes them: llvm-symbolizer, llvm-cxxfilt
//! and lldb print the names of LLVM's demangler, so symres's names agree
//! with theirs. It is also several times faster than the cpp_demangle
//! crate, which was most of symres's time on large C++ binaries such as
//! node. The demangler is C++ (LLVM 19.1.7's `ItaniumDemangle.h`, vendored
//! with its license); `shim.cpp` gives it a C entry point.

use std::ffi::c_char;

extern "C" {
    fn leakd_itanium_demangle(name: *const c_char, len: usize, out_len: *mut usize) -> *mut c_char;
    fn leakd_itanium_free(buf: *mut c_char);
}

/// The longest name given to LLVM's demangler. Its parser and printer
/// recurse with no limit, up to one level per byte of the name, at about
/// 400 bytes of stack a level: `_Z1f` and 6,000 `P`s overflow a thread's
/// 2 MiB stack (a crash, not an error). 1,024 bytes keep the worst case
/// near 0.5 MiB; the longest C++ name of node and libstdc++ is 483 bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The readable form of an Itanium-mangled name (`_ZN3foo3barEv` →
/// `foo::bar()`), or `None` when LLVM's demangler rejects it, the name is
/// longer than [`MAX_NAME_LEN`], or its text would pass 1 MiB (substitutions
/// can double it every few bytes: see `MaxPrinted` in shim.cpp).
pub fn demangle(name: &str) -> Option<String> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    let mut len = 0usize;
    // SAFETY: the shim reads exactly `name.len()` bytes from `name`'s
    // pointer (no NUL needed) and writes one usize through `len`, a live
    // local.
    let buf = unsafe { leakd_itanium_demangle(name.as_ptr().cast(), name.len(), &mut len) };
    if buf.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a malloc'd buffer of at least `len`
    // initialized bytes, owned by us until leakd_itanium_free.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    // Mangled names are ASCII, but a source name (`<length><bytes>`) may
    // carry any bytes: those are replaced, never trusted.
    let s = String::from_utf8_lossy(bytes).into_owned();
    // SAFETY: `buf` came from leakd_itanium_demangle and is freed once;
    // `bytes` (which borrows it) is not used after this.
    unsafe { leakd_itanium_free(buf) };
    Some(s)
}

#[cfg(test)]
mod tests {
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

    /// `_Z1f1A`, then `k` (at most 18) pointers to functions of two
    /// copies of the previous one, by substitution: its text doubles with
    /// each.
    fn doubling(k: usize) -> String {
        // Substitution i: S_, then S<i - 1 in base 36>_.
        let seq = |i: usize| match i {
            0 => "S_".to_string(),
            i => format!("S{}_", &"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i - 1..i]),
        };
        let mut name = String::from("_Z1f1A");
        let mut last = 0;
        for i in 0..k {
            // The function type is substitution 2i + 1, its pointer 2i + 2.
            name.push_str(&format!("PFv{0}{0}E", seq(last)));
            last = 2 * i + 2;
        }
        name
    }

    #[test]
    fn doubling_substitutions_stop_at_a_bound() {
        let small = demangle(&doubling(2)).expect("demangles");
        assert_eq!(small, "f(A, void (*)(A, A), void (*)(void (*)(A, A), void (*)(A, A)))");
        // 14 doublings: 425 KB of text, printed.
        let d = demangle(&doubling(14)).expect("under the bound");
        assert!(d.len() > 400_000 && d.len() < 1 << 20, "{}", d.len());
        // 16 would print 1.7 MB, over the bound.
        assert_eq!(demangle(&doubling(16)), None);
        assert_eq!(demangle(&doubling(17)), None);
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
