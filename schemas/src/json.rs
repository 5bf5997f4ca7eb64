//! JSON Schemas of every stored event (per type and version) and of every command, generated
//! from the domain types with `schemars` and committed under `schemas/json/`:
//!
//! ```text
//! json/index.json                                   every file below, with its source
//! json/events/<stream_type>/<EventType>.v<N>.json   the stored payload of version N
//! json/commands/<aggregate>/<Variant>.json          a domain command's fields
//! ```
//!
//! An event schema describes the stored payload exactly: the `type` tag of the domain enum
//! is not in it (it is the `event_type` column). The current version of each type is
//! generated from its domain enum variant; an older version from its legacy type in
//! [`crate::upcast`] when there is one, else it is frozen: kept as committed when the version
//! was bumped. [`drift`] compares the committed files with the Rust types (the
//! `committed_json_schemas_match_the_rust_types` test) and [`write`] regenerates them
//! ([`REGENERATE`]).

use crate::registry;
use cqrs_es::Aggregate;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The command that rewrites `schemas/json` from the Rust types.
pub const REGENERATE: &str = "cargo run -p chronicle-schemas --bin gen-json-schemas";

/// Where the committed schemas live (`schemas/json`).
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("json")
}

/// What the Rust types say `schemas/json` should hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// Generated files by path relative to `schemas/json`.
    pub files: BTreeMap<String, Value>,
    /// Schemas of older versions without a Rust type: they must exist as committed.
    pub frozen: BTreeSet<String>,
}

/// A variant's name and the schema of its fields.
type Fields = Vec<(String, Map<String, Value>)>;

/// A domain enum: (aggregate type, Rust path, variants).
type EnumSchemas = (&'static str, String, Vec<Variant>);

/// One variant of a domain enum, as a standalone schema of its stored fields.
struct Variant {
    name: String,
    schema: Value,
}

fn root_schema<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The `#/$defs/...` names `value` refers to.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix("#/$defs/") {
                            out.insert(name.to_owned());
                        }
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// A standalone schema: `body` with the definitions of `root` it needs, and a title.
fn standalone(root: &Value, mut body: Map<String, Value>, title: &str, about: Value) -> Value {
    let defs = root.get("$defs").and_then(Value::as_object);
    let mut needed = BTreeSet::new();
    refs(&Value::Object(body.clone()), &mut needed);
    let mut included = Map::new();
    while let Some(name) = needed.pop_first() {
        if included.contains_key(&name) {
            continue;
        }
        if let Some(def) = defs.and_then(|d| d.get(&name)) {
            refs(def, &mut needed);
            included.insert(name, def.clone());
        }
    }
    body.remove("$schema");
    body.remove("$defs");
    body.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    body.insert("title".into(), title.into());
    body.insert("x-chronicle".into(), about);
    if !included.is_empty() {
        body.insert("$defs".into(), Value::Object(included));
    }
    Value::Object(body)
}

/// The variants of an internally tagged enum (`#[serde(tag = "type")]`): each variant's
/// fields without the tag.
fn tagged_variants(root: &Value) -> Result<Fields, String> {
    let one_of = root
        .get("oneOf")
        .and_then(Value::as_array)
        .ok_or("an event enum schema without oneOf")?;
    one_of
        .iter()
        .map(|v| {
            let mut body = v.as_object().cloned().ok_or("a variant is not an object")?;
            let props = body
                .get_mut("properties")
                .and_then(Value::as_object_mut)
                .ok_or("a variant without properties")?;
            let tag = props
                .remove("type")
                .ok_or("a variant without its type tag")?;
            let name = tag
                .get("const")
                .or_else(|| tag.get("enum").and_then(|e| e.get(0)))
                .and_then(Value::as_str)
                .ok_or("a type tag without its name")?
                .to_owned();
            if let Some(required) = body.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|r| r != "type");
                if required.is_empty() {
                    body.remove("required");
                }
            }
            Ok((name, body))
        })
        .collect()
}

/// The variants of an externally tagged enum (the commands, which have no serde form of
/// their own): each variant's fields; a unit variant has none.
fn external_variants(root: &Value) -> Result<Fields, String> {
    let one_of = root
        .get("oneOf")
        .and_then(Value::as_array)
        .ok_or("a command enum schema without oneOf")?;
    let mut out = Vec::new();
    for v in one_of {
        let description = v.get("description").cloned();
        let with_description = |mut body: Map<String, Value>| {
            if let Some(d) = &description {
                body.insert("description".into(), d.clone());
            }
            body
        };
        let no_fields = || {
            let mut body = Map::new();
            body.insert("type".into(), "object".into());
            body.insert("properties".into(), json!({}));
            body.insert("additionalProperties".into(), false.into());
            body
        };
        if let Some(name) = v.get("const").and_then(Value::as_str) {
            out.push((name.to_owned(), with_description(no_fields())));
        } else if let Some(names) = v.get("enum").and_then(Value::as_array) {
            for name in names.iter().filter_map(Value::as_str) {
                out.push((name.to_owned(), with_description(no_fields())));
            }
        } else {
            let props = v
                .get("properties")
                .and_then(Value::as_object)
                .filter(|p| p.len() == 1)
                .ok_or("a command variant that is neither a name nor one field")?;
            let (name, inner) = props.iter().next().ok_or("an empty command variant")?;
            let body = inner
                .as_object()
                .cloned()
                .ok_or("a command variant's fields are not an object")?;
            out.push((name.clone(), with_description(body)));
        }
    }
    Ok(out)
}

