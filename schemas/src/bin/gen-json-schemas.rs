//! Rewrites `schemas/json` from the domain types and the registry of event versions:
//! `cargo run -p chronicle-schemas --bin gen-json-schemas`. See docs/schemas.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = chronicle_schemas::json::dir();
    match chronicle_schemas::json::write(&dir) {
        Ok(done) => {
            for line in &done {
                println!("{line}");
            }
            println!("{}: {} file(s) changed", dir.display(), done.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot generate the JSON Schemas: {e}");
            ExitCode::FAILURE
        }
    }
}
