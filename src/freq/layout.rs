//! The pool and how it is split over shards: parsing `10-15,20-25`, even splits, ownership
//! look-ups and growth checks. Pure data, no threads, no I/O.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::LayoutError;
use super::range::FreqRange;

// Checked construction and parsing of a range live here, beside the pool parser, so that
// `range.rs` needs no error type and `error.rs` can name ranges without an import cycle.
impl FreqRange {
    /// The range `first..=last`; an error if `first > last`.
    pub fn new(first: u64, last: u64) -> Result<Self, LayoutError> {
        if first > last {
            return Err(LayoutError::EmptyRange { first, last });
        }
        Ok(FreqRange { first, last })
    }
}

impl FromStr for FreqRange {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let num = |t: &str| -> Result<u64, LayoutError> {
            t.trim()
                .parse::<u64>()
                .map_err(|_| LayoutError::BadRange(s.to_string()))
        };
        match s.split_once('-') {
            Some((a, b)) => FreqRange::new(num(a)?, num(b)?),
            None => {
                let f = num(s)?;
                FreqRange::new(f, f)
            }
        }
    }
}

/// The most shards a store may have. Each shard is a thread and a disk table (with two
/// replicas, two), each with a few open files and its own cache: 10,000 shards took 2 GB and
/// ran out of file descriptors. 64 shards (128 disk tables with two replicas) open in well
/// under the default limit of 1,024 descriptors.
pub const MAX_SHARDS: usize = 64;

/// Without an explicit shard count a pool gets one shard per listed range, up to this many; a
/// pool of more ranges is split evenly over this many shards.
pub const DEFAULT_MAX_SHARDS: usize = 8;

/// The shards of a pool: shard `i` owns `shards[i]`, a sorted list of disjoint ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    shards: Vec<Vec<FreqRange>>,
    /// Every range with its shard, sorted by `first`, for owner look-ups by binary search.
    #[serde(skip)]
    index: Vec<(FreqRange, usize)>,
}

impl Layout {
    /// A layout from each shard's ranges. Ranges must not overlap, within or across shards, and
    /// every shard must own at least one range.
    pub fn new(shards: Vec<Vec<FreqRange>>) -> Result<Self, LayoutError> {
        if shards.is_empty() {
            return Err(LayoutError::NoShards);
        }
        check_shard_count(shards.len())?;
        let mut layout = Layout {
            shards,
            index: Vec::new(),
        };
        for (i, ranges) in layout.shards.iter_mut().enumerate() {
            if ranges.is_empty() {
                return Err(LayoutError::EmptyShard(i));
            }
            ranges.sort();
        }
        layout.rebuild_index()?;
        Ok(layout)
    }

    /// The layout the CLI's `init` makes: `shards` shards split evenly when given (at most
    /// [`MAX_SHARDS`]), else one shard per listed range when there are at most
    /// [`DEFAULT_MAX_SHARDS`] of them, else the ranges split evenly over that many shards.
    pub fn for_pool(ranges: &[FreqRange], shards: Option<usize>) -> Result<Self, LayoutError> {
        match shards {
            Some(n) => Layout::split_evenly(ranges, n),
            None if ranges.len() <= DEFAULT_MAX_SHARDS => Layout::one_shard_per_range(ranges),
            None => {
                let ranges = coalesce(ranges.to_vec());
                if ranges.len() <= DEFAULT_MAX_SHARDS {
                    return Layout::one_shard_per_range(&ranges);
                }
                let total: u128 = ranges
                    .iter()
                    .map(|r| u128::from(r.last - r.first) + 1)
                    .sum();
                let n = usize::try_from(total)
                    .unwrap_or(usize::MAX)
                    .min(DEFAULT_MAX_SHARDS);
                Layout::split_evenly(&ranges, n)
            }
        }
    }

    /// One shard per listed range: the course's `10-15,20-25` gives two shards.
    pub fn one_shard_per_range(ranges: &[FreqRange]) -> Result<Self, LayoutError> {
        Layout::new(ranges.iter().map(|r| vec![*r]).collect())
    }

