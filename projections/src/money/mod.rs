//! Read models of accounts, wallets (with their ledger and transfers) and the platform totals.

use crate::Projector;
use std::sync::Arc;

/// The projectors of this module.
pub fn projectors() -> Vec<Arc<dyn Projector>> {
    vec![]
}
