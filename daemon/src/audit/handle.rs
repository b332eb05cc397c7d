//! [`AuditHandle`]: record entries from anywhere; a writer thread commits them
//! in groups (one fsync'd transaction for everything queued meanwhile), so a
//! burst of 1,000 agent starts costs a handful of commits, not 1,000.

use super::{AuditError, AuditLog, Draft};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Where the writer answers: an async waiter, or a blocked thread (which may
/// be one a runtime drives, such as the actor thread: no tokio blocking call).
enum Reply {
    Async(oneshot::Sender<Result<u64, String>>),
    Sync(mpsc::Sender<Result<u64, String>>),
}

impl Reply {
    fn send(self, r: Result<u64, String>) {
        match self {
            Reply::Async(t) => {
                let _ = t.send(r);
            }
            Reply::Sync(t) => {
                let _ = t.send(r);
            }
        }
    }
}

enum Msg {
    Entry(Draft, Option<Reply>),
}

/// Cloneable, `Send + Sync`: the way every component writes the audit trail.
#[derive(Clone)]
pub struct AuditHandle {
    log: Arc<AuditLog>,
    inner: Arc<Writer>,
}

/// The writer thread's queue; dropping the last handle drains the queue and
/// joins the thread, so everything recorded is committed (and the database
/// released) once the last handle is gone.
struct Writer {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, m: Msg) -> Result<(), AuditError> {
        self.tx
            .as_ref()
            .ok_or(AuditError::Closed)?
            .send(m)
            .map_err(|_| AuditError::Closed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("log", &self.log)
            .finish()
    }
}

impl AuditHandle {
    /// Starts the group-commit writer thread over `log`.
    pub fn start(log: Arc<AuditLog>) -> AuditHandle {
        let (tx, rx) = mpsc::channel::<Msg>();
        let writer_log = log.clone();
        let thread = std::thread::Builder::new()
            .name("ironcaged-audit".into())
            .spawn(move || writer(&writer_log, &rx))
            .expect("spawn the audit writer thread");
        AuditHandle {
            log,
            inner: Arc::new(Writer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        }
    }

    /// The trail itself (reads, verify, same-transaction writes).
    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    /// Queues `d` and returns at once (agent lifecycle, breaker transitions,
    /// budget alerts). A failed commit is logged as an error.
    pub fn record(&self, d: Draft) {
        if self.inner.send(Msg::Entry(d, None)).is_err() {
            tracing::error!("audit writer stopped: an audit entry was lost");
        }
    }

    /// Queues `d` and waits until it is durably committed; returns its seq.
    /// An error means the entry is not on record: fail the operation.
    pub async fn record_durable(&self, d: Draft) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner.send(Msg::Entry(d, Some(Reply::Async(tx))))?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(msg)) => Err(AuditError::Write(msg)),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// [`AuditHandle::record_durable`] for a blocking thread.
    pub fn record_durable_blocking(&self, d: Draft) -> Result<u64, AuditError> {
        let (tx, rx) = mpsc::channel();
        self.inner.send(Msg::Entry(d, Some(Reply::Sync(tx))))?;
        match rx.recv() {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(msg)) => Err(AuditError::Write(msg)),
            Err(_) => Err(AuditError::Closed),
        }
    }
}

impl AuditHandle {
    /// Queues every draft at once (so they share a group commit) and waits
    /// until all are durable. An error: not all are on record.
    pub fn record_all_durable_blocking(&self, drafts: Vec<Draft>) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::channel();
        let n = drafts.len();
        for d in drafts {
            self.inner
                .send(Msg::Entry(d, Some(Reply::Sync(tx.clone()))))?;
        }
        drop(tx);
        for _ in 0..n {
            match rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(msg)) => return Err(AuditError::Write(msg)),
                Err(_) => return Err(AuditError::Closed),
            }
        }
        Ok(())
    }
}

fn writer(log: &AuditLog, rx: &mpsc::Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut drafts = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for Msg::Entry(d, r) in batch {
            drafts.push(d);
            replies.push(r);
        }
        let result = log.write(|_, app| {
            drafts
                .into_iter()
                .map(|d| app.append(d))
                .collect::<Result<Vec<u64>, AuditError>>()
        });
        match result {
            Ok(seqs) => {
                for (r, seq) in replies.into_iter().zip(seqs) {
                    if let Some(r) = r {
                        r.send(Ok(seq));
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let lost = replies.iter().filter(|r| r.is_none()).count();
                if lost > 0 {
                    tracing::error!("{lost} audit entries could not be written: {msg}");
                }
                for r in replies.into_iter().flatten() {
                    r.send(Err(msg.clone()));
                }
            }
        }
    }
}
