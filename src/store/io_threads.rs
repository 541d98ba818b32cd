//! Threads kept for the store's shard writes, so that a seal does not start a thread per shard.
//!
//! A seal writes its k + m shard files at once, one per disk, each waiting on its own fsyncs. It spawned a
//! thread per shard and joined them: on the bench's VM spawning and joining six threads cost ~200 us of CPU
//! (a stack and a signal stack mapped and unmapped, each under the process's mmap lock taken for writing,
//! which other threads' O_DIRECT reads wait for), against ~25 us for six tasks on threads kept for it; and
//! duplicate ingest seals a small container per part (its segment record), so 2 GB of it started ~730
//! threads (docs/performance-history.md, session 28). At 100 TB that is a thread per shard of ~12 million
//! containers.
//!
//! A degraded read reconstructs a container from k shards read at once, and its callers are the read threads
//! (themselves [`KeptThreads`]): those reads go to kept threads of their own, as tasks owning what they use,
//! the caller waiting on a channel for each result. All are plain threads sleeping on a channel (not a rayon
//! pool, whose idle threads spin; see [`IoThreads`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

/// A fixed set of threads that run blocking disk I/O tasks a caller waits for.
///
/// Plain threads that sleep on a channel between tasks. Session 28 kept them in a rayon pool, whose idle
/// threads look for work before they sleep, yielding the CPU each time: every seal woke all twelve and 2 GB of
/// unique ingest made ~47,000 `sched_yield` context switches on the two cores that compress (session 29,
/// `perf record -e sched:sched_switch`).
pub(super) struct IoThreads {
    threads: KeptThreads,
}

/// A task of [`IoThreads::run_all`], its borrows' lifetime erased (see the SAFETY note there).
type ScopedJob = Box<dyn FnOnce() + Send + 'static>;

impl IoThreads {
    /// `threads` threads, named `{name}-{i}`; they end when this is dropped.
    pub(super) fn new(threads: usize, name: &'static str) -> IoThreads {
        IoThreads {
            threads: KeptThreads::new(threads, name),
        }
    }

    /// Runs every task at once and returns their results in order; None for a task that panicked (its
    /// panic is caught, as a joined thread's was). The tasks may borrow from the caller, as scoped threads'
    /// do. Any thread may call this, a rayon pool's too: the kept threads never run rayon work, so waiting
    /// for them cannot wait on the caller's own pool.
    pub(super) fn run_all<T, F>(&self, tasks: Vec<F>) -> Vec<Option<T>>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let mut out: Vec<Option<T>> = tasks.iter().map(|_| None).collect();
        let (done, results) = mpsc::channel::<(usize, Option<T>)>();
        for (i, task) in tasks.into_iter().enumerate() {
            let done = done.clone();
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(task)).ok();
                let _ = done.send((i, result));
            });
            // SAFETY: the job borrows what `task` borrows and `T`, which may live only as long as this call.
            // It owns a clone of `done`, and this function returns only after the loop below has seen every
            // clone dropped, which happens when the job has run (its captures are dropped when it returns) or
            // has been dropped unrun (a closed queue drops what it holds); nothing between here and that loop
            // can unwind (a panicking task is caught inside the job). So no job outlives the borrows it holds.
            let job: ScopedJob = unsafe { std::mem::transmute::<_, ScopedJob>(job) };
            if let Err(unsent) = self.threads.queue.send(job) {
                // No kept thread is left: run it here (the writes then go one after another).
                (unsent.0)();
            }
        }
        drop(done);
        for (i, result) in results {
            if let Some(slot) = out.get_mut(i) {
                *slot = result;
            }
        }
        out
    }
}

