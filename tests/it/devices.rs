//! Devices over HTTP (being written).