/// `domain::<module>::<Type>`: the path the workspace uses (the module is the aggregate type).
fn rust_path(aggregate: &str, type_name: &str) -> String {
    format!("domain::{aggregate}::{type_name}")
}

fn events_of<A>() -> Result<EnumSchemas, String>
where
    A: Aggregate,
    A::Event: JsonSchema,
{
    let root = root_schema::<A::Event>();
    let rust = rust_path(A::TYPE, &A::Event::schema_name());
    let variants = tagged_variants(&root)
        .map_err(|e| format!("{rust}: {e}"))?
        .into_iter()
        .map(|(name, body)| {
            let about = json!({"stream_type": A::TYPE, "event_type": name, "source": format!("{rust}::{name}")});
            Variant {
                schema: standalone(&root, body, &name, about),
                name,
            }
        })
        .collect();
    Ok((A::TYPE, rust, variants))
}

fn commands_of<A>() -> Result<EnumSchemas, String>
where
    A: Aggregate,
    A::Command: JsonSchema,
{
    let root = root_schema::<A::Command>();
    let rust = rust_path(A::TYPE, &A::Command::schema_name());
    let variants = external_variants(&root)
        .map_err(|e| format!("{rust}: {e}"))?
        .into_iter()
        .map(|(name, body)| {
            let title = format!("{}::{name}", A::Command::schema_name());
            let about =
                json!({"aggregate": A::TYPE, "command": name, "source": format!("{rust}::{name}")});
            Variant {
                schema: standalone(&root, body, &title, about),
                name,
            }
        })
        .collect();
    Ok((A::TYPE, rust, variants))
}

/// Every aggregate's event enum: (stream type, Rust path, variants).
fn all_events() -> Result<Vec<EnumSchemas>, String> {
    use domain::{account, device, escrow, order, pot, wallet};
    Ok(vec![
        events_of::<account::Account>()?,
        events_of::<wallet::Wallet>()?,
        events_of::<order::Order>()?,
        events_of::<escrow::Escrow>()?,
        events_of::<pot::Pot>()?,
        events_of::<device::Device>()?,
    ])
}

/// Every aggregate's command enum: (aggregate type, Rust path, variants).
fn all_commands() -> Result<Vec<EnumSchemas>, String> {
    use domain::{account, device, escrow, order, pot, wallet};
    Ok(vec![
        commands_of::<account::Account>()?,
        commands_of::<wallet::Wallet>()?,
        commands_of::<order::Order>()?,
        commands_of::<escrow::Escrow>()?,
        commands_of::<pot::Pot>()?,
        commands_of::<device::Device>()?,
    ])
}

/// Older stored shapes that have a Rust type: (event type, version, schema, Rust path).
fn legacy() -> Vec<(&'static str, i32, Value, &'static str)> {
    vec![(
        "OrderPlaced",
        0,
        root_schema::<crate::upcast::OrderPlacedV0>(),
        "schemas::upcast::OrderPlacedV0",
    )]
}

/// The schema of a sealed field: the sealed text, or the field's own form (in the clear, as
/// readers see it once opened, or as erased).
fn sealed(field: &Value) -> Value {
    let mut own = field.as_object().cloned().unwrap_or_default();
    let description = own.remove("description");
    let mut out = Map::new();
    if let Some(Value::String(d)) = description {
        out.insert(
            "description".into(),
            format!(
                "{d} Stored sealed (schemas::personal): `sealed:v1:` and the base64 of the \
                 nonce and AES-256-GCM ciphertext; in the clear once a reader opened it."
            )
            .into(),
        );
    }
    out.insert(
        "anyOf".into(),
        json!([{"type": "string", "pattern": "^sealed:v1:[A-Za-z0-9+/]+$"}, Value::Object(own)]),
    );
    Value::Object(out)
}

