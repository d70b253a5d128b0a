//! Sampling weighted by bytes: the tables the kernel draws from and the
//! weights that scale a sampled block back up (see the crate docs).

use crate::sys;

/// Table of -ln(u) for u = (i + 0.5) / n, in units of 1/ONE, scaled so its
/// mean is exactly 1 (the quantized draw then still has mean N).
pub(crate) fn neg_ln_table() -> [u32; sys::LEAKD_ATTACH_LN_ENTRIES as usize] {
    let n = sys::LEAKD_ATTACH_LN_ENTRIES as usize;
    let raw: Vec<f64> = (0..n).map(|i| -(((i as f64) + 0.5) / n as f64).ln()).collect();
    let mean = raw.iter().sum::<f64>() / n as f64;
    let mut t = [0u32; sys::LEAKD_ATTACH_LN_ENTRIES as usize];
    for (slot, v) in t.iter_mut().zip(raw) {
        *slot = (v / mean * f64::from(sys::LEAKD_ATTACH_ONE)).round() as u32;
    }
    t
}

/// g(x) = x / (e^x - 1), with g(0) = 1.
pub(crate) fn g(x: f64) -> f64 {
    if x < 1e-9 {
        1.0
    } else {
        x / x.exp_m1()
    }
}

/// Table of g at the middle of each step of 1/G_STEPS, in units of 1/ONE.
pub(crate) fn g_table() -> [u32; sys::LEAKD_ATTACH_G_ENTRIES as usize] {
    let mut t = [0u32; sys::LEAKD_ATTACH_G_ENTRIES as usize];
    for (i, slot) in t.iter_mut().enumerate() {
        let x = (i as f64 + 0.5) / f64::from(sys::LEAKD_ATTACH_G_STEPS);
        *slot = (g(x) * f64::from(sys::LEAKD_ATTACH_ONE)).round() as u32;
    }
    t
}

/// What one sampled block of `size` bytes stands for: (bytes, blocks) =
/// (s/p, 1/p) with p = 1-exp(-s/N).
pub(crate) fn sample_weight(size: u64, n: u64) -> (f64, f64) {
    let x = size as f64 / n as f64;
    if size == 0 {
        return (0.0, 1.0);
    }
    let bytes = size as f64 + n as f64 * g(x);
    (bytes, bytes / size as f64)
}
/// An estimated count kept by the kernel in units of 1/ONE, rounded.
pub(crate) fn fixed_to_count(v: u64) -> u64 {
    let one = u64::from(sys::LEAKD_ATTACH_ONE);
    v.saturating_add(one / 2) / one
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_tables_are_calibrated() {
        // The exponential draws have mean 1 (in units of ONE).
        let t = neg_ln_table();
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64;
        assert!((mean / f64::from(sys::LEAKD_ATTACH_ONE) - 1.0).abs() < 1e-4, "{mean}");
        // g(0) = 1, g falls, and s + N g(s/N) = s / (1 - exp(-s/N)).
        let gt = g_table();
        assert!(gt[0] <= sys::LEAKD_ATTACH_ONE && gt[0] > sys::LEAKD_ATTACH_ONE - 200);
        assert!(gt.windows(2).all(|w| w[1] <= w[0]));
        let (b, c) = sample_weight(4096, 4096);
        let p = 1.0 - (-1.0f64).exp();
        assert!((b - 4096.0 / p).abs() < 1e-6 && (c - 1.0 / p).abs() < 1e-9);
    }
}
