//! Long-running jobs (rebuild, scrub): one of each kind at a time, with shared progress, cancellation and a
//! throttle the admin can set. Jobs run on their own threads; the admin API polls `progress()` and learns of the
//! end from `wait_finished`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::now_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Rebuild,
    Scrub,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobProgress {
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub containers_total: u64,
    pub containers_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bad or missing shards found (scrub) / shards to rebuild (rebuild).
    pub bad_shards: u64,
    pub shards_repaired: u64,
    pub files_quarantined: u64,
    /// Containers that could not be repaired, with the objects they hold.
    pub unrepairable: Vec<String>,
    /// Containers left at reduced redundancy because no disk was free to rebuild onto.
    pub unplaced: u64,
    pub eta_secs: Option<u64>,
    pub mb_per_sec: f64,
    pub error: Option<String>,
    pub repair: bool,
}

pub struct Job {
    pub kind: JobKind,
    progress: Mutex<JobProgress>,
    /// Signalled when the job finishes, so that a waiting client learns it at once, not at its next poll.
    finished: Condvar,
    cancel: AtomicBool,
    /// Bytes per second; 0 = unthrottled.
    throttle: AtomicU64,
    started: Instant,
}

impl Job {
    pub fn new(kind: JobKind, throttle_bytes_per_sec: u64, repair: bool) -> Job {
        Job {
            kind,
            progress: Mutex::new(JobProgress {
                running: true,
                started_unix_ms: now_ms(),
                repair,
                ..Default::default()
            }),
            finished: Condvar::new(),
            cancel: AtomicBool::new(false),
            throttle: AtomicU64::new(throttle_bytes_per_sec),
            started: Instant::now(),
        }
    }
    pub fn progress(&self) -> JobProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }
    pub fn update(&self, f: impl FnOnce(&mut JobProgress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            p.mb_per_sec = p.bytes_done as f64 / secs / 1e6;
            p.eta_secs = (p.bytes_done > 0 && p.bytes_total >= p.bytes_done).then(|| {
                ((p.bytes_total - p.bytes_done) as f64 * secs / p.bytes_done as f64) as u64
            });
        }
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    pub fn set_throttle(&self, bytes_per_sec: u64) {
        self.throttle.store(bytes_per_sec, Ordering::SeqCst);
    }
    /// Sleeps as needed to keep the job at or below its throttle.
    pub fn pace(&self, bytes_done: u64) {
        let limit = self.throttle.load(Ordering::SeqCst);
        if limit == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes_done as f64 / limit as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed && !self.cancelled() {
            std::thread::sleep((due - elapsed).min(Duration::from_secs(5)));
        }
    }
    pub fn finish(&self, error: Option<String>) {
        self.update(|p| {
            p.running = false;
            p.finished_unix_ms = Some(now_ms());
            p.error = error;
            p.eta_secs = Some(0);
        });
        self.finished.notify_all();
    }
    /// Waits until the job has finished or `timeout` has passed; the progress then.
    pub fn wait_finished(&self, timeout: Duration) -> JobProgress {
        let Ok(p) = self.progress.lock() else {
            return JobProgress::default();
        };
        match self.finished.wait_timeout_while(p, timeout, |p| p.running) {
            Ok((p, _)) => p.clone(),
            Err(_) => JobProgress::default(),
        }
    }
}

#[derive(Default)]
pub struct Jobs {
    pub rebuild: Mutex<Option<Arc<Job>>>,
    pub scrub: Mutex<Option<Arc<Job>>>,
}

impl Jobs {
    pub fn slot(&self, kind: JobKind) -> &Mutex<Option<Arc<Job>>> {
        match kind {
            JobKind::Rebuild => &self.rebuild,
            JobKind::Scrub => &self.scrub,
        }
    }
    pub fn current(&self, kind: JobKind) -> Option<Arc<Job>> {
        self.slot(kind).lock().ok().and_then(|s| s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_learns_of_the_end_when_it_happens() {
        let job = Arc::new(Job::new(JobKind::Scrub, 0, true));
        let p = job.wait_finished(Duration::from_millis(10));
        assert!(
            p.running,
            "a running job times out the wait and says it still runs"
        );
        let finisher = {
            let job = job.clone();
            std::thread::spawn(move || {
                job.update(|p| p.bytes_done = 7);
                job.finish(None);
            })
        };
        // A wait far longer than any test: it returns because the job finished, not because time ran out.
        let p = job.wait_finished(Duration::from_secs(3600));
        assert!(!p.running);
        assert_eq!(p.bytes_done, 7);
        assert!(p.finished_unix_ms.is_some());
        finisher.join().expect("finisher");
        // Waiting on a finished job returns at once with its final progress.
        assert!(!job.wait_finished(Duration::from_secs(3600)).running);
    }
}
