//! Seeded randomness for the mutation tests: the same cases every run.

/// A xorshift generator from `seed` (not zero).
pub fn rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// `base` with one to three bytes replaced, inserted (from `alphabet`) or
/// removed; never empty.
pub fn mutate(base: &[u8], alphabet: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..(next() % 3 + 1) {
        let at = (next() % b.len() as u64) as usize;
        let c = alphabet[(next() % alphabet.len() as u64) as usize];
        match next() % 3 {
            0 => b[at] = c,
            1 => b.insert(at, c),
            _ => {
                b.remove(at);
            }
        }
        if b.is_empty() {
            b.push(b'{');
        }
    }
    b
}
