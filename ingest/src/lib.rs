//! Chronicle's telemetry ingestion over HTTP and NATS JetStream into the time-series log.
//! Not built yet.
