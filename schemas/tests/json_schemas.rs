//! The committed JSON Schemas (`schemas/json`) match the Rust types, and the registry of
//! stored event types matches the domain's event enums.
//!
//! `UPDATE_SCHEMAS=1 cargo test -p chronicle-schemas --test json_schemas` rewrites the files
//! instead of failing (like `cargo run -p chronicle-schemas --bin gen-json-schemas`).

use chronicle_schemas::json;

#[test]
fn committed_json_schemas_match_the_rust_types() {
    let dir = json::dir();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        for line in json::write(&dir).expect("regenerate") {
            println!("{line}");
        }
    }
    let problems = json::drift(&dir).expect("the schemas generate");
    assert!(
        problems.is_empty(),
        "the committed JSON Schemas differ from the Rust types:\n  {}\n\
         If the change is intended, regenerate them with `{}` (or \
         UPDATE_SCHEMAS=1 cargo test -p chronicle-schemas --test json_schemas), review the \
         diff and commit schemas/json. A changed stored shape needs a new schema version and \
         an upcaster (docs/schemas.md).",
        problems.join("\n  "),
        json::REGENERATE
    );
}

#[test]
fn registry_matches_the_domain_events() {
    let mismatches = json::registry_mismatches().expect("the schemas generate");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
