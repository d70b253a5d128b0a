//! The table layout the prebuilt index and the cache of answers share after
//! their headers: two counts (entries, blocks), four offsets (fence,
//! blocks, blob, blob end), then the tables. Both come from files anyone
//! may have damaged, so the layout is checked to fit the file once, here,
//! before either reader indexes into it.

use std::ops::Range;

pub fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

pub fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Where the tables are, checked to fit the file.
pub struct Layout {
    /// Entries.
    pub n: usize,
    pub n_blocks: usize,
    pub fence_at: usize,
    pub blocks_at: usize,
    pub blob: Range<usize>,
}

/// The layout whose counts start at `h` in `d`, for blocks of `per_block`
/// entries and `block_bytes` bytes: "truncated" when its tables do not fit
/// in `d` or its counts disagree.
pub fn layout(d: &[u8], h: usize, per_block: usize, block_bytes: usize) -> Result<Layout, String> {
    let count = |i: usize| u32_at(d, h + 4 * i).map(|n| n as usize).ok_or("truncated");
    let (n, n_blocks) = (count(0)?, count(1)?);
    let at = |i: usize| {
        u64_at(d, h + 8 + 8 * i).and_then(|a| usize::try_from(a).ok()).ok_or("truncated")
    };
    let (fence_at, blocks_at, blob_at, blob_end) = (at(0)?, at(1)?, at(2)?, at(3)?);
    let fits = |start: usize, n: usize, size: usize| {
        n.checked_mul(size).and_then(|len| start.checked_add(len)).is_some_and(|end| end <= d.len())
    };
    if !(n_blocks == n.div_ceil(per_block)
        && fits(fence_at, n_blocks, 8)
        && fits(blocks_at, n_blocks, block_bytes)
        && blob_at <= blob_end
        && blob_end <= d.len())
    {
        return Err("truncated".into());
    }
    Ok(Layout { n, n_blocks, fence_at, blocks_at, blob: blob_at..blob_end })
}

/// The last block among `blocks` whose first entry starts at or before
/// `vaddr`, by a binary search of the fence at `fence_at` (each block's
/// first start); `None` when there is none. A fence entry past the data
/// reads as `u64::MAX`: a damaged file gives a wrong block, never a read
/// out of bounds.
pub fn block_of(d: &[u8], fence_at: usize, blocks: Range<usize>, vaddr: u64) -> Option<usize> {
    let first = |b: usize| u64_at(d, fence_at + 8 * b).unwrap_or(u64::MAX);
    let (mut lo, mut hi) = (blocks.start, blocks.end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if first(mid) <= vaddr {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}
