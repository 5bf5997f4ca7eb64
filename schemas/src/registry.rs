//! Which stored event types and schema versions this build reads, and how an older version's
//! payload becomes the current one (upcasting).
//!
//! Every read of the log goes through [`crate::RecordedEvent::decode`], which asks [`plan`]
//! what to do with an event's `(event_type, schema_version)`:
//!
//! - the current version: the payload is decoded as it is (no copy, one map lookup);
//! - an older version with a chain of [`Upcaster`]s up to the current one: the payload is
//!   copied once and rewritten step by step, then decoded;
//! - an unknown type, a version newer than the current one, or an older version without a
//!   complete chain: an error naming the type, version and position. Replay stops there;
//!   nothing is ever skipped.
//!
//! Bumping a version is two lines here: the new number in [`EVENT_TYPES`], and an
//! [`Upcaster`] from the previous version in [`UPCASTERS`] (see docs/schemas.md).

use serde_json::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

/// One stored event type and the schema version writers write today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// The aggregate type whose streams hold it (`account`, `wallet`, ...).
    pub stream_type: &'static str,
    /// The stored event type name (the `event_type` column).
    pub name: &'static str,
    /// The version writers store and readers decode directly.
    pub current: i32,
}

impl EventType {
    /// An event type of `stream_type` at version `current`.
    pub const fn new(stream_type: &'static str, name: &'static str, current: i32) -> Self {
        Self {
            stream_type,
            name,
            current,
        }
    }
}

/// Every stored event type. A domain event variant missing here, or a name here without a
/// variant, fails the `registry_matches_the_domain_events` test.
pub static EVENT_TYPES: &[EventType] = &[
    EventType::new("account", "AccountOpened", 2),
    EventType::new("account", "ProfileUpdated", 2),
    EventType::new("account", "KycSubmitted", 2),
    EventType::new("account", "KycApproved", 1),
    EventType::new("account", "KycRejected", 1),
    EventType::new("account", "AccountSuspended", 1),
    EventType::new("account", "AccountReinstated", 1),
    EventType::new("account", "AccountClosed", 1),
    EventType::new("account", "PersonalDataErased", 1),
    EventType::new("wallet", "WalletOpened", 1),
    EventType::new("wallet", "FundsDeposited", 1),
    EventType::new("wallet", "FundsWithdrawn", 1),
    EventType::new("wallet", "TransferSent", 1),
    EventType::new("wallet", "TransferReceived", 1),
    EventType::new("wallet", "WalletFrozen", 1),
    EventType::new("wallet", "WalletUnfrozen", 1),
    EventType::new("wallet", "WalletClosed", 1),
    EventType::new("wallet", "WalletDebited", 1),
    EventType::new("wallet", "WalletCredited", 1),
    EventType::new("order", "OrderPlaced", 1),
    EventType::new("order", "OrderPaid", 1),
    EventType::new("order", "OrderShipped", 1),
    EventType::new("order", "OrderDelivered", 1),
    EventType::new("order", "OrderCancelled", 1),
    EventType::new("order", "OrderRefunded", 1),
    EventType::new("escrow", "EscrowOpened", 1),
    EventType::new("escrow", "EscrowFunded", 1),
    EventType::new("escrow", "EscrowReleased", 1),
    EventType::new("escrow", "EscrowRefunded", 1),
    EventType::new("escrow", "DisputeRaised", 1),
    EventType::new("escrow", "DisputeResolved", 1),
    EventType::new("pot", "PotCreated", 1),
    EventType::new("pot", "ContributionReceived", 2),
    EventType::new("pot", "PotInvitationSent", 1),
    EventType::new("pot", "PotClosed", 1),
    EventType::new("pot", "PotPaidOut", 1),
    EventType::new("pot", "PotCancelled", 1),
    EventType::new("pot", "ContributionRefunded", 1),
    EventType::new("device", "DeviceRegistered", 1),
    EventType::new("device", "DeviceActivated", 1),
    EventType::new("device", "DeviceCredentialRotated", 1),
    EventType::new("device", "FirmwareUpdateScheduled", 1),
    EventType::new("device", "FirmwareUpdateApplied", 1),
    EventType::new("device", "FirmwareUpdateFailed", 1),
    EventType::new("device", "DeviceSuspended", 1),
    EventType::new("device", "DeviceDecommissioned", 1),
];

