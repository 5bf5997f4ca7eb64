//! Read models of orders, escrows, pots and devices.

use crate::Projector;
use std::sync::Arc;

/// The projectors of this module.
pub fn projectors() -> Vec<Arc<dyn Projector>> {
    vec![]
}
