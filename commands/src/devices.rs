//! Devices use cases (being written).