/// How a payload of version `from` becomes version `from + 1`.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Nothing to rewrite: the next version's decoder reads this version's payload as it is
    /// (a "v2 reader"). A chain of such steps costs nothing, not even a copy.
    Same,
    /// A pure function rewrites the payload; an `Err` stops replay with its reason.
    Map(fn(Value) -> Result<Value, String>),
}

/// One step of an event type's upcasting chain.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The stored event type name.
    pub event_type: &'static str,
    /// The version this step reads; it produces `from + 1`.
    pub from: i32,
    /// What it does.
    pub step: Step,
}

impl Upcaster {
    /// Version `from` of `event_type` is read as it is by the decoder of `from + 1`.
    pub const fn same(event_type: &'static str, from: i32) -> Self {
        Self {
            event_type,
            from,
            step: Step::Same,
        }
    }

    /// `upcast` rewrites version `from` of `event_type` into version `from + 1`.
    pub const fn map(
        event_type: &'static str,
        from: i32,
        upcast: fn(Value) -> Result<Value, String>,
    ) -> Self {
        Self {
            event_type,
            from,
            step: Step::Map(upcast),
        }
    }
}

/// Every upcasting step. For each event type the `from` versions must be consecutive and end
/// just below its current version (checked by `the_upcasting_chains_are_complete`).
pub static UPCASTERS: &[Upcaster] = &[
    // A legacy shape without the computed total; see `crate::upcast`.
    Upcaster::map("OrderPlaced", 0, crate::upcast::order_placed_v0_to_v1),
    // Version 2 stores the personal fields sealed (crate::personal); once a reader has
    // opened them, a version 2 payload has version 1's shape, so version 1 (in the clear)
    // reads as it is.
    Upcaster::same("AccountOpened", 1),
    Upcaster::same("ProfileUpdated", 1),
    Upcaster::same("KycSubmitted", 1),
    Upcaster::same("ContributionReceived", 1),
];

/// What to do with a stored `(event_type, schema_version)`.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// Decode the stored payload as it is.
    AsIs,
    /// Run these steps over a copy of the payload (at least one of them is a [`Step::Map`]),
    /// then decode.
    Upcast(&'static [Step]),
}

/// Why an event cannot be read by this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// No event type of that name is registered.
    UnknownType,
    /// The version is newer than the current one: written by a newer build.
    TooNew {
        /// The newest version this build reads.
        current: i32,
    },
    /// The version is older than any this build can upcast from.
    TooOld {
        /// The oldest version this build reads.
        oldest: i32,
    },
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::UnknownType => write!(
                f,
                "unknown event type: this build has no decoder for it \
                 (schemas::registry::EVENT_TYPES)"
            ),
            Unreadable::TooNew { current } => write!(
                f,
                "the schema version is newer than this build reads (up to {current}): \
                 written by a newer Chronicle, or not registered in schemas::registry"
            ),
            Unreadable::TooOld { oldest } => write!(
                f,
                "the schema version is older than any this build can upcast from \
                 (oldest {oldest}; schemas::registry::UPCASTERS)"
            ),
        }
    }
}

/// An event type as the reader sees it: its current version and its upcasting chain.
struct Known {
    current: i32,
    /// The oldest version with a complete chain to `current`.
    oldest: i32,
    /// `steps[i]` turns version `oldest + i` into `oldest + i + 1`.
    steps: &'static [Step],
}

/// FNV-1a: the registry's keys are a few dozen short names of our own, so a hash far
/// cheaper than SipHash keeps the lookup a small part of decoding (it runs for every event).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type Names<V> = HashMap<&'static str, V, std::hash::BuildHasherDefault<Fnv>>;

