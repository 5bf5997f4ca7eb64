//! Personal data in the log: sealed with a key per account, erased by deleting the key.
//!
//! The personal fields of an event (an account's e-mail, display name, birth date and KYC
//! document reference, a contribution's message) are stored sealed: AES-256-GCM under the
//! key of the account they belong to, held in `personal_data_keys`. An event stored this way
//! has schema version [`SEALED_VERSION`]; version 1 is the same payload in the clear.
//! Snapshots of accounts and pots are sealed the same way.
//!
//! `PersonalDataErased` deletes the account's key (a trigger, in the same transaction as the
//! event, see `migrations/0008_personal_data.sql`). From then on the sealed fields cannot be
//! read by anyone: readers get [`ERASED`] (or null for a date) in their place, while the
//! stored events, and so the hash chain over them, stay exactly as they were.
//!
//! Readers of the log open the sealed fields of a batch with one key lookup ([`open`]);
//! writers seal before they append ([`seal_request`]). The event fan-out publishes the stored,
//! sealed form.

use crate::{NewEvent, RecordedEvent};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What a reader sees in place of an erased personal text.
pub const ERASED: &str = "[erased]";

/// The stored schema version of an event whose personal fields are sealed.
pub const SEALED_VERSION: i32 = 2;

/// How a sealed value starts in the stored payload.
const PREFIX: &str = "sealed:v1:";

/// Which account's key seals a value.
#[derive(Debug, Clone, Copy)]
enum KeyOf {
    /// The stream's own id (account events and snapshots).
    Stream,
    /// The account id in this field of the same object.
    Field(&'static str),
}

/// What a reader gets for a field whose key is gone.
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// The text [`ERASED`].
    Marker,
    /// JSON null (a date: no text fits its type).
    Null,
}

/// The personal fields of one kind of object.
struct Rule {
    stream_type: &'static str,
    /// The event type, or `None` for the stream's snapshot.
    event_type: Option<&'static str>,
    /// `Some(array)`: the fields are in each element of this array field (a pot's
    /// contributions), else in the object itself.
    within: Option<&'static str>,
    key: KeyOf,
    fields: &'static [(&'static str, Gone)],
}

const ACCOUNT_SNAPSHOT_FIELDS: &[(&str, Gone)] = &[
    ("email", Gone::Marker),
    ("display_name", Gone::Marker),
    ("birth_date", Gone::Null),
    ("kyc_document_ref", Gone::Marker),
];

const RULES: &[Rule] = &[
    Rule {
        stream_type: "account",
        event_type: Some("AccountOpened"),
        within: None,
        key: KeyOf::Stream,
        fields: &[
            ("email", Gone::Marker),
            ("display_name", Gone::Marker),
            ("birth_date", Gone::Null),
        ],
    },
    Rule {
        stream_type: "account",
        event_type: Some("ProfileUpdated"),
        within: None,
        key: KeyOf::Stream,
        fields: &[("display_name", Gone::Marker)],
    },
    Rule {
        stream_type: "account",
        event_type: Some("KycSubmitted"),
        within: None,
        key: KeyOf::Stream,
        fields: &[("document_ref", Gone::Marker)],
    },
    Rule {
        stream_type: "pot",
        event_type: Some("ContributionReceived"),
        within: None,
        key: KeyOf::Field("contributor"),
        fields: &[("message", Gone::Marker)],
    },
    Rule {
        stream_type: "account",
        event_type: None,
        within: None,
        key: KeyOf::Stream,
        fields: ACCOUNT_SNAPSHOT_FIELDS,
    },
    Rule {
        stream_type: "pot",
        event_type: None,
        within: Some("contributions"),
        key: KeyOf::Field("contributor"),
        fields: &[("message", Gone::Marker)],
    },
];

fn rule(stream_type: &str, event_type: Option<&str>) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.stream_type == stream_type && r.event_type == event_type)
}

