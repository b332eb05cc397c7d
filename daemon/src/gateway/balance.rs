//! Spreading agents' connections evenly over the gateway's workers.
//!
//! Every worker accepts on a duplicate of the one listening socket, so the
//! kernel hands a new connection to whichever worker's accept is first, and
//! the worker that is awake (the busy one) wins nearly every time: measured
//! at 2,000 calls/s over 32 connections, one of two workers carried 92% of
//! the calls. A call never changes thread, so that worker's core was the
//! gateway's whole capacity. (`SO_REUSEPORT` would let the kernel spread
//! them, but also let any process of the daemon's uid, i.e. an agent, bind
//! the same port and receive other agents' calls.)
//!
//! So a worker only accepts while it holds no more connections than any other
//! ([`Balance::turn`]); after each accept it checks again. With no connection
//! closing, the counts never differ by more than one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Open connections per worker, shared by all workers.
#[derive(Debug)]
pub struct Balance {
    open: Vec<AtomicUsize>,
    changed: Notify,
}

/// One open connection of a worker; dropping it (the connection ended)
/// updates the counts.
#[derive(Debug)]
pub struct Held {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.balance.open[self.worker].fetch_sub(1, Ordering::AcqRel);
        self.balance.changed.notify_waiters();
    }
}

impl Balance {
    /// Counts for `workers` workers, all at zero.
    pub fn new(workers: usize) -> Arc<Balance> {
        Arc::new(Balance {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        })
    }

    fn may_accept(&self, worker: usize) -> bool {
        let mine = self.open[worker].load(Ordering::Acquire);
        self.open.iter().all(|c| mine <= c.load(Ordering::Acquire))
    }

    /// Resolves once `worker` holds no more connections than any other.
    pub async fn turn(&self, worker: usize) {
        loop {
            // Registered before the check: a change between the check and
            // the wait still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.may_accept(worker) {
                return;
            }
            changed.await;
        }
    }

    /// Counts a connection `worker` accepted, until the returned guard drops.
    pub fn opened(self: &Arc<Self>, worker: usize) -> Held {
        self.open[worker].fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Held {
            balance: self.clone(),
            worker,
        }
    }

    /// Open connections per worker.
    pub fn counts(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits (bounded) until `f` holds.
    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn connections_spread_evenly_over_workers_on_their_own_threads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let balance = Balance::new(2);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let l = listener.try_clone().unwrap();
                let balance = balance.clone();
                let mut stop = stop_rx.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let l = tokio::net::TcpListener::from_std(l).unwrap();
                        let mut held = Vec::new();
                        loop {
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => break,
                                _ = balance.turn(i) => {}
                            }
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => break,
                                a = l.accept() => {
                                    let (s, _) = a.unwrap();
                                    held.push((s, balance.opened(i)));
                                }
                            }
                        }
                    });
                })
            })
            .collect();
        // Ten connections kept open, opened one after another: the counts
        // never differ by more than one, so they end five and five.
        let clients: Vec<_> = (0..10)
            .map(|n| {
                let c = std::net::TcpStream::connect(addr).unwrap();
                wait_until("the connection to be accepted", || {
                    balance.counts().iter().sum::<usize>() == n + 1
                });
                c
            })
            .collect();
        assert_eq!(balance.counts(), vec![5, 5]);
        stop_tx.send(true).unwrap();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(balance.counts(), vec![0, 0], "guards released on stop");
        drop(clients);
    }

    #[tokio::test]
    async fn a_worker_ahead_waits_for_the_others_and_resumes_when_one_closes() {
        let balance = Balance::new(2);
        let a = balance.opened(0);
        let b = balance.opened(0);
        let _c = balance.opened(1);
        // Worker 0 holds 2, worker 1 holds 1: worker 0 must wait.
        let waiting = tokio::spawn({
            let balance = balance.clone();
            async move { balance.turn(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        balance.turn(1).await; // the worker behind may accept at once
        drop(a);
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("worker 0 resumes once its count is back to the minimum")
            .unwrap();
        drop(b);
        assert_eq!(balance.counts(), vec![0, 1]);
    }
}
