//! Pots over HTTP (being written).