/// The personal fields of each event type that has any: (event type, fields).
pub fn sealed_event_fields() -> impl Iterator<Item = (&'static str, Vec<&'static str>)> {
    RULES.iter().filter_map(|r| {
        r.event_type
            .map(|e| (e, r.fields.iter().map(|(f, _)| *f).collect()))
    })
}

/// Why sealed data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The key table could not be read.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A sealed value does not open under its account's key: it was changed or moved.
    #[error("the sealed field {field} at position {position} does not open: {reason}")]
    Corrupt {
        /// The event's position (0 for a snapshot).
        position: i64,
        /// The field.
        field: String,
        /// What failed.
        reason: &'static str,
    },
}

impl From<OpenError> for sqlx::Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Db(e) => e,
            other => sqlx::Error::Decode(Box::new(other)),
        }
    }
}

/// Account keys as the key table holds them: `None` once erased (or never made).
#[derive(Debug, Default)]
pub struct Keys(HashMap<Uuid, Option<[u8; 32]>>);

impl Keys {
    fn get(&self, account: Uuid) -> Option<&[u8; 32]> {
        self.0.get(&account).and_then(Option::as_ref)
    }
}

/// The keys of `accounts` (erased and unknown accounts map to `None`).
pub async fn keys<'e, E>(executor: E, accounts: &[Uuid]) -> Result<Keys, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    if accounts.is_empty() {
        return Ok(Keys::default());
    }
    let rows: Vec<(Uuid, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT account_id, key FROM personal_data_keys WHERE account_id = ANY($1)")
            .bind(accounts)
            .fetch_all(executor)
            .await?;
    let mut keys = Keys(accounts.iter().map(|a| (*a, None)).collect());
    for (account, key) in rows {
        let key = key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
        keys.0.insert(account, key);
    }
    Ok(keys)
}

/// The keys to seal with: made for accounts that have none yet, never again for an erased
/// account (whose key row stays, empty, as the record of the erasure).
pub async fn keys_for_sealing(pool: &sqlx::PgPool, accounts: &[Uuid]) -> Result<Keys, sqlx::Error> {
    if accounts.is_empty() {
        return Ok(Keys::default());
    }
    let fresh: Vec<Vec<u8>> = accounts
        .iter()
        .map(|_| {
            let mut k = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
            k.to_vec()
        })
        .collect();
    sqlx::query(
        "INSERT INTO personal_data_keys (account_id, key) \
         SELECT * FROM UNNEST($1::uuid[], $2::bytea[]) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(accounts)
    .bind(&fresh)
    .execute(pool)
    .await?;
    keys(pool, accounts).await
}

/// The accounts whose keys sealing or opening `object` under `rule` needs.
fn accounts_of(rule: &Rule, stream_id: Uuid, object: &Value, out: &mut HashSet<Uuid>) {
    for target in targets(rule, object) {
        if let Some(account) = key_account(rule.key, stream_id, target) {
            if rule
                .fields
                .iter()
                .any(|(f, _)| target.get(*f).is_some_and(|v| !v.is_null()))
            {
                out.insert(account);
            }
        }
    }
}

fn targets<'a>(rule: &Rule, object: &'a Value) -> Vec<&'a Value> {
    match rule.within {
        None => vec![object],
        Some(array) => object
            .get(array)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
    }
}

fn targets_mut<'a>(rule: &Rule, object: &'a mut Value) -> Vec<&'a mut Value> {
    match rule.within {
        None => vec![object],
        Some(array) => object
            .get_mut(array)
            .and_then(Value::as_array_mut)
            .map(|a| a.iter_mut().collect())
            .unwrap_or_default(),
    }
}

fn key_account(key: KeyOf, stream_id: Uuid, target: &Value) -> Option<Uuid> {
    match key {
        KeyOf::Stream => Some(stream_id),
        KeyOf::Field(f) => target.get(f)?.as_str()?.parse().ok(),
    }
}

