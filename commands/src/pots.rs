//! Pots use cases (being written).