/// Runs the jobs of `queue` one after another until it closes: the loop of a thread kept for jobs. The lock
/// is held only while waiting for the next job, never while running one. A job that panics is dropped with
/// whatever it would have sent: its requester gets no answer and treats the work as failed.
pub(super) fn serve_jobs<J: FnOnce()>(queue: &Mutex<mpsc::Receiver<J>>) {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = next else { break };
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// A task for [`KeptThreads`]: it sends its own result.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Plain threads kept for blocking tasks that own what they use (an `Arc` of the store or of a disk, a path):
/// each caller waits on a channel for its task's result.
pub(super) struct KeptThreads {
    queue: mpsc::Sender<Job>,
}

/// The result of a task started on [`KeptThreads`].
pub(super) struct Pending<T>(mpsc::Receiver<T>);

impl<T> Pending<T> {
    /// Waits for the task; None if it panicked.
    pub(super) fn wait(self) -> Option<T> {
        self.0.recv().ok()
    }
}

impl KeptThreads {
    /// `threads` threads, named `{name}-{i}`; they live until this is dropped (the degraded read's, as long as
    /// the process).
    pub(super) fn new(threads: usize, name: &str) -> KeptThreads {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve_jobs(&jobs));
            if spawned.is_err() {
                tracing::warn!(name, started = i, "cannot start more I/O threads");
                break;
            }
        }
        // With no thread started, the queue's receiver is gone with `jobs` here, and `start` sees it closed.
        KeptThreads { queue }
    }

    /// Starts `task` on a kept thread (on a thread of its own if none could be started).
    pub(super) fn start<T, F>(&self, task: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = reply.send(task());
        });
        if let Err(unsent) = self.queue.send(job) {
            // If even that fails, the job (and its reply) is dropped: `wait` returns None. A panic there ends
            // that thread and drops the reply the same way.
            let _ = std::thread::Builder::new().spawn(unsent.0);
        }
        Pending(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn runs_every_task_and_returns_results_in_order() {
        let io = IoThreads::new(3, "test-io");
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
    fn kept_threads_run_owned_tasks_for_rayon_callers_without_new_threads() {
        let kept = KeptThreads::new(3, "test-kept");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        // Rayon threads start tasks and wait for them, as a degraded read does.
        let names: Vec<Option<String>> = pool.install(|| {
            (0..40u64)
                .into_par_iter()
                .flat_map_iter(|n| {
                    let pending: Vec<_> = (0..3)
                        .map(|i| {
                            kept.start(move || {
                                assert!(rayon::current_thread_index().is_none());
                                (n * 3 + i, std::thread::current().name().map(str::to_string))
                            })
                        })
                        .collect();
                    pending
                        .into_iter()
                        .zip(0..)
                        .map(move |(p, i)| {
                            let (got, name) = p.wait().expect("task ran");
                            assert_eq!(got, n * 3 + i);
                            name
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        assert_eq!(names.len(), 120);
        let distinct: HashSet<_> = names.into_iter().collect();
        assert!(distinct.len() <= 3, "{distinct:?}");
        assert!(
            distinct
                .iter()
                .all(|n| n.as_deref().is_some_and(|n| n.starts_with("test-kept-"))),
            "{distinct:?}"
        );
    }

    #[test]
    fn a_kept_task_that_panics_gives_none_and_the_threads_go_on() {
        let kept = KeptThreads::new(1, "test-kept");
        assert_eq!(
            kept.start(|| -> u8 { panic!("a read that panics") }).wait(),
            None
        );
        assert_eq!(kept.start(|| 7).wait(), Some(7));
    }

    #[test]
    fn from_a_rayon_thread_tasks_run_on_the_kept_threads() {
        let io = IoThreads::new(2, "test-io");
        let other = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        // More tasks than kept threads, from the only thread of a rayon pool: they queue and all finish.
        let names = other.install(|| {
            let tasks: Vec<_> = (0..5)
                .map(|_| || std::thread::current().name().map(str::to_string))
                .collect();
            io.run_all(tasks)
        });
        assert_eq!(names.len(), 5);
        assert!(
            names.iter().all(|n| n
                .as_ref()
                .is_some_and(|n| n.as_deref().is_some_and(|n| n.starts_with("test-io-")))),
            "{names:?}"
        );
    }

    #[test]
    fn tasks_borrow_from_the_caller_and_are_done_when_it_returns() {
        let io = IoThreads::new(3, "test-io");
        for round in 0..100u64 {
            let inputs: Vec<Vec<u64>> = (0..6).map(|i| vec![round + i; 1000]).collect();
            let written: Vec<Mutex<u64>> = (0..6).map(|_| Mutex::new(0)).collect();
            let tasks: Vec<_> = inputs
                .iter()
                .zip(&written)
                .map(|(input, out)| {
                    move || {
                        let sum: u64 = input.iter().sum();
                        *out.lock().expect("lock") = sum;
                        sum
                    }
                })
                .collect();
            let got = io.run_all(tasks);
            // Every task has finished with what it borrowed by the time run_all returns.
            for (i, (sum, out)) in got.iter().zip(&written).enumerate() {
                let want = (round + i as u64) * 1000;
                assert_eq!(*sum, Some(want));
                assert_eq!(*out.lock().expect("lock"), want);
            }
        }
        assert_eq!(
            io.run_all(Vec::<fn() -> u8>::new()),
            Vec::<Option<u8>>::new()
        );
    }
}