fn aad(account: Uuid, field: &str) -> Vec<u8> {
    let mut aad = b"chronicle personal data v1\0".to_vec();
    aad.extend_from_slice(account.as_bytes());
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn seal_value(key: &[u8; 32], account: Uuid, field: &str, value: &Value) -> Value {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let plain = serde_json::to_vec(value).unwrap_or_default();
    let aad = aad(account, field);
    // Encryption with a valid key and nonce cannot fail.
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&sealed);
    Value::String(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    ))
}

fn open_value(
    key: &[u8; 32],
    account: Uuid,
    field: &str,
    sealed: &str,
) -> Result<Value, &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(sealed)
        .map_err(|_| "not base64")?;
    if bytes.len() < 12 + 16 {
        return Err("too short");
    }
    let (nonce, body) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| "too short")?;
    let aad = aad(account, field);
    let plain = Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map_err(|_| "authentication failed")?;
    serde_json::from_slice(&plain).map_err(|_| "not JSON")
}

fn gone(g: Gone) -> Value {
    match g {
        Gone::Marker => Value::String(ERASED.to_owned()),
        Gone::Null => Value::Null,
    }
}

/// Calls `f` with each personal field present in `object` under `rule`: the account whose key
/// seals it, the field's name, what it reads as once erased, and the value.
fn each_field(
    rule: &Rule,
    stream_id: Uuid,
    object: &mut Value,
    mut f: impl FnMut(Uuid, &'static str, Gone, &mut Value) -> Result<(), OpenError>,
) -> Result<(), OpenError> {
    for target in targets_mut(rule, object) {
        let Some(account) = key_account(rule.key, stream_id, target) else {
            continue;
        };
        let Some(fields) = target.as_object_mut() else {
            continue;
        };
        for (field, g) in rule.fields {
            if let Some(value) = fields.get_mut(*field) {
                f(account, field, *g, value)?;
            }
        }
    }
    Ok(())
}

/// Seals the personal fields of `object` in place (null fields stay null). An erased
/// account's fields are stored as erased.
fn seal_object(rule: &Rule, stream_id: Uuid, object: &mut Value, keys: &Keys) {
    let sealed = each_field(rule, stream_id, object, |account, field, g, value| {
        if !value.is_null() {
            *value = match keys.get(account) {
                Some(key) => seal_value(key, account, field, value),
                None => gone(g),
            };
        }
        Ok(())
    });
    debug_assert!(sealed.is_ok(), "sealing never fails");
}

/// Opens the sealed fields of `object` in place: the value, or the erased form once the key
/// is gone.
fn open_object(
    rule: &Rule,
    stream_id: Uuid,
    position: i64,
    object: &mut Value,
    keys: &Keys,
) -> Result<(), OpenError> {
    each_field(rule, stream_id, object, |account, field, g, value| {
        let Some(sealed) = value.as_str().and_then(|s| s.strip_prefix(PREFIX)) else {
            return Ok(());
        };
        *value = match keys.get(account) {
            None => gone(g),
            Some(key) => {
                open_value(key, account, field, sealed).map_err(|reason| OpenError::Corrupt {
                    position,
                    field: field.to_owned(),
                    reason,
                })?
            }
        };
        Ok(())
    })
}

/// A stream's events and snapshot, about to be appended: seals what is personal.
pub struct ToSeal<'a> {
    /// The aggregate type.
    pub stream_type: &'a str,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The stream's new events.
    pub events: &'a mut [NewEvent],
    /// The stream's new snapshot state, if one is taken.
    pub snapshots: Vec<&'a mut Value>,
}

