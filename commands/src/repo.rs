//! Loaded aggregates: a per-process cache that doubles as the per-aggregate command lock.
//!
//! A command locks its aggregates' slots (in id order), so commands on one aggregate in one
//! process run one after another and the cached state is current unless another process
//! wrote. The cached version is the expected version of the next append; if another process
//! moved the stream on, the append clashes, and the slot reloads only the events after its
//! version. A cold slot starts from the latest snapshot, so loading stays fast as streams grow.

use crate::store::{EventStore, StoreError};
use cqrs_es::{Aggregate, DomainEvent};
use schemas::{NewEvent, RecordedEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use uuid::Uuid;

/// An aggregate's state at a version, as held in a slot.
#[derive(Debug, Default, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version the state is at (0: no events).
    pub version: i64,
    /// Whether the slot must be brought up to date from the store before use.
    pub stale: bool,
    /// Whether the slot has been read from the store at all.
    pub loaded: bool,
}

/// Why events could not be turned into state.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event or snapshot could not be decoded: replay stops here, loudly.
    #[error("cannot decode {what} of stream {stream_id} at version {version}: {reason}")]
    Decode {
        /// Event type or "snapshot".
        what: String,
        /// The stream.
        stream_id: Uuid,
        /// The version.
        version: i64,
        /// The decoder's complaint.
        reason: String,
    },
}

/// The slots of one aggregate type.
pub struct Repo<A: Aggregate> {
    slots: Mutex<HashMap<Uuid, Arc<AsyncMutex<Loaded<A>>>>>,
    capacity: usize,
}

impl<A: Aggregate + Clone> Repo<A> {
    /// A repository keeping at most about `capacity` idle aggregates in memory.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(16),
        }
    }

    fn slot(&self, id: Uuid) -> Arc<AsyncMutex<Loaded<A>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= self.capacity && !slots.contains_key(&id) {
            // Evict idle slots (nobody holds them) until a quarter of the room is free.
            let target = self.capacity * 3 / 4;
            let idle: Vec<Uuid> = slots
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .map(|(k, _)| *k)
                .take(slots.len().saturating_sub(target))
                .collect();
            for k in idle {
                slots.remove(&k);
            }
        }
        slots
            .entry(id)
            .or_insert_with(|| Arc::new(AsyncMutex::new(Loaded::default())))
            .clone()
    }

    /// Locks an aggregate's slot for a command and brings it up to date.
    pub async fn lock(
        &self,
        store: &dyn EventStore,
        id: Uuid,
    ) -> Result<OwnedMutexGuard<Loaded<A>>, LoadError> {
        let mut guard = self.slot(id).lock_owned().await;
        if guard.stale || !guard.loaded {
            if let Err(e) = refresh(store, id, &mut guard).await {
                // Start over from the store next time.
                *guard = Loaded::default();
                return Err(e);
            }
        }
        Ok(guard)
    }

    /// The current state of an aggregate for reading (a fact for another command or a
    /// query). Reads through the slot when it is free; when a command holds it, loads from
    /// the store instead of waiting, so readers never wait on writers.
    pub async fn read(&self, store: &dyn EventStore, id: Uuid) -> Result<Loaded<A>, LoadError> {
        let slot = self.slot(id);
        let result = match slot.try_lock() {
            Ok(mut guard) => match refresh(store, id, &mut guard).await {
                Ok(()) => Ok(guard.clone()),
                Err(e) => {
                    *guard = Loaded::default();
                    Err(e)
                }
            },
            Err(_) => {
                let mut fresh = Loaded::default();
                refresh(store, id, &mut fresh).await.map(|()| fresh)
            }
        };
        result
    }

    /// Marks a slot as needing a reload (after a failed or unknown append).
    pub fn forget(guard: &mut Loaded<A>) {
        *guard = Loaded::default();
    }
}

/// Brings a loaded aggregate up to date: the snapshot first if the slot is cold, then only
/// the events after its version. Each event is applied exactly once.
pub async fn refresh<A: Aggregate>(
    store: &dyn EventStore,
    id: Uuid,
    loaded: &mut Loaded<A>,
) -> Result<(), LoadError> {
    if !loaded.loaded {
        if let Some((version, state)) = store.load_snapshot(id).await? {
            loaded.state = serde_json::from_value(state).map_err(|e| LoadError::Decode {
                what: "snapshot".into(),
                stream_id: id,
                version,
                reason: e.to_string(),
            })?;
            loaded.version = version;
        }
    }
    for event in store.load(id, loaded.version).await? {
        let version = event.stream_version;
        loaded.state.apply(decode::<A>(&event)?);
        loaded.version = version;
    }
    loaded.loaded = true;
    loaded.stale = false;
    Ok(())
}

/// Rebuilds an aggregate from all its events up to `up_to` (no snapshot, no cache).
pub async fn replay<A: Aggregate>(
    store: &dyn EventStore,
    id: Uuid,
    up_to: i64,
) -> Result<Loaded<A>, LoadError> {
    let mut loaded = Loaded::<A>::default();
    for event in store.load_until(id, up_to).await? {
        loaded.state.apply(decode::<A>(&event)?);
        loaded.version = event.stream_version;
    }
    loaded.loaded = true;
    Ok(loaded)
}

/// The stored form of a domain event: its type name and version in their own columns, the
/// payload without the type tag.
pub fn encode<E: DomainEvent>(event: &E) -> NewEvent {
    let mut payload = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = payload.as_object_mut() {
        obj.remove("type");
    }
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type(),
        schema_version: event.event_version().parse().unwrap_or(1),
        payload,
    }
}

/// Decodes a stored event. An unknown type or a payload that does not fit is an error:
/// replay never skips an event.
pub fn decode<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, LoadError> {
    event.decode().map_err(|e| LoadError::Decode {
        what: event.event_type.clone(),
        stream_id: event.stream_id,
        version: event.stream_version,
        reason: e.to_string(),
    })
}

impl<A: Aggregate + Clone> Repo<A> {
    /// Locks the slot of an aggregate whose id was just minted: nothing to load.
    pub async fn lock_new(&self, id: Uuid) -> OwnedMutexGuard<Loaded<A>> {
        let mut guard = self.slot(id).lock_owned().await;
        if !guard.loaded {
            guard.loaded = true;
        }
        guard
    }
}
