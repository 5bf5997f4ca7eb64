//! A unit of work: the aggregates one command locks (of any types), the changes it decides on
//! them, and the retry loop that appends those changes atomically.
//!
//! A command names the aggregates it needs ([`Locks`]); they are locked in id order whatever
//! their types, so two commands never wait on each other in a cycle. Its plan function looks
//! at the locked states and returns the changes (at most one command per aggregate), the
//! unique facts to claim and what to answer. The executor decides each change with the
//! aggregate's `handle` on a copy of its state, appends all events in one commit, and only then
//! moves the copies into the slots. On a concurrency conflict it reloads what changed and runs
//! the plan again.

use crate::repo::{encode, refresh, LoadError, Loaded, Repo};
use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::store::{
    AppendError, AppendRequest, EventStore, NewClaim, NewIdempotency, Snapshot, StreamWrite,
};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use domain::account::Account;
use domain::device::Device;
use domain::escrow::Escrow;
use domain::order::Order;
use domain::pot::Pot;
use domain::wallet::Wallet;
use domain::RuleCode;
use futures::future::BoxFuture;
use std::any::Any;
use std::collections::BTreeMap;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

/// An aggregate type the command service keeps slots for.
pub(crate) trait Stored:
    Aggregate<Services = (), Command: Clone + Send + Sync, Error: RuleCode> + Clone + 'static
{
    /// The service's slots of this type.
    fn repo(service: &CommandService) -> &Repo<Self>;
}

impl Stored for Account {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.accounts
    }
}

impl Stored for Wallet {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.wallets
    }
}

impl Stored for Order {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.orders
    }
}

impl Stored for Escrow {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.escrows
    }
}

impl Stored for Pot {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.pots
    }
}

impl Stored for Device {
    fn repo(service: &CommandService) -> &Repo<Self> {
        &service.devices
    }
}

/// A locked slot of some aggregate type.
trait AnySlot: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn version(&self) -> i64;
    fn refresh<'a>(
        &'a mut self,
        store: &'a dyn EventStore,
        id: Uuid,
    ) -> BoxFuture<'a, Result<(), LoadError>>;
    fn forget(&mut self);
    fn set(&mut self, next: Box<dyn Any + Send>, version: i64);
}

impl<A: Aggregate + Clone + 'static> AnySlot for OwnedMutexGuard<Loaded<A>> {
    fn as_any(&self) -> &dyn Any {
        &**self
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn refresh<'a>(
        &'a mut self,
        store: &'a dyn EventStore,
        id: Uuid,
    ) -> BoxFuture<'a, Result<(), LoadError>> {
        Box::pin(refresh(store, id, &mut **self))
    }
    fn forget(&mut self) {
        Repo::<A>::forget(self);
    }
    fn set(&mut self, next: Box<dyn Any + Send>, version: i64) {
        if let Ok(state) = next.downcast::<A>() {
            self.state = *state;
            self.version = version;
        }
    }
}

/// The aggregates a command has locked.
pub(crate) struct Locked {
    slots: BTreeMap<Uuid, Box<dyn AnySlot>>,
}

impl Locked {
    /// The state of a locked aggregate of type `A`.
    pub fn get<A: Aggregate + 'static>(&self, id: Uuid) -> Result<&Loaded<A>, CommandError> {
        self.slots
            .get(&id)
            .and_then(|s| s.as_any().downcast_ref::<Loaded<A>>())
            .ok_or_else(|| {
                CommandError::Internal(format!("aggregate {id} is not locked as {}", A::TYPE))
            })
    }

    /// The state of a locked aggregate that must exist (404 otherwise).
    pub fn existing<A: Aggregate + 'static>(
        &self,
        id: Uuid,
        what: &str,
    ) -> Result<&Loaded<A>, CommandError> {
        let loaded = self.get::<A>(id)?;
        if loaded.version == 0 {
            return Err(Refusal::not_found(what).into());
        }
        Ok(loaded)
    }
}

/// Locks one aggregate's slot.
trait Locker: Send + Sync {
    fn lock<'a>(
        &self,
        service: &'a CommandService,
    ) -> BoxFuture<'a, Result<Box<dyn AnySlot>, LoadError>>;
}

struct LockOf<A> {
    id: Uuid,
    new: bool,
    _type: std::marker::PhantomData<fn() -> A>,
}

impl<A: Stored> Locker for LockOf<A> {
    fn lock<'a>(
        &self,
        service: &'a CommandService,
    ) -> BoxFuture<'a, Result<Box<dyn AnySlot>, LoadError>> {
        let (id, new) = (self.id, self.new);
        Box::pin(async move {
            let repo = A::repo(service);
            let guard = if new {
                repo.lock_new(id).await
            } else {
                repo.lock(service.store.as_ref(), id).await?
            };
            Ok(Box::new(guard) as Box<dyn AnySlot>)
        })
    }
}

/// The aggregates a command needs.
#[derive(Default)]
pub(crate) struct Locks {
    wanted: Vec<(Uuid, Box<dyn Locker>)>,
}

