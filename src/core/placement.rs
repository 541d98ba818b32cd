//! Which disk gets which shard of a container (storage-format.md §5).

use super::error::CoreError;
use super::ids::{ContainerId, DiskId};

/// An active disk and how many shards it holds now.
#[derive(Clone, Copy, Debug)]
pub struct DiskLoad {
    pub id: DiskId,
    pub shards: u64,
}

/// Chooses `width` distinct disks for the shards of `container` (index i of the result holds shard i):
/// fewest shards first, ties broken by a rotation derived from the container id (so equal loads spread
/// evenly). A disk listed twice counts once.
pub fn place(
    container: ContainerId,
    disks: &[DiskLoad],
    width: usize,
) -> Result<Vec<DiskId>, CoreError> {
    let mut ds: Vec<DiskLoad> = disks.to_vec();
    ds.sort_by_key(|d| (d.id, d.shards));
    ds.dedup_by_key(|d| d.id);
    if ds.len() < width {
        return Err(CoreError::NotEnoughDisks {
            need: width,
            have: ds.len(),
        });
    }
    let n = ds.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    // Mixing the id (rather than `id % n`) keeps consecutive containers, which often have equal loads,
    // from always starting at neighbouring disks in the same order.
    let rot = (mix(container.0) % n as u64) as usize;
    let mut order: Vec<(u64, usize, DiskId)> = ds
        .iter()
        .enumerate()
        .map(|(pos, d)| (d.shards, (pos + n - rot) % n, d.id))
        .collect();
    order.sort_unstable();
    Ok(order.into_iter().take(width).map(|(_, _, id)| id).collect())
}

/// SplitMix64 finalizer: a fixed, platform-independent bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use proptest::prelude::*;

    fn disks(loads: &[u64]) -> Vec<DiskLoad> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &s)| DiskLoad {
                id: DiskId(i as u32),
                shards: s,
            })
            .collect()
    }

    #[test]
    fn fewest_shards_first() {
        let d = disks(&[5, 1, 9, 0, 3, 7]);
        let got = place(ContainerId(42), &d, 3).unwrap();
        assert_eq!(got, vec![DiskId(3), DiskId(1), DiskId(4)]);
    }

    #[test]
    fn equal_loads_rotate_start() {
        let d = disks(&[0; 12]);
        let firsts: HashSet<DiskId> = (0..200)
            .map(|c| place(ContainerId(c), &d, 6).unwrap()[0])
            .collect();
        assert_eq!(firsts.len(), 12);
    }

    #[test]
    fn duplicates_count_once() {
        let mut d = disks(&[0, 0, 0]);
        d.push(d[0]);
        assert_eq!(
            place(ContainerId(1), &d, 4),
            Err(CoreError::NotEnoughDisks { need: 4, have: 3 })
        );
        assert_eq!(place(ContainerId(1), &[], 0), Ok(vec![]));
    }

    #[test]
    fn simulate_even_spread() {
        let width = 6;
        let mut load: HashMap<DiskId, u64> = (0..12).map(|i| (DiskId(i), 0)).collect();
        for c in 0..10_000u64 {
            let d: Vec<DiskLoad> = load
                .iter()
                .map(|(&id, &shards)| DiskLoad { id, shards })
                .collect();
            for id in place(ContainerId(c), &d, width).unwrap() {
                *load.get_mut(&id).unwrap() += 1;
            }
            let (max, min) = (load.values().max().unwrap(), load.values().min().unwrap());
            assert!(max - min <= width as u64, "after {c}: {load:?}");
        }
        assert_eq!(load.values().sum::<u64>(), 60_000);
    }

    proptest! {
        #[test]
        fn distinct_or_not_enough(
            loads in proptest::collection::vec(0u64..20, 0..20),
            width in 0usize..20,
            c: u64,
        ) {
            let d = disks(&loads);
            match place(ContainerId(c), &d, width) {
                Ok(got) => {
                    prop_assert_eq!(got.len(), width);
                    prop_assert_eq!(got.iter().collect::<HashSet<_>>().len(), width);
                    // nobody left out has fewer shards than someone chosen
                    let chosen_max = got.iter().map(|id| loads[id.0 as usize]).max().unwrap_or(0);
                    let skipped_min = (0..loads.len())
                        .filter(|i| !got.contains(&DiskId(*i as u32)))
                        .map(|i| loads[i]).min().unwrap_or(u64::MAX);
                    prop_assert!(chosen_max <= skipped_min);
                }
                Err(e) => {
                    prop_assert!(loads.len() < width);
                    prop_assert_eq!(e, CoreError::NotEnoughDisks { need: width, have: loads.len() });
                }
            }
        }
    }
}
