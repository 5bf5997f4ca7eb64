//! Chronicle's write side: the event store (PostgreSQL, behind the `EventStore` trait), the
//! command service that loads aggregates, checks rules and appends events with optimistic
//! concurrency, shared commits and idempotency keys, and the use cases of each aggregate.

pub mod accounts;
pub mod db;
pub mod devices;
pub mod escrows;
pub mod orders;
pub mod pg;
pub mod pots;
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

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