/// Seals the personal fields of events and snapshots about to be appended (with keys made
/// as needed), and marks each personal event [`SEALED_VERSION`]. Writes that carry nothing
/// personal cost nothing.
pub async fn seal_request(
    pool: &sqlx::PgPool,
    streams: &mut [ToSeal<'_>],
) -> Result<(), sqlx::Error> {
    let mut accounts = HashSet::new();
    for s in streams.iter() {
        for e in s.events.iter() {
            if let Some(rule) = rule(s.stream_type, Some(&e.event_type)) {
                accounts_of(rule, s.stream_id, &e.payload, &mut accounts);
            }
        }
        if let Some(rule) = rule(s.stream_type, None) {
            for state in &s.snapshots {
                accounts_of(rule, s.stream_id, state, &mut accounts);
            }
        }
    }
    let keys = if accounts.is_empty() {
        Keys::default()
    } else {
        let accounts: Vec<Uuid> = accounts.into_iter().collect();
        keys_for_sealing(pool, &accounts).await?
    };
    for s in streams.iter_mut() {
        for e in s.events.iter_mut() {
            if let Some(rule) = rule(s.stream_type, Some(&e.event_type)) {
                seal_object(rule, s.stream_id, &mut e.payload, &keys);
                e.schema_version = e.schema_version.max(SEALED_VERSION);
            }
        }
        if let Some(rule) = rule(s.stream_type, None) {
            for state in s.snapshots.iter_mut() {
                seal_object(rule, s.stream_id, state, &keys);
            }
        }
    }
    Ok(())
}

/// Opens the sealed personal fields of stored events in place, with one key lookup for the
/// batch; events without sealed fields are not touched.
pub async fn open<'e, E>(executor: E, events: &mut [RecordedEvent]) -> Result<(), OpenError>
where
    E: sqlx::PgExecutor<'e>,
{
    Opener::default().open(executor, events).await
}

/// Opens events read one batch after another, looking up each account's key once.
#[derive(Debug, Default)]
pub struct Opener {
    keys: Keys,
}

impl Opener {
    /// Opens the sealed personal fields of `events` in place, looking up only the keys it
    /// has not seen yet.
    pub async fn open<'e, E>(
        &mut self,
        executor: E,
        events: &mut [RecordedEvent],
    ) -> Result<(), OpenError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let sealed = |e: &RecordedEvent| {
            if e.schema_version < SEALED_VERSION {
                return None;
            }
            rule(&e.stream_type, Some(&e.event_type))
        };
        let mut accounts = HashSet::new();
        for e in events.iter() {
            if let Some(rule) = sealed(e) {
                accounts_of(rule, e.stream_id, &e.payload, &mut accounts);
            }
        }
        accounts.retain(|a| !self.keys.0.contains_key(a));
        if !accounts.is_empty() {
            let accounts: Vec<Uuid> = accounts.into_iter().collect();
            self.keys.0.extend(keys(executor, &accounts).await?.0);
        }
        for e in events.iter_mut() {
            if let Some(rule) = sealed(e) {
                open_object(rule, e.stream_id, e.position, &mut e.payload, &self.keys)?;
            }
        }
        Ok(())
    }
}

/// Opens a stored snapshot's sealed personal fields in place.
pub async fn open_snapshot<'e, E>(
    executor: E,
    stream_type: &str,
    stream_id: Uuid,
    state: &mut Value,
) -> Result<(), OpenError>
where
    E: sqlx::PgExecutor<'e>,
{
    let Some(rule) = rule(stream_type, None) else {
        return Ok(());
    };
    let mut accounts = HashSet::new();
    accounts_of(rule, stream_id, state, &mut accounts);
    if accounts.is_empty() {
        return Ok(());
    }
    let accounts: Vec<Uuid> = accounts.into_iter().collect();
    let keys = keys(executor, &accounts).await?;
    open_object(rule, stream_id, 0, state, &keys)
}

