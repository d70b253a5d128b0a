//! Crafted names, for the tests of this crate and of its users: names
//! whose readable form doubles at every few bytes.

/// `f(A, B<A, A>, B<B<A, A>, B<A, A>>, ...)`, `steps` parameters after
/// `A`: each is `B<>` of the one before twice, by substitution, so
/// about 13 bytes double the output.
pub fn doubling(steps: usize) -> String {
    // Substitution candidates: #0 `A` (S_), #1 `B` (S0_), #2 `B<A, A>`
    // (S1_), then the k-th parameter #k+1 (S<k-1 in base 36>_).
    let mut name = String::from("_Z1f1A1BIS_S_E");
    for k in 2..=steps {
        let prev = base36(k - 1);
        name.push_str(&format!("S0_IS{prev}_S{prev}_E"));
    }
    name
}

fn base36(mut n: usize) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.into_iter().rev().map(char::from).collect()
}

/// A name `doubling` builds on, whose readable form (as `demangle`
/// writes it) is `len` bytes: parameters repeating its types by
/// substitution, then one of a name of the bytes left. Panics when
/// `demangle` rejects the names `doubling` makes, or `len` is under 1 KiB.
pub fn printing(len: usize, demangle: impl Fn(&str) -> Option<String>) -> String {
    let steps = 12;
    let mut name = doubling(steps);
    let demangle = |name: &str| demangle(name).expect("crafted names demangle");
    let mut out = demangle(&name).len();
    // The type of the k-th parameter, and its length.
    let types: Vec<(String, usize)> = (1..=steps)
        .map(|k| {
            let before = if k == 1 { "_Z1f1A".to_string() } else { doubling(k - 1) };
            let n = demangle(&doubling(k)).len() - demangle(&before).len() - 2;
            (format!("S{}_", base36(k)), n)
        })
        .collect();
    for (sub, n) in types.iter().rev() {
        // Room left for a last parameter of at least one byte.
        while out + 2 + n + 3 <= len {
            name.push_str(sub);
            out += 2 + n;
        }
    }
    let last = len - out - 2;
    name.push_str(&format!("{last}{}", "x".repeat(last)));
    name
}
