//! Chronicle's domain: the aggregates (Account, Wallet), their commands, events and rules.
//!
//! Everything here is pure and synchronous: an aggregate decides from its state and a command
//! to events or a typed rejection, and applies events to its state. Facts from outside (the
//! clock, uniqueness checks, another aggregate's state) are resolved by the command layer and
//! passed in with the command. Each aggregate implements `cqrs_es::Aggregate`.

pub mod account;
pub mod device;
pub mod escrow;
pub mod order;
pub mod pot;
pub mod values;
pub mod wallet;

pub use values::{Amount, Currency, InvalidInput};

/// A rejection by a business rule, with the stable code the HTTP layer reports.
pub trait RuleCode {
    /// The stable machine-readable code (`insufficient_funds`, `invalid_state`, ...).
    fn code(&self) -> &'static str;
}

/// Writes decided events to cqrs-es's sink, which applies each to the aggregate exactly once.
pub(crate) async fn emit<A: cqrs_es::Aggregate>(
    aggregate: &mut A,
    events: Vec<A::Event>,
    sink: &cqrs_es::event_sink::EventSink<A>,
) {
    for event in events {
        sink.write(event, aggregate).await;
    }
}
