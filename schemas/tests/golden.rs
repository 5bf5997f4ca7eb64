//! Golden fixtures (`schemas/fixtures/<stream_type>/*.json`): streams of stored events as they
//! appear in the log (event type, schema version, payload), each with the aggregate state it
//! must replay to. Together they hold every event type in every version this build reads.

use chronicle_schemas::{json, registry, Metadata, Payload, RecordedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use domain::{account, device, escrow, order, pot, wallet};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// One fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// What the stream shows.
    #[allow(dead_code)]
    description: String,
    stream_type: String,
    stream_id: Uuid,
    events: Vec<Stored>,
    /// The aggregate state after the last event, as the aggregate serializes it.
    state: Value,
}

/// An event as the log stores it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    event_type: String,
    schema_version: i32,
    payload: Value,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture, by its path relative to `schemas/fixtures`.
fn fixtures() -> Vec<(String, Fixture)> {
    let mut out = Vec::new();
    let dir = fixtures_dir();
    let mut stream_dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("schemas/fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    stream_dirs.sort();
    for stream_dir in stream_dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&stream_dir)
            .expect("a fixture directory")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .strip_prefix(&dir)
                .expect("under fixtures")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).expect("read a fixture");
            let fixture: Fixture = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("schemas/fixtures/{name} is not a fixture: {e}"));
            let folder = stream_dir
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            assert_eq!(
                folder.as_deref(),
                Some(fixture.stream_type.as_str()),
                "schemas/fixtures/{name}: the folder names the stream type"
            );
            out.push((name, fixture));
        }
    }
    assert!(!out.is_empty(), "no fixtures under {}", dir.display());
    out
}

/// The fixture's events as the log would hand them to a reader.
fn recorded(fixture: &Fixture) -> Vec<RecordedEvent> {
    fixture
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            position: 1000 + i as i64,
            tx: 1,
            event_id: Uuid::from_u128(i as u128 + 1),
            stream_type: fixture.stream_type.clone(),
            stream_id: fixture.stream_id,
            stream_version: i as i64 + 1,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            // As a reader of the log holds it: the stored JSON text.
            payload: Payload::from_raw(
                serde_json::value::RawValue::from_string(e.payload.to_string())
                    .expect("a fixture payload is JSON"),
            ),
            metadata: Metadata {
                actor_sub: "fixture".into(),
                actor_role: "admin".into(),
                command_id: Uuid::nil(),
                correlation_id: Uuid::nil(),
                causation_id: None,
                occurred_at: chrono::DateTime::UNIX_EPOCH,
            },
        })
        .collect()
}

/// Replays a fixture through decode and `Aggregate::apply`: the state it ends in, or the
/// first event that does not decode.
fn replay<A: Aggregate>(fixture: &Fixture) -> Result<Value, String> {
    let mut state = A::default();
    for event in recorded(fixture) {
        state.apply(event.decode::<A::Event>().map_err(|e| e.to_string())?);
    }
    serde_json::to_value(&state).map_err(|e| e.to_string())
}