/// Whether a payload still holds a sealed value in a personal field (it was not opened).
pub fn still_sealed(stream_type: &str, event_type: &str, payload: &Value) -> bool {
    let Some(rule) = rule(stream_type, Some(event_type)) else {
        return false;
    };
    targets(rule, payload).into_iter().any(|t| {
        rule.fields.iter().any(|(f, _)| {
            t.get(*f)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(PREFIX))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys_with(account: Uuid) -> Keys {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
        Keys([(account, Some(k))].into_iter().collect())
    }

    #[test]
    fn sealed_fields_open_with_the_key_and_read_as_erased_without_it() {
        let account = Uuid::now_v7();
        let rule = rule("account", Some("AccountOpened")).expect("rule");
        let plain = json!({"account_id": account, "subject": "s", "email": "a@b.c",
                           "display_name": "Ann", "birth_date": "1990-02-03", "country": null});
        let keys = keys_with(account);
        let mut stored = plain.clone();
        seal_object(rule, account, &mut stored, &keys);
        for f in ["email", "display_name", "birth_date"] {
            let s = stored[f].as_str().expect("sealed text");
            assert!(s.starts_with(PREFIX), "{f} sealed: {s}");
            assert!(!s.contains("Ann") && !s.contains("a@b.c"));
        }
        assert_eq!(stored["subject"], "s");
        assert!(stored["country"].is_null());
        assert!(still_sealed("account", "AccountOpened", &stored));

        let mut opened = stored.clone();
        open_object(rule, account, 1, &mut opened, &keys).expect("opens");
        assert_eq!(opened, plain);

        let mut erased = stored.clone();
        open_object(rule, account, 1, &mut erased, &Keys::default()).expect("erased");
        assert_eq!(erased["email"], ERASED);
        assert_eq!(erased["display_name"], ERASED);
        assert!(erased["birth_date"].is_null());
        assert!(!still_sealed("account", "AccountOpened", &erased));
    }

    #[test]
    fn a_changed_or_moved_sealed_value_does_not_open() {
        let account = Uuid::now_v7();
        let rule = rule("account", Some("AccountOpened")).expect("rule");
        let keys = keys_with(account);
        let mut stored = json!({"email": "a@b.c", "display_name": "Ann"});
        seal_object(rule, account, &mut stored, &keys);
        // The e-mail's sealed value moved into the display name: the field is bound.
        let mut moved = stored.clone();
        moved["display_name"] = stored["email"].clone();
        assert!(matches!(
            open_object(rule, account, 7, &mut moved, &keys),
            Err(OpenError::Corrupt { position: 7, .. })
        ));
        // Another account's key does not open it.
        let other = Uuid::now_v7();
        let mut keys2 = keys_with(other);
        keys2.0.insert(account, keys_with(other).0[&other]);
        let mut copy = stored.clone();
        assert!(open_object(rule, account, 7, &mut copy, &keys2).is_err());
        // One flipped character.
        let mut flipped = stored.clone();
        let s = flipped["email"].as_str().expect("text").to_owned();
        let last = s.chars().last().expect("char");
        let swap = if last == 'A' { 'B' } else { 'A' };
        flipped["email"] = Value::String(format!("{}{swap}", &s[..s.len() - 1]));
        assert!(open_object(rule, account, 7, &mut flipped, &keys).is_err());
    }

    #[test]
    fn pot_snapshots_seal_each_contribution_under_its_contributor() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rule = rule("pot", None).expect("rule");
        let mut keys = keys_with(a);
        keys.0.extend(keys_with(b).0);
        let plain = json!({"title": "t", "contributions": [
            {"contributor": a, "message": "from a"},
            {"contributor": b, "message": null},
            {"contributor": b, "message": "from b"}]});
        let mut stored = plain.clone();
        seal_object(rule, Uuid::now_v7(), &mut stored, &keys);
        assert!(stored["contributions"][0]["message"]
            .as_str()
            .is_some_and(|s| s.starts_with(PREFIX)));
        assert!(stored["contributions"][1]["message"].is_null());
        // b's key is erased: a's message still opens, b's reads as erased.
        keys.0.insert(b, None);
        let mut opened = stored.clone();
        open_object(rule, Uuid::nil(), 0, &mut opened, &keys).expect("opens");
        assert_eq!(opened["contributions"][0]["message"], "from a");
        assert!(opened["contributions"][1]["message"].is_null());
        assert_eq!(opened["contributions"][2]["message"], ERASED);
    }
}