/// The stored form of `event_type` version `version`: the sealed fields' schemas replaced.
fn stored_form(event_type: &str, version: i32, mut schema: Value) -> Value {
    // Fields stored sealed from crate::personal::SEALED_VERSION on: the stored value is
    // `sealed:v1:<base64>` rather than the domain's form (readers open it before decoding).
    if version < crate::personal::SEALED_VERSION {
        return schema;
    }
    for (name, fields) in crate::personal::sealed_event_fields() {
        if name != event_type {
            continue;
        }
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            for field in fields {
                if let Some(p) = props.get_mut(field) {
                    *p = sealed(p);
                }
            }
        }
    }
    schema
}

/// The (stream type, event type) pairs of the domain's event enums.
pub fn domain_event_types() -> Result<Vec<(&'static str, String)>, String> {
    Ok(all_events()?
        .into_iter()
        .flat_map(|(stream, _, variants)| variants.into_iter().map(move |v| (stream, v.name)))
        .collect())
}

/// Differences between the domain's event enums and [`registry::EVENT_TYPES`].
pub fn registry_mismatches() -> Result<Vec<String>, String> {
    let domain: BTreeSet<(&str, String)> = domain_event_types()?.into_iter().collect();
    let registered: BTreeSet<(&str, String)> = registry::EVENT_TYPES
        .iter()
        .map(|t| (t.stream_type, t.name.to_owned()))
        .collect();
    let mut out = Vec::new();
    for (stream, name) in domain.difference(&registered) {
        out.push(format!(
            "the {stream} event {name} is not registered: add \
             EventType::new(\"{stream}\", \"{name}\", 1) to schemas::registry::EVENT_TYPES"
        ));
    }
    for (stream, name) in registered.difference(&domain) {
        out.push(format!(
            "schemas::registry::EVENT_TYPES has {stream} event {name}, which no domain event \
             enum has"
        ));
    }
    Ok(out)
}

/// The path of the schema of `event_type` version `version`, relative to `schemas/json`.
pub fn event_schema_path(stream_type: &str, event_type: &str, version: i32) -> String {
    format!("events/{stream_type}/{event_type}.v{version}.json")
}

/// What `schemas/json` should hold according to the Rust types and the registry.
pub fn expected() -> Result<Expected, String> {
    let mismatches = registry_mismatches()?;
    if !mismatches.is_empty() {
        return Err(mismatches.join("\n"));
    }
    let mut out = Expected::default();
    let mut current: BTreeMap<String, (Value, String)> = BTreeMap::new();
    for (_, rust, variants) in all_events()? {
        for v in variants {
            current.insert(v.name.clone(), (v.schema, format!("{rust}::{}", v.name)));
        }
    }
    let legacy = legacy();
    let mut events_index = Vec::new();
    for t in registry::EVENT_TYPES {
        let mut versions = Vec::new();
        for version in registry::readable_versions(t.name) {
            let path = event_schema_path(t.stream_type, t.name, version);
            let source = if version == t.current {
                let (schema, source) = current
                    .get(t.name)
                    .cloned()
                    .ok_or_else(|| format!("no domain variant for {}", t.name))?;
                let schema = stored_form(t.name, version, schema);
                out.files
                    .insert(path.clone(), with_version(schema, version));
                source
            } else if let Some((_, _, root, rust)) = legacy
                .iter()
                .find(|(name, v, _, _)| *name == t.name && *v == version)
            {
                let body = root.as_object().cloned().unwrap_or_default();
                let about =
                    json!({"stream_type": t.stream_type, "event_type": t.name, "source": rust});
                let schema = stored_form(t.name, version, standalone(root, body, t.name, about));
                out.files
                    .insert(path.clone(), with_version(schema, version));
                (*rust).to_owned()
            } else {
                out.frozen.insert(path.clone());
                "frozen: kept as committed when the version was bumped".to_owned()
            };
            versions.push(json!({"version": version, "schema": path, "source": source}));
        }
        events_index.push(json!({
            "stream_type": t.stream_type,
            "event_type": t.name,
            "current_version": t.current,
            "versions": versions,
        }));
    }
    let mut commands_index = Vec::new();
    for (aggregate, rust, variants) in all_commands()? {
        for v in variants {
            let path = format!("commands/{aggregate}/{}.json", v.name);
            commands_index.push(json!({
                "aggregate": aggregate,
                "command": v.name,
                "source": format!("{rust}::{}", v.name),
                "schema": path,
            }));
            out.files.insert(path, v.schema);
        }
    }
    out.files.insert(
        "index.json".into(),
        json!({
            "description": "The JSON Schemas of Chronicle's stored events (each type and \
                            readable version) and commands. Generated from the Rust types; \
                            do not edit. See docs/schemas.md.",
            "regenerate": REGENERATE,
            "events": events_index,
            "commands": commands_index,
        }),
    );
    Ok(out)
}