/// Checks that each event of a fixture decoded as stored is exactly what the domain stores:
/// decoding and encoding it again gives the same payload and type name, and the version the
/// domain writes is one the registry reads.
fn round_trip<A: Aggregate>(fixture: &Fixture) -> Vec<String> {
    let mut problems = Vec::new();
    for event in recorded(fixture) {
        let Some(t) = registry::event_type(&event.event_type) else {
            continue;
        };
        // Versions decoded as stored (the current one, and older ones the current decoder
        // reads as they are); upcast ones are rewritten on purpose.
        if !matches!(
            registry::plan(&event.event_type, event.schema_version),
            Ok(registry::Plan::AsIs)
        ) {
            continue;
        }
        let at = format!("{} at version {}", event.event_type, event.stream_version);
        let decoded = match event.decode::<A::Event>() {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
        if decoded.event_type() != event.event_type {
            problems.push(format!("{at}: decoded as {}", decoded.event_type()));
        }
        // What the domain writes must be readable (a stored form such as sealing may store
        // a later version, never an earlier one than the registry reads).
        let written: i32 = decoded.event_version().parse().unwrap_or(-1);
        if !registry::readable_versions(t.name).contains(&written) {
            problems.push(format!(
                "{at}: the domain writes version {written}, which the registry does not read \
                 (current {})",
                t.current
            ));
        }
        let mut again = serde_json::to_value(&decoded).unwrap_or(Value::Null);
        if let Some(fields) = again.as_object_mut() {
            fields.remove("type");
        }
        if again != event.payload {
            problems.push(format!(
                "{at}: stored as {again} by the domain, not as the fixture's {}",
                event.payload
            ));
        }
    }
    problems
}

/// Runs `check` with the aggregate of the fixture's stream type.
macro_rules! by_stream_type {
    ($fixture:expr, $check:ident) => {
        match $fixture.stream_type.as_str() {
            "account" => $check::<account::Account>($fixture),
            "wallet" => $check::<wallet::Wallet>($fixture),
            "order" => $check::<order::Order>($fixture),
            "escrow" => $check::<escrow::Escrow>($fixture),
            "pot" => $check::<pot::Pot>($fixture),
            "device" => $check::<device::Device>($fixture),
            other => panic!("no aggregate of stream type {other:?}"),
        }
    };
}

#[test]
fn every_fixture_stream_replays_to_its_recorded_state() {
    let mut failures = Vec::new();
    for (name, fixture) in fixtures() {
        match by_stream_type!(&fixture, replay) {
            Ok(state) if state == fixture.state => {}
            Ok(state) => failures.push(format!(
                "schemas/fixtures/{name}: the replay ends in\n{}\nnot in the recorded state",
                serde_json::to_string_pretty(&state).unwrap_or_default()
            )),
            Err(e) => failures.push(format!("schemas/fixtures/{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn payloads_read_as_stored_are_exactly_what_the_domain_writes() {
    let mut failures = Vec::new();
    for (name, fixture) in fixtures() {
        for problem in by_stream_type!(&fixture, round_trip) {
            failures.push(format!("schemas/fixtures/{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_event_type_and_readable_version_has_a_fixture() {
    // The list of event types comes from the generated schema index, i.e. from the domain's
    // event enums: a new event type or version without a fixture fails here.
    let expected = json::expected().expect("the schemas generate");
    let index = &expected.files["index.json"];
    let mut wanted = BTreeSet::new();
    for t in index["events"].as_array().expect("events") {
        let name = t["event_type"].as_str().expect("event_type").to_owned();
        for v in t["versions"].as_array().expect("versions") {
            wanted.insert((name.clone(), v["version"].as_i64().expect("version")));
        }
    }
    assert!(wanted.len() >= 46, "{} event versions", wanted.len());
    let mut covered = BTreeSet::new();
    for (name, fixture) in fixtures() {
        for e in &fixture.events {
            let key = (e.event_type.clone(), i64::from(e.schema_version));
            assert!(
                wanted.contains(&key),
                "schemas/fixtures/{name}: {} v{} is not a readable event version",
                e.event_type,
                e.schema_version
            );
            covered.insert(key);
        }
    }
    let missing: Vec<String> = wanted
        .difference(&covered)
        .map(|(t, v)| format!("{t} v{v}"))
        .collect();
    assert!(
        missing.is_empty(),
        "no fixture under schemas/fixtures holds: {}",
        missing.join(", ")
    );
}

#[test]
fn every_fixture_payload_validates_against_its_committed_schema() {
    let dir = json::dir();
    let mut validators = std::collections::HashMap::new();
    let mut failures = Vec::new();
    for (name, fixture) in fixtures() {
        for (i, e) in fixture.events.iter().enumerate() {
            let path =
                json::event_schema_path(&fixture.stream_type, &e.event_type, e.schema_version);
            let validator = validators.entry(path.clone()).or_insert_with(|| {
                let text = std::fs::read_to_string(dir.join(&path))
                    .unwrap_or_else(|e| panic!("schemas/json/{path}: {e}"));
                let schema: Value = serde_json::from_str(&text).expect("a schema is JSON");
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("schemas/json/{path} is not a schema: {e}"))
            });
            for error in validator.iter_errors(&e.payload) {
                failures.push(format!(
                    "schemas/fixtures/{name}, event {}: {error} (at {}) against schemas/json/{path}",
                    i + 1,
                    error.instance_path()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_schemas_refuse_what_the_decoder_refuses() {
    let schema = |path: &str| -> jsonschema::Validator {
        let text = std::fs::read_to_string(json::dir().join(path)).expect("schema");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&value)
            .expect("a schema")
    };
    let v0 = schema("events/order/OrderPlaced.v0.json");
    let v1 = schema("events/order/OrderPlaced.v1.json");
    let (_, legacy) = fixtures()
        .into_iter()
        .find(|(name, _)| name.ends_with("legacy_v0_placed_and_paid.json"))
        .expect("the legacy fixture");
    let placed = &legacy.events[0].payload;
    assert!(v0.is_valid(placed));
    assert!(!v1.is_valid(placed), "v1 needs a total");
    let mut with_total = placed.clone();
    with_total["total"] = Value::from(29500);
    assert!(v1.is_valid(&with_total));
    assert!(!v0.is_valid(&with_total), "v0 has no total");

    let opened = schema("events/wallet/WalletOpened.v1.json");
    let good =
        serde_json::json!({"wallet_id": Uuid::nil(), "owner": Uuid::nil(), "currency": "EUR"});
    assert!(opened.is_valid(&good));
    for bad in [
        serde_json::json!({"wallet_id": "nope", "owner": Uuid::nil(), "currency": "EUR"}),
        serde_json::json!({"wallet_id": Uuid::nil(), "owner": Uuid::nil(), "currency": "eur"}),
        serde_json::json!({"wallet_id": Uuid::nil(), "owner": Uuid::nil()}),
        serde_json::json!({"type": "WalletOpened", "wallet_id": Uuid::nil(), "owner": Uuid::nil(), "currency": "EUR"}),
    ] {
        assert!(!opened.is_valid(&bad), "{bad}");
    }
}
