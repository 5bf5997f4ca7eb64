//! Chronicle's write side: the event store (PostgreSQL, behind the `EventStore` trait), the
//! command service that loads aggregates, checks rules and appends events with optimistic
//! concurrency, shared commits and idempotency keys, and the use cases of each aggregate.

pub mod accounts;
pub mod audit;
pub mod db;
pub mod devices;
pub mod escrows;
pub mod orders;
pub mod pg;
pub mod pots;
pub mod processes;
pub mod repo;
pub mod service;
pub mod store;
pub(crate) mod unit;
pub mod wallets;

pub use service::{
    Actor, CommandError, CommandResult, CommandService, Envelope, IdempotencyKey, Refusal, Role,
    ServiceConfig,
};

use chrono::{DateTime, Utc};

/// Where "now" comes from, so that tests can control time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock that tests set and move by hand.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(std::sync::Mutex::new(now))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
