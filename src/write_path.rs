//! The write path: sends, read marks and new conversations from every request are queued here
//! and committed together, one transaction per batch of whatever is waiting, not one per write. That is how
//! a durable write (fsync on commit) serves more writes per second than the database has
//! commits per second. The caller is answered only after its batch has committed.
//!
//! Committed changes are published on the change bus for realtime and webhooks; nothing after
//! the commit delays the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, broadcast, mpsc, oneshot};

use crate::domain::Change;
use crate::storage::{DynStore, StoreError, StoreResult, WriteOp, WriteOutcome};

/// Write batches in flight at once unless configured (`CONFAB_WRITE_WORKERS`): SQLite has one
/// writer; on PostgreSQL a second batch runs its statements while the previous one commits.
pub fn default_workers(backend: crate::storage::Backend) -> usize {
    match backend {
        crate::storage::Backend::Sqlite => 1,
        crate::storage::Backend::Postgres => 2,
    }
}

/// Committed changes, for whoever listens (realtime, webhooks, tests). Each publisher sends its
/// own in position order, but publishers (write workers, import transactions) interleave:
/// whoever needs the order restores it by position (realtime's `in_order`).
#[derive(Clone)]
pub struct ChangeBus {
    tx: broadcast::Sender<Arc<Change>>,
}

impl ChangeBus {
    pub fn new() -> Self {
        ChangeBus {
            tx: broadcast::channel(16 * 1024).0,
        }
    }

    pub fn publish(&self, changes: Vec<Change>) {
        for c in changes {
            // No receiver is not an error: realtime may not be listening.
            let _ = self.tx.send(Arc::new(c));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

impl Default for ChangeBus {
    fn default() -> Self {
        Self::new()
    }
}

struct Queued {
    op: WriteOp,
    /// Past this instant the op is refused unstarted (503), so an answer of "unavailable"
    /// always means "not written".
    deadline: Instant,
    reply: oneshot::Sender<StoreResult<WriteOutcome>>,
    _counted: InFlight,
}

/// The handle requests use to submit writes.
#[derive(Clone)]
pub struct WritePath {
    tx: mpsc::Sender<Queued>,
    timeout: Duration,
    /// Writes submitted and not yet answered (for a graceful shutdown to wait on).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl WritePath {
    /// Starts `workers` committing tasks (one is right for SQLite's single writer; a few let
    /// PostgreSQL overlap one batch's commit with the next batch's statements).
    pub fn start(
        store: DynStore,
        bus: ChangeBus,
        workers: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Queued>(64 * 1024);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(worker(store.clone(), bus.clone(), rx.clone(), max_batch));
        }
        WritePath {
            tx,
            timeout,
            in_flight: Arc::default(),
        }
    }

    /// Waits until every submitted write is answered (committed or refused), at most `limit`.
    /// Returns whether it got there.
    pub async fn drain(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Queues one write and waits for its batch to commit.
    pub async fn submit(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        self.enqueue(op).await?.committed().await
    }

    /// Queues one write without waiting for its commit. A write queued after it lands in the
    /// same batch or a later one, but a later batch may commit first (PostgreSQL overlaps two).
    /// Dropping the handle does not withdraw the write.
    pub async fn enqueue(&self, op: WriteOp) -> StoreResult<QueuedWrite> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let counted = InFlight(self.in_flight.clone());
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            op,
            deadline: Instant::now() + self.timeout,
            reply,
            _counted: counted,
        };
        // A full queue pushes back on the caller, for at most the database timeout.
        match tokio::time::timeout(self.timeout, self.tx.send(queued)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Unavailable("write path stopped".into())),
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "the write queue is full: the database is not keeping up".into(),
                ));
            }
        }
        Ok(QueuedWrite { answer })
    }
}

/// Counts a write as in flight until the worker has answered it (or dropped it), whether or not
/// anyone still waits for the answer.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A write in the queue (`WritePath::enqueue`).
pub struct QueuedWrite {
    answer: oneshot::Receiver<StoreResult<WriteOutcome>>,
}

impl QueuedWrite {
    /// Waits for the write's batch to commit.
    pub async fn committed(self) -> StoreResult<WriteOutcome> {
        self.answer
            .await
            .map_err(|_| StoreError::Unavailable("write path stopped".into()))?
    }
}

async fn worker(
    store: DynStore,
    bus: ChangeBus,
    rx: Arc<Mutex<mpsc::Receiver<Queued>>>,
    max_batch: usize,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(max_batch);
    loop {
        // The queue stays locked while this batch runs its own statements, so the next worker
        // collects everything that arrives meanwhile (one large batch, not many of one) and
        // starts when this one only has its commit left: batches overlap, commits take turns.
        let mut queue = rx.lock().await;
        if queue.recv_many(&mut batch, max_batch).await == 0 {
            return; // every sender is gone: the server is stopping
        }
        let now = Instant::now();
        let (live, expired): (Vec<Queued>, Vec<Queued>) =
            batch.drain(..).partition(|q| q.deadline > now);
        for q in expired {
            let _ = q.reply.send(Err(StoreError::Unavailable(
                "the database did not take the write in time".into(),
            )));
        }
        if live.is_empty() {
            continue;
        }
        let ops: Vec<WriteOp> = live.iter().map(|q| q.op.clone()).collect();
        let started = Instant::now();
        let (staged, is_staged) = oneshot::channel();
        let write = store.write_batch_staged(&ops, staged);
        tokio::pin!(write);
        let result = tokio::select! {
            // The write first: once it has finished, it must not be awaited again below.
            biased;
            result = &mut write => result,
            _ = is_staged => {
                drop(queue);
                write.await
            }
        };
        metrics::histogram!("confab_write_batch_size").record(ops.len() as f64);
        metrics::histogram!("confab_write_batch_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(done) => {
                let sent = done
                    .outcomes
                    .iter()
                    .filter(|o| matches!(o, Ok(WriteOutcome::Sent { created: true, .. })))
                    .count();
                metrics::counter!("confab_messages_sent_total").increment(sent as u64);
                for (q, outcome) in live.into_iter().zip(done.outcomes) {
                    let _ = q.reply.send(outcome);
                }
                bus.publish(done.changes);
            }
            Err(e) => {
                tracing::error!(error = %e, size = ops.len(), "write batch failed");
                let msg = e.to_string();
                for q in live {
                    let _ = q.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
        }
    }
}