impl Locks {
    /// An existing aggregate (loaded from the store if its slot is cold).
    pub fn existing<A: Stored>(mut self, id: Uuid) -> Self {
        self.wanted.push((
            id,
            Box::new(LockOf::<A> {
                id,
                new: false,
                _type: std::marker::PhantomData,
            }),
        ));
        self
    }

    /// A new aggregate whose id was just minted: nothing to load.
    pub fn new_aggregate<A: Stored>(mut self, id: Uuid) -> Self {
        self.wanted.push((
            id,
            Box::new(LockOf::<A> {
                id,
                new: true,
                _type: std::marker::PhantomData,
            }),
        ));
        self
    }
}

/// A command for one locked aggregate.
pub(crate) trait Change: Send + Sync {
    fn id(&self) -> Uuid;
    fn decide<'a>(
        &'a self,
        locked: &'a Locked,
        snapshot_every: i64,
    ) -> BoxFuture<'a, Result<Decided, CommandError>>;
}

/// A decided change: its events, its snapshot if one is due, and the state after it.
pub(crate) struct Decided {
    write: StreamWrite,
    snapshot: Option<Snapshot>,
    next: Box<dyn Any + Send>,
    version: i64,
}

struct ChangeOf<A: Aggregate> {
    id: Uuid,
    commands: Vec<A::Command>,
}

/// `command` for the locked aggregate `id` of type `A`.
pub(crate) fn change<A: Stored>(id: Uuid, command: A::Command) -> Box<dyn Change> {
    Box::new(ChangeOf::<A> {
        id,
        commands: vec![command],
    })
}

/// Several commands for one locked aggregate, each decided on the state the previous one left
/// (a wallet opened on the fly and credited in the same commit).
pub(crate) fn changes<A: Stored>(id: Uuid, commands: Vec<A::Command>) -> Box<dyn Change> {
    Box::new(ChangeOf::<A> { id, commands })
}

impl<A: Stored> Change for ChangeOf<A> {
    fn id(&self) -> Uuid {
        self.id
    }

    fn decide<'a>(
        &'a self,
        locked: &'a Locked,
        every: i64,
    ) -> BoxFuture<'a, Result<Decided, CommandError>> {
        Box::pin(async move {
            let loaded = locked.get::<A>(self.id)?;
            let mut next = loaded.state.clone();
            let sink = EventSink::<A>::default();
            for command in &self.commands {
                next.handle(command.clone(), &(), &sink)
                    .await
                    .map_err(|e| Refusal::rule(&e))?;
            }
            let events = sink.collect().await;
            let expected = loaded.version;
            let version = expected + events.len() as i64;
            let snapshot = (every > 0 && version / every > expected / every).then(|| Snapshot {
                stream_type: A::TYPE,
                stream_id: self.id,
                version,
                state: serde_json::to_value(&next).unwrap_or_default(),
            });
            let write = StreamWrite {
                stream_type: A::TYPE,
                stream_id: self.id,
                expected_version: expected,
                events: events.iter().map(encode).collect(),
            };
            Ok(Decided {
                write,
                snapshot,
                next: Box::new(next),
                version,
            })
        })
    }
}

/// Claim scope: process steps already performed (see `Envelope::step`).
pub const PROCESS_STEP_SCOPE: &str = "process_step";

/// What to do when a claim turns out taken at commit.
#[derive(Debug, Clone)]
pub(crate) enum OnTaken {
    /// Refuse the command.
    Refuse(Refusal),
    /// Answer with the result of the command that made the claim (a repeat is a no-op).
    ReturnFirst,
}

/// A unique fact the command establishes with the first event it appends to `stream`.
#[derive(Debug, Clone)]
pub(crate) struct ClaimSpec {
    pub scope: &'static str,
    pub key: String,
    pub stream: Uuid,
    pub on_taken: OnTaken,
}

/// What a plan decides: the changes, the facts to claim, and the answer's id.
pub(crate) struct Decision {
    pub changes: Vec<Box<dyn Change>>,
    pub claims: Vec<ClaimSpec>,
    /// The id the answer carries (defaults to the primary aggregate).
    pub result_id: Option<Uuid>,
}

impl Decision {
    /// Just these changes.
    pub fn of(changes: Vec<Box<dyn Change>>) -> Self {
        Self {
            changes,
            claims: Vec::new(),
            result_id: None,
        }
    }
}

/// How a command runs: who allowed it, what answers it, whether it creates something.
pub(crate) struct Unit {
    /// The role the command was allowed under.
    pub role: Role,
    /// The aggregate `If-Match` applies to and whose version the answer carries.
    pub primary: Uuid,
    /// Whether the command creates something (201).
    pub created: bool,
}

