//! Planners for repair work: which container shards to rebuild, in what order, onto which disks.
//! Pure: the executors in `store::rebuild` and `store::scrub` apply the plans (and `--dry-run` prints them).

use std::collections::HashSet;

use crate::core::ids::{ContainerId, DiskId};

/// Where a container's shards are, as the catalog says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerShards {
    pub container: ContainerId,
    pub k: u8,
    pub m: u8,
    /// Disk of shard i (None: the catalog lost it).
    pub disks: Vec<Option<DiskId>>,
}

impl ContainerShards {
    pub fn width(&self) -> usize {
        self.k as usize + self.m as usize
    }
}

/// Rebuild the `missing` shards of `container` onto `targets` (same order; shorter when no disk is free).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RepairAction {
    pub container: ContainerId,
    pub missing: Vec<usize>,
    pub targets: Vec<DiskId>,
    /// Shards still on healthy disks.
    pub surviving: usize,
    pub k: u8,
}

impl RepairAction {
    /// Fewer than k shards survive: nothing can be rebuilt.
    pub fn is_lost(&self) -> bool {
        self.surviving < self.k as usize
    }
}

/// Plans a rebuild: every container with a shard off the `healthy` disks gets an action; containers that have
/// lost the most shards come first (they are closest to data loss). Each missing shard goes to the first disk
/// in `targets` (preference order: the spares being rebuilt onto, then other writable disks) that holds no
/// other shard of the container, so the one-shard-per-disk rule holds after the rebuild.
pub fn plan_rebuild(
    containers: &[ContainerShards],
    healthy: &HashSet<DiskId>,
    targets: &[DiskId],
) -> Vec<RepairAction> {
    let mut actions: Vec<RepairAction> = containers
        .iter()
        .filter_map(|c| {
            let missing: Vec<usize> = (0..c.width())
                .filter(|i| {
                    !c.disks
                        .get(*i)
                        .copied()
                        .flatten()
                        .is_some_and(|d| healthy.contains(&d))
                })
                .collect();
            if missing.is_empty() {
                return None;
            }
            let mut used: HashSet<DiskId> = c
                .disks
                .iter()
                .flatten()
                .filter(|d| healthy.contains(d))
                .copied()
                .collect();
            let mut chosen = Vec::new();
            for _ in &missing {
                let Some(t) = targets.iter().find(|t| !used.contains(t)) else {
                    break;
                };
                used.insert(*t);
                chosen.push(*t);
            }
            Some(RepairAction {
                container: c.container,
                surviving: c.width() - missing.len(),
                missing,
                targets: chosen,
                k: c.k,
            })
        })
        .collect();
    actions.sort_by_key(|a| (a.surviving, a.container));
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: u64, disks: &[u32]) -> ContainerShards {
        ContainerShards {
            container: ContainerId(id),
            k: 4,
            m: 2,
            disks: disks.iter().map(|d| Some(DiskId(*d))).collect(),
        }
    }

    #[test]
    fn most_damaged_first_and_spare_preferred() {
        let healthy: HashSet<DiskId> = [1, 2, 3, 4, 5, 7, 8].into_iter().map(DiskId).collect();
        // Disk 6 failed (and disk 0 too): container 2 lost two shards, container 1 one, container 3 none.
        let plan = plan_rebuild(
            &[
                c(1, &[1, 2, 3, 4, 5, 6]),
                c(2, &[0, 2, 3, 4, 5, 6]),
                c(3, &[1, 2, 3, 4, 5, 7]),
            ],
            &healthy,
            &[DiskId(8), DiskId(7), DiskId(1)],
        );
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].container, ContainerId(2));
        assert_eq!(plan[0].missing, vec![0, 5]);
        assert_eq!(plan[0].targets, vec![DiskId(8), DiskId(7)]);
        assert_eq!(plan[1].container, ContainerId(1));
        assert_eq!(plan[1].targets, vec![DiskId(8)]);
    }

    #[test]
    fn lost_and_unplaceable() {
        let healthy: HashSet<DiskId> = [1, 2, 3].into_iter().map(DiskId).collect();
        let plan = plan_rebuild(&[c(1, &[1, 2, 3, 4, 5, 6])], &healthy, &[DiskId(1)]);
        assert!(plan[0].is_lost());
        assert!(plan[0].targets.is_empty(), "disk 1 already holds a shard");
    }

    proptest! {
        /// After applying a plan no container has two shards on one disk, and every target is a listed target.
        #[test]
        fn plans_keep_shards_on_distinct_disks(
            layout in proptest::collection::vec(proptest::sample::subsequence((0u32..12).collect::<Vec<_>>(), 6), 1..50),
            failed in proptest::collection::hash_set(0u32..12, 0..4),
        ) {
            let containers: Vec<ContainerShards> = layout.iter().enumerate()
                .map(|(i, d)| c(i as u64, d)).collect();
            let healthy: HashSet<DiskId> = (0..12).filter(|d| !failed.contains(d)).map(DiskId).collect();
            let targets: Vec<DiskId> = healthy.iter().copied().collect();
            for a in plan_rebuild(&containers, &healthy, &targets) {
                let cs = &containers[a.container.0 as usize];
                let mut disks: Vec<Option<DiskId>> = cs.disks.clone();
                for (i, t) in a.missing.iter().zip(&a.targets) {
                    prop_assert!(healthy.contains(t));
                    disks[*i] = Some(*t);
                }
                let placed: Vec<DiskId> = disks.iter().flatten().filter(|d| healthy.contains(d)).copied().collect();
                let unique: HashSet<DiskId> = placed.iter().copied().collect();
                prop_assert_eq!(unique.len(), placed.len());
                prop_assert_eq!(a.targets.len(), a.missing.len().min(targets.len() - (cs.width() - a.missing.len())));
            }
        }
    }
}