fn with_version(mut schema: Value, version: i32) -> Value {
    if let Some(about) = schema.get_mut("x-chronicle").and_then(Value::as_object_mut) {
        about.insert("schema_version".into(), version.into());
    }
    schema
}

/// `value` with every object's keys in sorted order, whatever map type serde_json uses.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The committed text of a schema: sorted keys, pretty-printed, one final newline.
pub fn text(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    s.push('\n');
    s
}

/// Every `.json` file under `dir`, relative to it, with `/` separators.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(at) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                if let Ok(rel) = path.strip_prefix(root) {
                    let parts: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    out.push(parts.join("/"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// How the files under `dir` differ from the Rust types: one line per drifted, missing or
/// unexpected file. Files are compared as JSON values, so formatting does not matter.
pub fn drift(dir: &Path) -> Result<Vec<String>, String> {
    let expected = expected()?;
    let mut problems = Vec::new();
    for (path, want) in &expected.files {
        let shown = format!("schemas/json/{path}");
        match std::fs::read_to_string(dir.join(path)) {
            Err(_) => problems.push(format!("{shown}: missing")),
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Err(e) => problems.push(format!("{shown}: not JSON ({e})")),
                Ok(have) if have != *want => {
                    problems.push(format!("{shown}: differs from the Rust types"))
                }
                Ok(_) => {}
            },
        }
    }
    for path in &expected.frozen {
        let ok = std::fs::read_to_string(dir.join(path))
            .ok()
            .is_some_and(|t| serde_json::from_str::<Value>(&t).is_ok());
        if !ok {
            problems.push(format!(
                "schemas/json/{path}: missing; an older version's schema is kept as committed \
                 when its version is bumped (restore it from git)"
            ));
        }
    }
    for path in files_under(dir) {
        if !expected.files.contains_key(&path) && !expected.frozen.contains(&path) {
            problems.push(format!(
                "schemas/json/{path}: no registered event version or command has this schema"
            ));
        }
    }
    Ok(problems)
}

/// Rewrites `dir` from the Rust types: writes what changed, removes files no event version
/// or command has, keeps frozen ones. Returns what it did, one line per file.
pub fn write(dir: &Path) -> Result<Vec<String>, String> {
    let expected = expected()?;
    let mut done = Vec::new();
    for (path, value) in &expected.files {
        let target = dir.join(path);
        let want = text(value);
        if std::fs::read_to_string(&target).ok().as_deref() == Some(want.as_str()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&target, want).map_err(|e| format!("{}: {e}", target.display()))?;
        done.push(format!("wrote schemas/json/{path}"));
    }
    for path in files_under(dir) {
        if !expected.files.contains_key(&path) && !expected.frozen.contains(&path) {
            std::fs::remove_file(dir.join(&path)).map_err(|e| format!("{path}: {e}"))?;
            done.push(format!("removed schemas/json/{path}"));
        }
    }
    for path in &expected.frozen {
        if !dir.join(path).exists() {
            return Err(format!(
                "schemas/json/{path} is missing and cannot be generated (an older version \
                 without a Rust type): restore it from git"
            ));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_schemas_describe_the_payload_without_the_type_tag() {
        let expected = expected().expect("generates");
        let opened = &expected.files["events/wallet/WalletOpened.v1.json"];
        assert_eq!(opened["title"], "WalletOpened");
        assert_eq!(opened["x-chronicle"]["schema_version"], 1);
        assert!(opened["properties"].get("type").is_none());
        assert_eq!(
            opened["required"],
            json!(["wallet_id", "owner", "currency"])
        );
        assert_eq!(opened["additionalProperties"], false);
        assert_eq!(opened["$defs"]["Currency"]["type"], "string");
        // A variant without fields is an empty object.
        let closed = &expected.files["events/wallet/WalletClosed.v1.json"];
        assert_eq!(closed["properties"], json!({}));
        assert!(closed.get("$defs").is_none());
    }

    #[test]
    fn command_schemas_hold_the_fields_of_each_variant() {
        let expected = expected().expect("generates");
        let open = &expected.files["commands/account/Open.json"];
        assert_eq!(open["title"], "AccountCommand::Open");
        assert!(open["properties"].get("email").is_some());
        let approve = &expected.files["commands/account/ApproveKyc.json"];
        assert_eq!(approve["properties"], json!({}));
    }

    #[test]
    fn the_legacy_order_placed_has_no_total() {
        let expected = expected().expect("generates");
        let v0 = &expected.files["events/order/OrderPlaced.v0.json"];
        let v1 = &expected.files["events/order/OrderPlaced.v1.json"];
        assert!(v0["properties"].get("total").is_none());
        assert!(v1["properties"].get("total").is_some());
        assert_eq!(v0["x-chronicle"]["schema_version"], 0);
    }
}