impl CommandService {
    /// Locks `locks`, runs `plan` on their states, and appends its changes in one commit,
    /// re-planning on a concurrency conflict a bounded number of times.
    pub(crate) async fn run_unit<F>(
        &self,
        env: &Envelope,
        unit: Unit,
        locks: Locks,
        mut plan: F,
    ) -> Result<CommandResult, CommandError>
    where
        F: FnMut(&Locked) -> Result<Decision, CommandError>,
    {
        let mut wanted = locks.wanted;
        wanted.sort_by_key(|(id, _)| *id);
        let mut locked = Locked {
            slots: BTreeMap::new(),
        };
        for (id, lock) in wanted {
            if locked.slots.contains_key(&id) {
                continue;
            }
            locked.slots.insert(id, lock.lock(self).await?);
        }
        let metadata = self.metadata(env, unit.role);
        let mut attempt = 0_u64;
        for _ in 0..=self.config.max_retries {
            if let Some(expected) = env.if_match {
                let current = locked.slots.get(&unit.primary).map_or(0, |s| s.version());
                if current != expected {
                    let detail = format!("the aggregate is at version {current}, not {expected}");
                    return Err(Refusal::new(412, "precondition_failed", detail).into());
                }
            }
            let decision = plan(&locked)?;
            let mut decided = Vec::with_capacity(decision.changes.len());
            for change in &decision.changes {
                decided.push((
                    change.id(),
                    change.decide(&locked, self.config.snapshot_every).await?,
                ));
            }
            let mut claim_specs = decision.claims.clone();
            if let Some(step) = &env.step {
                claim_specs.push(ClaimSpec {
                    scope: PROCESS_STEP_SCOPE,
                    key: step.clone(),
                    stream: unit.primary,
                    on_taken: OnTaken::ReturnFirst,
                });
            }
            let claims = claim_specs
                .iter()
                .map(|c| NewClaim {
                    scope: c.scope,
                    key: c.key.clone(),
                    stream_id: c.stream,
                    stream_version: locked.slots.get(&c.stream).map_or(0, |s| s.version()) + 1,
                })
                .collect();
            let result_id = decision.result_id.unwrap_or(unit.primary);
            let result_version = decided
                .iter()
                .find(|(id, _)| *id == unit.primary)
                .map(|(_, d)| d.version)
                .or_else(|| locked.slots.get(&unit.primary).map(|s| s.version()))
                .unwrap_or(0);
            let idempotency = match (&env.idempotency, decided.last()) {
                (Some(k), Some((last, d))) => Some(NewIdempotency {
                    subject: env.actor.subject.clone(),
                    key: k.key.clone(),
                    request_hash: k.request_hash.clone(),
                    status: if unit.created { 201 } else { 200 },
                    result_id,
                    result_version,
                    last_stream: *last,
                    last_version: d.version,
                }),
                _ => None,
            };
            let request = AppendRequest {
                streams: decided.iter().map(|(_, d)| d.write.clone()).collect(),
                metadata: metadata.clone(),
                claims,
                snapshots: decided
                    .iter()
                    .filter_map(|(_, d)| d.snapshot.clone())
                    .collect(),
                idempotency,
            };
            let types: Vec<&'static str> = request.streams.iter().map(|w| w.stream_type).collect();
            match self.store.append(request).await {
                Ok(appended) => {
                    self.commits.send_modify(|counts| {
                        for t in types {
                            let n = counts.entry(t).or_insert(0);
                            *n = n.wrapping_add(1);
                        }
                    });
                    for (id, d) in decided {
                        if let Some(slot) = locked.slots.get_mut(&id) {
                            slot.set(d.next, d.version);
                        }
                    }
                    return Ok(CommandResult {
                        id: result_id,
                        version: result_version,
                        position: appended.last_position(),
                        created: unit.created,
                        recorded: env.idempotency.is_some(),
                    });
                }
                Err(AppendError::Conflict) => {
                    // Another process moved a stream on: back off a little (randomly, so two
                    // racers do not collide again in step), reload what changed, plan again.
                    attempt += 1;
                    let jitter = (Uuid::now_v7().as_u128() & 0x3ff) as u64 * attempt;
                    tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
                    for (id, slot) in locked.slots.iter_mut() {
                        slot.refresh(self.store.as_ref(), *id).await?;
                    }
                }
                Err(AppendError::ClaimTaken) => {
                    for c in &claim_specs {
                        if let Some(taken) = self.store.claim(c.scope, &c.key).await? {
                            return match &c.on_taken {
                                OnTaken::Refuse(r) => Err(r.clone().into()),
                                OnTaken::ReturnFirst => Ok(CommandResult {
                                    id: taken.stream_id,
                                    version: taken.stream_version,
                                    position: taken.position,
                                    created: false,
                                    recorded: false,
                                }),
                            };
                        }
                    }
                }
                Err(AppendError::IdempotencyTaken) => return Err(CommandError::IdempotencyRace),
                Err(AppendError::Store(e)) => {
                    for slot in locked.slots.values_mut() {
                        slot.forget();
                    }
                    return Err(e.into());
                }
            }
        }
        Err(CommandError::Conflict)
    }
}
