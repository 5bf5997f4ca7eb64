//! Chronicle's black-box and cross-crate tests: one test binary of modules, each test on a
//! fresh PostgreSQL database of its own.

mod support;

mod audit;
mod audit_asof;
mod audit_export;
mod audit_memory;
mod bad_input;
mod chain;
mod concurrency;
mod deadlines;
mod devices;
mod erasure;
mod escrows;
mod event_store;
mod fanout;
mod idempotency;
mod money_flows;
mod multi_process;
mod operations;
mod orders;
mod pots;
mod projectors;
mod queries_commerce;
mod queries_money;
mod rules_over_http;
mod schema_evolution;
mod state_machine;
mod telemetry;
