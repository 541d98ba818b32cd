//! The MD5 lane service: one thread that hashes the batches of concurrent uploads together, up to eight at a
//! time in the SIMD lanes of one core (`core::md5x`). An upload hands over a batch with its MD5 state and goes
//! on chunking and compressing that batch; it takes the state back only when it has the next batch ready
//! (or at the end). Until someone needs a result, the service waits up to `MAX_GATHER` for more batches to
//! fill the lanes; a waiter wakes it at once. With eight uploads in flight this cut MD5 from a quarter of the
//! server's CPU in unique ingest to about a twentieth (README, Performance).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::core::md5x::{LANES, Md5State, update_many};

/// Longest a batch waits for company when nobody needs its result yet. An upload under load comes back for
/// it after a whole batch of its own work (~100 ms at eight uploads on two cores), so this rarely delays one.
const MAX_GATHER: Duration = Duration::from_millis(40);

/// A batch being hashed: its state and bytes come back through `reply`.
struct Job {
    state: Md5State,
    data: Arc<Vec<u8>>,
    waiting: Arc<AtomicBool>,
    reply: SyncSender<(Md5State, Arc<Vec<u8>>)>,
}

enum Msg {
    Job(Job),
    /// Somebody waits for a result: stop gathering.
    Wake,
}

/// A handed-over batch.
pub struct PendingMd5 {
    rx: Receiver<(Md5State, Arc<Vec<u8>>)>,
    waiting: Arc<AtomicBool>,
    tx: Sender<Msg>,
    data: Arc<Vec<u8>>,
}

impl PendingMd5 {
    /// The batch being hashed (shared, read-only until it comes back).
    pub fn data(&self) -> Arc<Vec<u8>> {
        self.data.clone()
    }

    /// The state with the batch hashed in, and the batch (for reuse). Blocks until the service has it.
    pub fn wait(self) -> Option<(Md5State, Arc<Vec<u8>>)> {
        drop(self.data);
        self.waiting.store(true, Ordering::Release);
        // Ignored if the service is gone: recv below then reports it.
        let _ = self.tx.send(Msg::Wake);
        self.rx.recv().ok()
    }
}

fn service() -> Option<&'static Mutex<Sender<Msg>>> {
    static TX: OnceLock<Option<Mutex<Sender<Msg>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cairn-md5-lanes".into())
            .spawn(move || run(rx))
            .ok()
            .map(|_| Mutex::new(tx))
    })
    .as_ref()
}

/// Hands `data` over to be hashed into `state`. Gives both back (Err) if the service cannot be reached; the
/// caller then hashes on its own thread.
pub fn submit(state: Md5State, data: Arc<Vec<u8>>) -> Result<PendingMd5, (Md5State, Arc<Vec<u8>>)> {
    let Some(tx) = service().and_then(|m| m.lock().ok().map(|t| t.clone())) else {
        return Err((state, data));
    };
    let (reply, rx) = mpsc::sync_channel(1);
    let waiting = Arc::new(AtomicBool::new(false));
    let job = Job {
        state,
        data: data.clone(),
        waiting: waiting.clone(),
        reply,
    };
    match tx.send(Msg::Job(job)) {
        Ok(()) => Ok(PendingMd5 {
            rx,
            waiting,
            tx,
            data,
        }),
        Err(mpsc::SendError(Msg::Job(j))) => {
            drop(j.data);
            Err((j.state, data))
        }
        Err(mpsc::SendError(Msg::Wake)) => unreachable!("sent a job"),
    }
}

fn run(rx: Receiver<Msg>) {
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        if jobs.is_empty() {
            match rx.recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Wake) => continue,
                Err(_) => return,
            }
        }
        let start = Instant::now();
        while jobs.len() < LANES && !jobs.iter().any(|j| j.waiting.load(Ordering::Acquire)) {
            let Some(left) = MAX_GATHER.checked_sub(start.elapsed()) else {
                break;
            };
            match rx.recv_timeout(left) {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let batch: Vec<Job> = std::mem::take(&mut jobs);
        let mut states: Vec<Md5State> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut data = Vec::with_capacity(batch.len());
        for j in batch {
            states.push(j.state);
            data.push(j.data);
            replies.push(j.reply);
        }
        {
            let mut refs: Vec<&mut Md5State> = states.iter_mut().collect();
            let slices: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            update_many(&mut refs, &slices);
        }
        for ((state, d), reply) in states.into_iter().zip(data).zip(replies) {
            // The upload may have been dropped meanwhile: nothing to deliver then.
            let _ = reply.send((state, d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    #[test]
    fn concurrent_streams_get_their_own_digests() {
        let streams: Vec<Vec<u8>> = (0..10u32)
            .map(|s| {
                (0..(300_000 + s * 7_777))
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> (s % 5 + 8)) as u8)
                    .collect()
            })
            .collect();
        std::thread::scope(|scope| {
            for s in &streams {
                scope.spawn(move || {
                    let mut state = Md5State::new();
                    for piece in s.chunks(65_537) {
                        let buf = Arc::new(piece.to_vec());
                        state = match submit(state, buf) {
                            Ok(p) => {
                                let (st, back) = p.wait().expect("service answers");
                                assert_eq!(&back[..], piece);
                                st
                            }
                            Err(_) => panic!("service unreachable"),
                        };
                    }
                    let want: [u8; 16] = md5::Md5::digest(s).into();
                    assert_eq!(state.finalize(), want);
                });
            }
        });
    }
}