static KNOWN: LazyLock<Names<Known>> = LazyLock::new(|| {
    EVENT_TYPES
        .iter()
        .map(|t| {
            // Walk down from the current version while the chain is unbroken.
            let mut chain = Vec::new();
            let mut from = t.current - 1;
            while let Some(u) = UPCASTERS
                .iter()
                .find(|u| u.event_type == t.name && u.from == from)
            {
                chain.push(u.step);
                from -= 1;
            }
            chain.reverse();
            let known = Known {
                current: t.current,
                oldest: from + 1,
                steps: Vec::leak(chain),
            };
            (t.name, known)
        })
        .collect()
});

/// What to do with an event of `event_type` stored at `version`.
pub fn plan(event_type: &str, version: i32) -> Result<Plan, Unreadable> {
    let Some(known) = KNOWN.get(event_type) else {
        return Err(Unreadable::UnknownType);
    };
    if version == known.current {
        return Ok(Plan::AsIs);
    }
    if version > known.current {
        return Err(Unreadable::TooNew {
            current: known.current,
        });
    }
    if version < known.oldest {
        return Err(Unreadable::TooOld {
            oldest: known.oldest,
        });
    }
    let steps = &known.steps[(version - known.oldest) as usize..];
    if steps.iter().all(|s| matches!(s, Step::Same)) {
        Ok(Plan::AsIs)
    } else {
        Ok(Plan::Upcast(steps))
    }
}

/// Runs upcasting steps over a payload. The error names the version whose step failed.
pub fn upcast(steps: &[Step], from: i32, mut payload: Value) -> Result<Value, (i32, String)> {
    for (i, step) in steps.iter().enumerate() {
        if let Step::Map(f) = step {
            payload = f(payload).map_err(|reason| (from + i as i32, reason))?;
        }
    }
    Ok(payload)
}

/// The registered event type called `name`.
pub fn event_type(name: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.name == name)
}

/// The versions of `name` this build reads, oldest first (none for an unknown type).
pub fn readable_versions(name: &str) -> Vec<i32> {
    KNOWN
        .get(name)
        .map(|k| (k.oldest..=k.current).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn event_type_names_are_unique() {
        let mut seen = HashSet::new();
        for t in EVENT_TYPES {
            assert!(seen.insert(t.name), "{} registered twice", t.name);
            assert!(t.current >= 1, "{}: versions start at 1", t.name);
        }
    }

    #[test]
    fn the_upcasting_chains_are_complete() {
        let mut seen = HashSet::new();
        for u in UPCASTERS {
            let t = event_type(u.event_type)
                .unwrap_or_else(|| panic!("an upcaster for unregistered {}", u.event_type));
            assert!(
                seen.insert((u.event_type, u.from)),
                "two upcasters from {} v{}",
                u.event_type,
                u.from
            );
            assert!(
                u.from < t.current,
                "the upcaster from {} v{} is not below its current version {}",
                u.event_type,
                u.from,
                t.current
            );
            // Every upcaster is part of the chain readers use.
            assert!(
                readable_versions(u.event_type).contains(&u.from),
                "{} v{} is cut off from the current version by a missing upcaster",
                u.event_type,
                u.from
            );
        }
    }

    #[test]
    fn the_current_version_is_decoded_as_it_is_and_others_are_refused() {
        assert!(matches!(plan("WalletOpened", 1), Ok(Plan::AsIs)));
        assert_eq!(
            plan("WalletOpened", 2).err(),
            Some(Unreadable::TooNew { current: 1 })
        );
        assert_eq!(
            plan("WalletOpened", 0).err(),
            Some(Unreadable::TooOld { oldest: 1 })
        );
        assert_eq!(
            plan("WalletRenamed", 1).err(),
            Some(Unreadable::UnknownType)
        );
        assert!(matches!(plan("OrderPlaced", 0), Ok(Plan::Upcast(s)) if s.len() == 1));
        assert!(matches!(plan("OrderPlaced", 1), Ok(Plan::AsIs)));
        assert_eq!(
            plan("OrderPlaced", -1).err(),
            Some(Unreadable::TooOld { oldest: 0 })
        );
    }
}
