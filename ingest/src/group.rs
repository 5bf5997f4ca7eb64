//! Group commit for writers that each hold a small batch: `POST /v1/telemetry` requests.
//!
//! A request of up to 1,000 readings written on its own is one transaction and one COPY
//! statement of up to 1,000 rows; PostgreSQL's cost per reading of such a COPY is about 40%
//! above that of a 10,000-row COPY (each statement sets up its multi-insert buffers, and each
//! transaction flushes the WAL). A [`GroupWriter`] hands every request's readings to a few
//! writer tasks; a writer that becomes free takes every request waiting at that moment (no
//! added wait, up to [`GroupWriter::MAX_READINGS`] readings) into one [`store::write`] and
//! answers each request with its own share of the outcome. A request arriving at an idle
//! writer is written at once, alone, as before.
//!
//! The outcome per request is what writing the requests one after another, in the order they
//! were taken, would give: a reading repeated by two requests of a group is stored once and
//! counts as accepted for the earlier request and as a duplicate for the later one. A write
//! the database refuses is tried again request by request, so that a request it cannot take
//! fails alone; a write that fails otherwise (the database unreachable) fails every request of
//! its group (each gets the error and sends again; repeats are dropped). A request whose
//! caller has gone before its group is taken is not written.

use crate::reading::Reading;
use crate::store::{self, Written};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// A failed group write, shared by every request of the group.
pub type GroupError = Arc<sqlx::Error>;

/// One request's readings and where its outcome goes.
struct Job {
    readings: Vec<Reading>,
    done: oneshot::Sender<Result<Written, GroupError>>,
}

/// The handle requests write through (cheap to clone); the writer tasks end once every handle
/// is dropped, after the requests already handed over.
#[derive(Clone)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Job>,
}

impl GroupWriter {
    /// The most readings one group writes (one COPY of at most this many rows, about 160
    /// bytes each). A single request larger than this is still written, alone.
    pub const MAX_READINGS: usize = 20_000;

    /// `writers` writer tasks (at least one) on `pool`, spawned on the current runtime.
    pub fn new(pool: PgPool, writers: usize) -> Self {
        let writers = writers.max(1);
        // Requests beyond this many wait in `write` for room: backpressure on the handlers
        // (each holds its parsed readings meanwhile).
        let (jobs, queue) = mpsc::channel(writers * 64);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers {
            tokio::spawn(writer(pool.clone(), queue.clone()));
        }
        Self { jobs }
    }

    /// Requests handed over and not yet taken into a group.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Writes `readings` (valid ones, any devices) in the next group; its outcome is as
    /// [`store::write`]'s for these readings alone (indices into `readings`), except that a
    /// reading repeated by an earlier request of the same group is a duplicate. No readings:
    /// nothing to write, no group.
    pub async fn write(&self, readings: Vec<Reading>) -> Result<Written, GroupError> {
        if readings.is_empty() {
            return Ok(Written::default());
        }
        let (done, outcome) = oneshot::channel();
        let closed = || Arc::new(sqlx::Error::PoolClosed);
        self.jobs
            .send(Job { readings, done })
            .await
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }
}

/// A writer task: takes a group, writes it, answers its requests, until the handles are gone.
async fn writer(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut n = first.readings.len();
            jobs.push(first);
            while n < GroupWriter::MAX_READINGS {
                match queue.try_recv() {
                    Ok(job) => {
                        n += job.readings.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        // Callers gone before their group was taken are not written.
        jobs.retain(|job| !job.done.is_closed());
        if jobs.is_empty() {
            continue;
        }
        metrics::histogram!("chronicle_telemetry_http_group_requests").record(jobs.len() as f64);
        write_group(&pool, jobs).await;
    }
}

/// Writes the jobs' readings in one transaction and answers each job with its share.
async fn write_group(pool: &PgPool, mut jobs: Vec<Job>) {
    // The first request's readings, then the others' appended (a lone request's are not
    // copied).
    let mut all = std::mem::take(&mut jobs[0].readings);
    all.reserve(jobs[1..].iter().map(|j| j.readings.len()).sum());
    let mut ends = vec![all.len()];
    for job in &mut jobs[1..] {
        all.append(&mut job.readings);
        ends.push(all.len());
    }
    match store::write(pool, &all, &[], |_| None).await {
        Ok(written) => {
            for (share, job) in split(&written, &ends).into_iter().zip(jobs) {
                let _ = job.done.send(Ok(share));
            }
        }
        // The database refused the group: each request again alone, in order, so that a
        // request it cannot take fails alone. Not when it could not be reached: each request
        // would wait for it again.
        Err(sqlx::Error::Database(e)) if jobs.len() > 1 => {
            tracing::warn!(error = %e, requests = jobs.len(), "a telemetry group refused; writing its requests one by one");
            let mut start = 0;
            for (job, &end) in jobs.into_iter().zip(&ends) {
                let outcome = store::write(pool, &all[start..end], &[], |_| None).await;
                let _ = job.done.send(outcome.map_err(Arc::new));
                start = end;
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for job in jobs {
                let _ = job.done.send(Err(e.clone()));
            }
        }
    }
}

/// The outcome of a group written as one batch, split into its requests' outcomes: request
/// `k` held the readings `ends[k - 1]..ends[k]` (from 0 for the first), and its indices are
/// its own.
fn split(written: &Written, ends: &[usize]) -> Vec<Written> {
    let request = |i: usize| ends.partition_point(|&end| end <= i);
    let mut shares: Vec<Written> = vec![Written::default(); ends.len()];
    let start = |k: usize| if k == 0 { 0 } else { ends[k - 1] };
    for &i in &written.stored {
        let k = request(i);
        shares[k].stored.push(i - start(k));
    }
    for &i in &written.too_old {
        let k = request(i);
        shares[k].too_old.push(i - start(k));
    }
    for (k, share) in shares.iter_mut().enumerate() {
        let len = ends[k] - start(k);
        share.stored.sort_unstable();
        share.accepted = share.stored.len() as u64;
        share.duplicates = (len - share.stored.len() - share.too_old.len()) as u64;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every reading of the group lands in exactly one request's share, under its own
        /// index, and each share's counts add up to its request's size.
        #[test]
        fn a_split_gives_each_request_its_own_readings(
            sizes in prop::collection::vec(1usize..50, 1..8),
            fates in prop::collection::vec(0u8..3, 400),
        ) {
            let mut ends = Vec::new();
            let mut total = 0;
            for s in &sizes {
                total += s;
                ends.push(total);
            }
            let mut written = Written::default();
            for i in 0..total {
                match fates[i % fates.len()] {
                    0 => written.stored.push(i),
                    1 => written.too_old.push(i),
                    _ => {}
                }
            }
            written.stored.reverse();
            written.accepted = written.stored.len() as u64;
            let shares = split(&written, &ends);
            prop_assert_eq!(shares.len(), sizes.len());
            let mut start = 0;
            for (k, share) in shares.iter().enumerate() {
                let own = |list: &Vec<usize>| -> Vec<usize> {
                    let mut v: Vec<usize> = list
                        .iter()
                        .filter(|&&i| i >= start && i < ends[k])
                        .map(|&i| i - start)
                        .collect();
                    v.sort_unstable();
                    v
                };
                prop_assert_eq!(&share.stored, &own(&written.stored));
                prop_assert_eq!(&share.too_old, &own(&written.too_old));
                prop_assert_eq!(share.accepted as usize, share.stored.len());
                prop_assert_eq!(
                    share.accepted as usize + share.duplicates as usize + share.too_old.len(),
                    sizes[k]
                );
                start = ends[k];
            }
        }
    }
}
