//! Threads kept for the store's shard writes, so that a seal does not start a thread per shard.
//!
//! A seal writes its k + m shard files at once, one per disk, each waiting on its own fsyncs. It spawned a
//! thread per shard and joined them: on the bench's VM spawning and joining six threads cost ~200 us of CPU
//! (a stack and a signal stack mapped and unmapped, each under the process's mmap lock taken for writing,
//! which other threads' O_DIRECT reads wait for), against ~25 us for six tasks on threads kept for it; and
//! duplicate ingest seals a small container per part (its segment record), so 2 GB of it started ~730
//! threads (docs/performance-history.md, session 28). At 100 TB that is a thread per shard of ~12 million
//! containers.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A fixed set of threads that run blocking disk I/O tasks a caller waits for.
pub(super) struct IoThreads {
    /// None if the threads could not be created: tasks then run on threads of their own, as before.
    pool: Option<rayon::ThreadPool>,
}

impl IoThreads {
    /// `threads` threads, named `{name}-{i}`.
    pub(super) fn new(threads: usize, name: &'static str) -> IoThreads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .ok();
        if pool.is_none() {
            tracing::warn!(
                name,
                "cannot start I/O threads: each task gets a thread of its own"
            );
        }
        IoThreads { pool }
    }

    /// Runs every task at once and returns their results in order; None for a task that panicked (its
    /// panic is caught, as a joined thread's was).
    pub(super) fn run_all<T, F>(&self, tasks: Vec<F>) -> Vec<Option<T>>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let mut out: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
        let run = |task: F, slot: &mut Option<T>| *slot = catch_unwind(AssertUnwindSafe(task)).ok();
        match &self.pool {
            // Never from a thread of a rayon pool (a read pool's, say): rayon lets such a thread run other
            // work of its own pool while it waits, and that work may wait on this very task.
            Some(pool) if rayon::current_thread_index().is_none() => pool.scope(|s| {
                for (task, slot) in tasks.into_iter().zip(out.iter_mut()) {
                    s.spawn(move |_| run(task, slot));
                }
            }),
            _ => std::thread::scope(|s| {
                for (task, slot) in tasks.into_iter().zip(out.iter_mut()) {
                    s.spawn(move || run(task, slot));
                }
            }),
        }
        out
    }

    /// Whether the tasks run on the kept threads (false: a thread per task).
    #[cfg(test)]
    fn kept(&self) -> bool {
        self.pool.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn runs_every_task_and_returns_results_in_order() {
        let io = IoThreads::new(3, "test-io");
        assert!(io.kept());
        let data: Vec<u64> = (0..10).collect();
        let tasks: Vec<_> = data.iter().map(|v| move || v * 2).collect();
        let got: Vec<Option<u64>> = io.run_all(tasks);
        assert_eq!(got, (0..10).map(|v| Some(v * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_task_gives_none_and_the_others_still_run() {
        let io = IoThreads::new(2, "test-io");
        let tasks: Vec<Box<dyn FnOnce() -> u32 + Send>> = vec![
            Box::new(|| 1),
            Box::new(|| panic!("a write that panics")),
            Box::new(|| 3),
        ];
        assert_eq!(io.run_all(tasks), vec![Some(1), None, Some(3)]);
    }

    #[test]
    fn tasks_run_on_the_kept_threads_across_calls() {
        let io = IoThreads::new(4, "test-io");
        let seen = Mutex::new(HashSet::new());
        for _ in 0..50 {
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    || {
                        let name = std::thread::current().name().map(str::to_string);
                        seen.lock().expect("lock").insert(name);
                    }
                })
                .collect();
            io.run_all(tasks);
        }
        let seen = seen.into_inner().expect("lock");
        // 300 tasks on at most the pool's four threads, each named by the pool.
        assert!(seen.len() <= 4, "{seen:?}");
        assert!(
            seen.iter()
                .all(|n| n.as_deref().is_some_and(|n| n.starts_with("test-io-"))),
            "{seen:?}"
        );
    }

    #[test]
    fn from_a_rayon_thread_tasks_get_threads_of_their_own() {
        let io = IoThreads::new(2, "test-io");
        let other = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let names = other.install(|| {
            let tasks: Vec<_> = (0..3)
                .map(|_| || std::thread::current().name().map(str::to_string))
                .collect();
            io.run_all(tasks)
        });
        assert_eq!(names.len(), 3);
        assert!(
            names
                .iter()
                .all(|n| n.as_ref().is_some_and(|n| n.is_none())),
            "{names:?}"
        );
    }
}