    /// The ranges split evenly over `shards` shards (`0-9999999` over 8 shards gives eight
    /// contiguous blocks of 1,250,000). Sizes differ by at most one.
    pub fn split_evenly(ranges: &[FreqRange], shards: usize) -> Result<Self, LayoutError> {
        if shards == 0 {
            return Err(LayoutError::NoShards);
        }
        check_shard_count(shards)?;
        let mut sorted = ranges.to_vec();
        sorted.sort();
        // Counted in u128: the whole u64 range holds 2^64 frequencies, one more than u64 holds.
        let total: u128 = sorted.iter().map(FreqRange::count).sum();
        let n = shards as u128;
        if total < n {
            return Err(LayoutError::TooManyShards {
                shards,
                frequencies: u64::try_from(total).unwrap_or(u64::MAX),
            });
        }
        let base = total / n;
        let extra = total % n;
        let mut out: Vec<Vec<FreqRange>> = vec![Vec::new(); shards];
        let mut shard = 0usize;
        let mut want: u128 = base + u128::from(extra > 0);
        for r in sorted {
            let mut first = r.first;
            loop {
                let left = u128::from(r.last - first) + 1;
                let take = left.min(want);
                // 1 <= take <= left <= 2^64, so take - 1 fits in u64.
                let last = first + u64::try_from(take - 1).unwrap_or(u64::MAX);
                out[shard].push(FreqRange::new(first, last)?);
                want -= take;
                if want == 0 && shard + 1 < shards {
                    shard += 1;
                    want = base + u128::from((shard as u128) < extra);
                }
                if take == left {
                    break;
                }
                first = last + 1;
            }
        }
        Layout::new(out)
    }

