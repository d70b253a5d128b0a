//! Symbol names as people write them: Rust (legacy and v0) and C++.

use std::fmt::Write as _;

/// Rust (legacy and v0) and C++ (Itanium) names, readable. Rust's legacy
/// scheme is a subset of C++'s, so it is tried first; its hash is dropped.
/// C++ names are written as LLVM's demangler writes them (as
/// llvm-symbolizer and llvm-cxxfilt print them): `std::vector<int>>`
/// without a space between closing brackets, `non-virtual thunk to f()`,
/// a clone suffix as `f() (.cold)`.
pub fn demangle(name: &str) -> String {
    demangle_with(name, str::to_owned)
}

/// [`demangle`], the readable form lent to `f` (a name that is not
/// mangled is lent as it is): a symbol's name is kept as JSON and as a
/// shared string, each a copy of this, with no `String` between.
pub fn demangle_with<R>(name: &str, f: impl FnOnce(&str) -> R) -> R {
    // A C++ nested name also parses as legacy Rust; only trust it when it
    // was Rust's (a v0 name, or one ending in a 17h<hash>E path), which is
    // told first: a C++ binary's names are then not parsed twice.
    let rust = name.starts_with("_R")
        || ((name.starts_with("_ZN") || name.starts_with("__ZN")) && looks_like_rust_legacy(name));
    if rust {
        if let Ok(d) = rustc_demangle::try_demangle(name) {
            // Room for the usual length up front: `format!` would grow the
            // string from nothing, a copy at each doubling.
            let mut s = String::with_capacity(name.len() + name.len() / 2);
            // Cannot fail: writing to a String.
            let _ = write!(s, "{d:#}");
            return f(&s);
        }
    }
    if name.contains('$') && !name.starts_with("_Z") {
        if let Some(d) = decode_rust_escapes(name) {
            return f(&d);
        }
    }
    if name.starts_with("_Z") {
        // LLVM's demangler: the names llvm-symbolizer prints, several times
        // faster than cpp_demangle (most of symres's time on a large C++
        // binary). cpp_demangle is kept for what LLVM's rejects, and for
        // names too long to give it (see MAX_NAME_LEN).
        let f = match leakd_llvm_demangle::demangle_with(name, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        if let Some(d) = cpp_demangle_capped(name) {
            return f(&d);
        }
        return f(name);
    }
    f(name)
}

/// cpp_demangle's readable form of a C++ name, or `None` when it rejects
/// the name or the form would be longer than LLVM's demangler allows
/// ([`leakd_llvm_demangle::MAX_OUTPUT_LEN`]): a crafted name can double its
/// output at each substitution, and cpp_demangle has no limit of its own.
fn cpp_demangle_capped(name: &str) -> Option<String> {
    let sym = cpp_demangle::Symbol::new(name).ok()?;
    // What `sym.demangle()` writes, into a string with room for a long name
    // (substitutions make names several times their mangled length): it
    // grew from nothing, a copy per doubling.
    let mut out = Capped(String::with_capacity(name.len() * 4));
    sym.structured_demangle(&mut out, &Default::default()).ok()?;
    Some(out.0)
}

/// A string that refuses (fmt::Error, which ends cpp_demangle's printing)
/// to grow past [`leakd_llvm_demangle::MAX_OUTPUT_LEN`].
struct Capped(String);

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > leakd_llvm_demangle::MAX_OUTPUT_LEN {
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// DWARF gives some Rust functions (inlined closures, trait impls) by their
/// unmangled-but-escaped name, `_$LT$T$u20$as$u20$a..B$GT$::f`. Decode the
/// escapes the legacy scheme uses; `None` when it is not such a name.
fn decode_rust_escapes(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for (i, seg) in name.split("::").enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        let mut rest = seg.strip_prefix("_$").map_or(seg, |r| &seg[seg.len() - r.len() - 1..]);
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                out.push_str("::");
                rest = r;
            } else if let Some(r) = rest.strip_prefix('$') {
                let end = r.find('$')?;
                let esc = &r[..end];
                let c = match esc {
                    "SP" => '@',
                    "BP" => '*',
                    "RF" => '&',
                    "LT" => '<',
                    "GT" => '>',
                    "LP" => '(',
                    "RP" => ')',
                    "C" => ',',
                    _ => char::from_u32(u32::from_str_radix(esc.strip_prefix('u')?, 16).ok()?)?,
                };
                out.push(c);
                rest = &r[end + 1..];
            } else {
                let n = rest.find(['$', '.']).unwrap_or(rest.len()).max(1);
                out.push_str(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
    Some(out)
}

fn looks_like_rust_legacy(name: &str) -> bool {
    // ...17h<16 hex digits>E, at the end or before a suffix such as
    // ".llvm.123": looked for from where it would end (the last byte, or
    // one before a dot), not by a substring search over every C++ name of
    // a binary (a tenth of the time each name took on node).
    let b = name.as_bytes();
    let ends_at = |e: usize| {
        e >= 19
            && b.get(e) == Some(&b'E')
            && b.get(e - 19..e - 16) == Some(b"17h")
            && b.get(e - 16..e).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    ends_at(b.len().wrapping_sub(1))
        || memchr::memchr_iter(b'.', b).any(|d| ends_at(d.wrapping_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `demangle_with` lends `f`, once, what `demangle` returns: for Rust
    /// (legacy, v0, escaped), C++ (LLVM's, cpp_demangle's, rejected by
    /// both) and plain names.
    #[test]
    fn demangle_with_lends_what_demangle_returns() {
        for name in [
            "_ZN4core3fmt5write17h0123456789abcdefE",
            "_RNvCs1234_7mycrate3foo",
            "_$LT$T$u20$as$u20$a..B$GT$::f",
            "_ZN3foo3barEv",
            "_ZNSt6vectorIiSaIiEE9push_backERKi",
            "_Z1fv.cold",
            "_Zjunk",
            &format!("_Z{}", "P".repeat(2000)),
            "memcpy",
            "",
        ] {
            let mut calls = 0;
            let lent = demangle_with(name, |d| {
                calls += 1;
                d.to_string()
            });
            assert_eq!(lent, demangle(name), "{name:.40}");
            assert_eq!(calls, 1, "{name:.40}");
        }
        // LLVM's demangler gives `f` back, uncalled, when it rejects a name.
        assert!(leakd_llvm_demangle::demangle_with("_Zjunk", |_| ()).is_err());
        assert_eq!(leakd_llvm_demangle::demangle_with("_Z1fv", str::len).ok(), Some(3));
    }

    /// The hash is looked for where it would end; the answer is the one a
    /// search of every "17h" gives (the way it was found before), for
    /// hashes at the end, before suffixes, in the middle, cut short, and
    /// in names of every length around them.
    #[test]
    fn rust_legacy_hash_found_where_it_ends() {
        let by_search = |name: &str| {
            let b = name.as_bytes();
            name.match_indices("17h").any(|(i, _)| {
                b.get(i + 3..i + 19).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                    && b.get(i + 19) == Some(&b'E')
                    && matches!(b.get(i + 20), None | Some(b'.'))
            })
        };
        let hash = "17h0123456789abcdefE";
        let mut names = vec![String::new(), "E".into(), ".".into(), hash.into()];
        for pre in ["", "_ZN3foo", "_ZN3foo17h", "_ZN3a.b"] {
            for mid in [hash, "17h0123456789abcdeE", "17h0123456789abcdexE", "17hE", "x"] {
                for post in ["", ".llvm.42", "x", ".", "E", ".17h0123456789abcdefE", "..a"] {
                    let name = format!("{pre}{mid}{post}");
                    for cut in 0..=name.len() {
                        names.push(name[..cut].to_string());
                    }
                }
            }
        }
        let mut found = 0;
        for n in &names {
            assert_eq!(looks_like_rust_legacy(n), by_search(n), "{n:?}");
            found += usize::from(by_search(n));
        }
        assert!(found > 20, "{found} of {} names with a hash", names.len());
    }

    #[test]
    fn demangles_rust_legacy_v0_and_cpp() {
        assert_eq!(demangle("_ZN4core3fmt5write17h0123456789abcdefE"), "core::fmt::write");
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(
            demangle("_RNvMNtCs21hi0yVfW1J_5tests5innerNtB2_6Struct3foo"),
            "<tests::inner::Struct>::foo"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("_Z3addii"), "add(int, int)");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(
            demangle(
                "_$LT$$u5b$u8$u5d$$u20$as$u20$scroll..pread..Pread$LT$Ctx$C$E$GT$$GT$::gread_with"
            ),
            "<[u8] as scroll::pread::Pread<Ctx,E>>::gread_with"
        );
        assert_eq!(demangle("a$b"), "a$b");
        assert_eq!(
            demangle("_ZN65_$LT$cpp_demangle..ast..LambdaSig$u20$as$u20$core..fmt..Debug$GT$3fmt17h1e8ad53145852c9fE"),
            "<cpp_demangle::ast::LambdaSig as core::fmt::Debug>::fmt"
        );
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE.llvm.42"), "foo::bar");
    }

    #[test]
    fn cpp_names_as_llvm_symbolizer_prints_them() {
        // Where cpp_demangle wrote `> >`, `{virtual override thunk(...)}`
        // and `[clone .cold]`.
        assert_eq!(
            demangle("_ZNSt6vectorIS_IiSaIiEESaIS1_EE5clearEv"),
            "std::vector<std::vector<int, std::allocator<int>>, \
             std::allocator<std::vector<int, std::allocator<int>>>>::clear()"
        );
        assert_eq!(
            demangle("_ZThn104_N4node7UDPWrap10OnSendDoneEPNS_7ReqWrapI13uv_udp_send_sEEi"),
            "non-virtual thunk to node::UDPWrap::OnSendDone(node::ReqWrap<uv_udp_send_s>*, int)"
        );
        assert_eq!(
            demangle("_ZN6icu_7812NumberFormat12makeInstanceERKNS_6LocaleEaR10UErrorCode.part.0"),
            "icu_78::NumberFormat::makeInstance(icu_78::Locale const&, signed char, UErrorCode&) (.part.0)"
        );
        // LLVM's demangler rejects transaction clones (GCC's -fgnu-tm):
        // cpp_demangle's name, as before.
        assert_eq!(demangle("_ZGTtdlPv"), "transaction clone for operator delete(void*)");
        // Rejected by both: the name as it is.
        assert_eq!(demangle("_ZN3foo"), "_ZN3foo");
        // Too deep for LLVM's demangler (no recursion limit: it would
        // overflow the stack): cpp_demangle's, which has one, rejects it.
        let deep = format!("_Z1f{}v", "P".repeat(20_000));
        assert_eq!(demangle(&deep), deep);
    }

    #[test]
    fn names_that_would_print_without_end_are_kept_mangled() {
        use leakd_llvm_demangle::crafted::{doubling, printing};
        use leakd_llvm_demangle::MAX_OUTPUT_LEN;
        // About 2^46 bytes from 464: all memory, or a very long time, if
        // printed. Rejected by each demangler, and then kept as it is.
        let crafted = doubling(41);
        assert_eq!(crafted.len(), 464);
        assert_eq!(leakd_llvm_demangle::demangle(&crafted), None);
        assert_eq!(cpp_demangle_capped(&crafted), None);
        assert_eq!(demangle(&crafted), crafted);
        // Over LLVM's MAX_NAME_LEN: cpp_demangle's alone.
        let long = format!("{crafted}{}", "S_".repeat(300));
        assert!(long.len() > leakd_llvm_demangle::MAX_NAME_LEN);
        assert_eq!(demangle(&long), long);
        // A name just under the limit is not, nor is a normal one.
        assert_eq!(
            cpp_demangle_capped(&doubling(2)).as_deref(),
            Some("f(A, B<A, A>, B<B<A, A>, B<A, A> >)")
        );
        assert_eq!(demangle(&doubling(2)), "f(A, B<A, A>, B<B<A, A>, B<A, A>>)");
        // cpp_demangle's output at the limit, and one byte over.
        let at_limit = printing(MAX_OUTPUT_LEN, cpp_demangle_capped);
        assert_eq!(cpp_demangle_capped(&at_limit).map(|d| d.len()), Some(MAX_OUTPUT_LEN));
        assert_eq!(cpp_demangle_capped(&printing(MAX_OUTPUT_LEN + 1, cpp_demangle_capped)), None);
        // Through demangle (LLVM's), the same.
        let at_limit = printing(MAX_OUTPUT_LEN, leakd_llvm_demangle::demangle);
        assert_eq!(demangle(&at_limit).len(), MAX_OUTPUT_LEN);
        let over = printing(MAX_OUTPUT_LEN + 1, leakd_llvm_demangle::demangle);
        assert_eq!(demangle(&over), over);
    }
}