    fn rebuild_index(&mut self) -> Result<(), LayoutError> {
        check_shard_count(self.shards.len())?;
        let mut index: Vec<(FreqRange, usize)> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(i, rs)| rs.iter().map(move |r| (*r, i)))
            .collect();
        index.sort();
        for w in index.windows(2) {
            if w[0].0.overlaps(&w[1].0) {
                return Err(LayoutError::Overlap(w[0].0, w[1].0));
            }
        }
        self.index = index;
        Ok(())
    }

    /// Restores the look-up index after deserialising (it is not stored).
    pub(crate) fn reindex(mut self) -> Result<Self, LayoutError> {
        self.rebuild_index()?;
        Ok(self)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The ranges shard `i` owns (empty slice for a shard that does not exist).
    pub fn ranges(&self, shard: usize) -> &[FreqRange] {
        self.shards.get(shard).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every range of the pool, sorted.
    pub fn all_ranges(&self) -> Vec<FreqRange> {
        self.index.iter().map(|(r, _)| *r).collect()
    }

    /// How many frequencies the pool holds, saturated at `u64::MAX` (a pool covering the whole
    /// `u64` range holds 2^64); [`Layout::pool_count`] is exact.
    pub fn pool_size(&self) -> u64 {
        saturate(self.pool_count())
    }

    /// How many frequencies the pool holds, exactly (up to 2^64).
    pub fn pool_count(&self) -> u128 {
        self.index.iter().map(|(r, _)| r.count()).sum()
    }

    /// How many frequencies shard `i` owns, saturated at `u64::MAX`; [`Layout::shard_count_of`]
    /// is exact.
    pub fn shard_size(&self, shard: usize) -> u64 {
        saturate(self.shard_count_of(shard))
    }

    /// How many frequencies shard `i` owns, exactly (up to 2^64).
    pub fn shard_count_of(&self, shard: usize) -> u128 {
        self.ranges(shard).iter().map(FreqRange::count).sum()
    }

    /// The shard that owns `f`, or `None` when `f` is outside the pool. O(log ranges).
    pub fn owner_of(&self, f: u64) -> Option<usize> {
        let i = self.index.partition_point(|(r, _)| r.first <= f);
        let (r, shard) = self.index.get(i.checked_sub(1)?)?;
        r.contains(f).then_some(*shard)
    }

    /// The pool as a compact string: `10-15,20-25`.
    pub fn pool_string(&self) -> String {
        let ranges: Vec<String> = coalesce(self.all_ranges())
            .iter()
            .map(ToString::to_string)
            .collect();
        ranges.join(",")
    }

    /// A layout for the pool `wanted`, keeping every frequency this layout has on the shard that
    /// owns it now and giving each new frequency to a shard (new ranges are split evenly over the
    /// existing shards). Errors name the frequencies that `wanted` would drop.
    pub fn grow_to(&self, wanted: &[FreqRange]) -> Result<Layout, LayoutError> {
        let wanted = coalesce(wanted.to_vec());
        let dropped: Vec<FreqRange> = subtract(&coalesce(self.all_ranges()), &wanted);
        if !dropped.is_empty() {
            return Err(LayoutError::Shrink(dropped));
        }
        let added = subtract(&wanted, &coalesce(self.all_ranges()));
        if added.is_empty() {
            return Ok(self.clone());
        }
        let extra = Layout::split_evenly(&added, self.shard_count().min(added_len(&added)))?;
        let mut shards = self.shards.clone();
        for (i, rs) in extra.shards.into_iter().enumerate() {
            shards[i].extend(rs);
        }
        Layout::new(shards)
    }
}

fn check_shard_count(shards: usize) -> Result<(), LayoutError> {
    if shards > MAX_SHARDS {
        return Err(LayoutError::ShardLimit {
            shards,
            max: MAX_SHARDS,
        });
    }
    Ok(())
}

fn added_len(ranges: &[FreqRange]) -> usize {
    let n: u128 = ranges.iter().map(FreqRange::count).sum();
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Sorts and merges touching or overlapping ranges.
pub fn coalesce(mut ranges: Vec<FreqRange>) -> Vec<FreqRange> {
    ranges.sort();
    let mut out: Vec<FreqRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if r.first <= prev.last.saturating_add(1) => {
                prev.last = prev.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus `b`, both coalesced.
pub(crate) fn subtract(a: &[FreqRange], b: &[FreqRange]) -> Vec<FreqRange> {
    let mut out = Vec::new();
    for r in a {
        let mut first = r.first;
        let mut done = false;
        for s in b.iter().filter(|s| s.overlaps(r)) {
            if s.first > first {
                out.push(FreqRange {
                    first,
                    last: s.first - 1,
                });
            }
            if s.last >= r.last {
                done = true;
                break;
            }
            first = s.last + 1;
        }
        if !done && first <= r.last {
            out.push(FreqRange {
                first,
                last: r.last,
            });
        }
    }
    out
}

/// Parses a pool: comma-separated ranges `10-15,20-25` or single frequencies.
pub fn parse_pool(s: &str) -> Result<Vec<FreqRange>, LayoutError> {
    let ranges = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<FreqRange>, _>>()?;
    if ranges.is_empty() {
        return Err(LayoutError::BadRange(s.to_string()));
    }
    Ok(ranges)
}

/// A count as a `u64`, `u64::MAX` when it does not fit (2^64: the whole `u64` range).
pub(crate) fn saturate(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Regression: `split_evenly` summed in u64, so the whole u64 range (2^64 frequencies)
    /// counted 0 and `--pool 0-18446744073709551615 --shards 2` failed with "shard 1 owns no
    /// frequency".
    #[test]
    fn the_whole_u64_range_splits_evenly() {
        let whole = [FreqRange::new(0, u64::MAX).unwrap()];
        let l = Layout::split_evenly(&whole, 2).unwrap();
        assert_eq!(l.pool_count(), 1u128 << 64);
        assert_eq!(
            l.ranges(0),
            &[FreqRange::new(0, (1 << 63) - 1).unwrap()][..]
        );
        assert_eq!(
            l.ranges(1),
            &[FreqRange::new(1 << 63, u64::MAX).unwrap()][..]
        );
        let two = [
            FreqRange::new(0, 9).unwrap(),
            FreqRange::new(10, u64::MAX).unwrap(),
        ];
        let l = Layout::split_evenly(&two, 3).unwrap();
        assert_eq!(l.pool_count(), 1u128 << 64);
    }

    fn r(a: u64, b: u64) -> FreqRange {
        FreqRange::new(a, b).unwrap()
    }

    #[test]
    fn the_course_layout() {
        let pool = parse_pool("10-15,20-25").unwrap();
        let l = Layout::one_shard_per_range(&pool).unwrap();
        assert_eq!(l.shard_count(), 2);
        assert_eq!(l.pool_size(), 12);
        assert_eq!(l.owner_of(10), Some(0));
        assert_eq!(l.owner_of(15), Some(0));
        assert_eq!(l.owner_of(16), None);
        assert_eq!(l.owner_of(20), Some(1));
        assert_eq!(l.owner_of(25), Some(1));
        assert_eq!(l.owner_of(9), None);
        assert_eq!(l.owner_of(u64::MAX), None);
        assert_eq!(l.pool_string(), "10-15,20-25");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse_pool("").is_err());
        assert!(parse_pool("10-").is_err());
        assert!(parse_pool("a-b").is_err());
        assert!(matches!(
            parse_pool("15-10"),
            Err(LayoutError::EmptyRange { .. })
        ));
        assert!(matches!(
            Layout::one_shard_per_range(&parse_pool("1-5,5-9").unwrap()),
            Err(LayoutError::Overlap(..))
        ));
        assert!(matches!(
            Layout::split_evenly(&[r(0, 2)], 4),
            Err(LayoutError::TooManyShards { .. })
        ));
        assert!(Layout::split_evenly(&[r(0, 2)], 0).is_err());
    }

    #[test]
    fn ten_million_over_eight() {
        let l = Layout::split_evenly(&[r(0, 9_999_999)], 8).unwrap();
        for i in 0..8 {
            assert_eq!(
                l.ranges(i),
                &[r(i as u64 * 1_250_000, (i as u64 + 1) * 1_250_000 - 1)]
            );
        }
        assert_eq!(l.owner_of(9_999_999), Some(7));
    }

    #[test]
    fn growth_keeps_owners_and_shrink_names_what_it_drops() {
        let l = Layout::one_shard_per_range(&parse_pool("10-15,20-25").unwrap()).unwrap();
        let g = l.grow_to(&parse_pool("10-15,20-30").unwrap()).unwrap();
        assert_eq!(g.pool_size(), 17);
        for f in (10..=15).chain(20..=25) {
            assert_eq!(g.owner_of(f), l.owner_of(f));
        }
        assert!(g.owner_of(30).is_some());
        match l.grow_to(&parse_pool("10-14,20-25").unwrap()) {
            Err(LayoutError::Shrink(d)) => assert_eq!(d, vec![r(15, 15)]),
            other => panic!("expected a shrink error, got {other:?}"),
        }
        assert_eq!(l.grow_to(&l.all_ranges()).unwrap(), l);
    }

    /// Regression (issue 12): `--shards` had no bound (10,000 shards took 2 GB, then EMFILE)
    /// and 2,000 listed ranges made 2,000 shards.
    #[test]
    fn shards_are_bounded_and_many_ranges_make_few_shards() {
        let pool = parse_pool("0-999999").unwrap();
        assert!(Layout::split_evenly(&pool, MAX_SHARDS).is_ok());
        for n in [MAX_SHARDS + 1, 10_000, usize::MAX] {
            assert_eq!(
                Layout::split_evenly(&pool, n),
                Err(LayoutError::ShardLimit {
                    shards: n,
                    max: MAX_SHARDS
                })
            );
        }
        let many: Vec<FreqRange> = (0..2000u64).map(|i| r(i * 10, i * 10 + 4)).collect();
        assert!(matches!(
            Layout::one_shard_per_range(&many),
            Err(LayoutError::ShardLimit { .. })
        ));
        let l = Layout::for_pool(&many, None).unwrap();
        assert_eq!(l.shard_count(), DEFAULT_MAX_SHARDS);
        assert_eq!(l.pool_size(), 10_000);
        let course = parse_pool("10-15,20-25").unwrap();
        assert_eq!(Layout::for_pool(&course, None).unwrap().shard_count(), 2);
        assert_eq!(Layout::for_pool(&course, Some(3)).unwrap().shard_count(), 3);
        // A stored layout over the bound is refused when read back.
        let json =
            serde_json::to_string(&Layout::split_evenly(&pool, MAX_SHARDS).unwrap()).unwrap();
        let mut big: Layout = serde_json::from_str(&json).unwrap();
        big.shards.push(vec![r(2_000_000, 2_000_000)]);
        assert!(matches!(big.reindex(), Err(LayoutError::ShardLimit { .. })));
    }

    proptest! {
        #[test]
        fn even_split_covers_the_pool_once(
            ranges in proptest::collection::vec((0u64..500, 0u64..40), 1..6),
            shards in 1usize..9,
        ) {
            let ranges = coalesce(ranges.into_iter().map(|(a, n)| r(a, a + n)).collect());
            let total: u64 = ranges.iter().map(FreqRange::len).sum();
            prop_assume!(total >= shards as u64);
            let l = Layout::split_evenly(&ranges, shards).unwrap();
            prop_assert_eq!(l.pool_size(), total);
            let sizes: Vec<u64> = (0..shards).map(|i| l.shard_size(i)).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(max - min <= 1);
            for rg in &ranges {
                for f in rg.first..=rg.last {
                    let owner = l.owner_of(f);
                    prop_assert!(owner.is_some());
                    prop_assert!(l.ranges(owner.unwrap()).iter().any(|x| x.contains(f)));
                }
            }
            prop_assert_eq!(l.owner_of(600), None);
        }
    }
}
