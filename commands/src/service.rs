//! The command service: authorisation facts, the retry loop around optimistic appends, and
//! idempotency keys.

use crate::repo::{LoadError, Repo};
use crate::store::{EventStore, StoreError, StoredResponse};
use crate::Clock;
use domain::account::Account;
use domain::device::Device;
use domain::escrow::Escrow;
use domain::order::Order;
use domain::pot::Pot;
use domain::wallet::Wallet;
use domain::{InvalidInput, RuleCode};
use schemas::Metadata;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

/// The roles a subject may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An account holder.
    Customer,
    /// A payment provider's integration (deposits).
    Payments,
    /// Platform staff with full rights.
    Admin,
    /// Reads everything, writes nothing.
    Auditor,
    /// Resolves disputes.
    Arbiter,
    /// Chronicle's own processes (deadlines, cascades); never granted by a token.
    #[serde(skip_deserializing)]
    System,
    /// A device acting with its own credential; never granted by a token.
    #[serde(skip_deserializing)]
    Device,
}

impl Role {
    /// The role's name as stored in event metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Payments => "payments",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Arbiter => "arbiter",
            Role::System => "system",
            Role::Device => "device",
        }
    }
}

/// Who issues a command or a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The authenticated subject.
    pub subject: String,
    /// Its roles.
    pub roles: Vec<Role>,
}

impl Actor {
    /// Whether the actor holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A client's idempotency key with the hash of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// Hash of method, path and body.
    pub request_hash: String,
}

/// Everything about a command that is not the command itself.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Who.
    pub actor: Actor,
    /// The command's id.
    pub command_id: Uuid,
    /// The correlation id (defaults to the command id).
    pub correlation_id: Option<Uuid>,
    /// The causation id.
    pub causation_id: Option<Uuid>,
    /// The idempotency key, if the client sent one.
    pub idempotency: Option<IdempotencyKey>,
    /// `If-Match`: the version the client expects the target aggregate at.
    pub if_match: Option<i64>,
    /// The process step this command performs (`<process>:<aggregate>:<due>`), recorded with
    /// its events so that a restarted process never performs it twice.
    pub step: Option<String>,
}

impl Envelope {
    /// A plain envelope for `actor` with a fresh command id.
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            command_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            idempotency: None,
            if_match: None,
            step: None,
        }
    }
}

/// A command refused for a reason the client can act on (403, 404, 409, 412, 422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The stable code.
    pub code: String,
    /// A human-readable explanation.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `status`, `code` and `detail`.
    pub fn new(status: u16, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
    /// 403: not allowed for this subject.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "forbidden", detail)
    }
    /// 404: unknown id.
    pub fn not_found(what: &str) -> Self {
        Self::new(404, "not_found", format!("no such {what}"))
    }
    /// 422: a business rule.
    pub fn rule<E: RuleCode + std::fmt::Display>(e: &E) -> Self {
        Self::new(422, e.code(), e.to_string())
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Invalid input (400).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Refused (403, 404, 409, 412, 422).
    #[error("{}: {}", .0.code, .0.detail)]
    Refused(Refusal),
    /// The aggregate kept moving under the command (409 after bounded retries).
    #[error("concurrency conflict survived retries")]
    Conflict,
    /// The idempotency key was used with another request (422).
    #[error("the idempotency key was used for another request")]
    IdempotencyKeyReused,
    /// The key was recorded by a concurrent request; its answer is to be replayed.
    #[error("the idempotency key was recorded concurrently")]
    IdempotencyRace,
    /// The store failed (5xx).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A defect in the command layer (500); never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Refusal> for CommandError {
    fn from(r: Refusal) -> Self {
        CommandError::Refused(r)
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Load(LoadError::Store(e))
    }
}

/// A successful command's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The aggregate (or transfer) id.
    pub id: Uuid,
    /// The aggregate's version after the command.
    pub version: i64,
    /// The global position of the last event written.
    pub position: i64,
    /// Whether a new aggregate was created (201).
    #[serde(skip)]
    pub created: bool,
    /// Whether the idempotency record was already written with the events.
    #[serde(skip)]
    pub recorded: bool,
}

impl CommandResult {
    /// The HTTP status of this answer.
    pub fn status(&self) -> u16 {
        if self.created {
            201
        } else {
            200
        }
    }
}

/// Tunables of the command service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How often a command is re-decided after a concurrency conflict before 409.
    pub max_retries: usize,
    /// A snapshot is saved each time a stream passes a multiple of this many events.
    pub snapshot_every: i64,
    /// How many idle aggregates of each type stay in memory.
    pub cache_capacity: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_retries: 8,
            snapshot_every: 100,
            cache_capacity: 100_000,
        }
    }
}

/// The in-process lock of one idempotency key.
type KeyLock = Arc<AsyncMutex<()>>;

/// Commits per stream type (`wallet`, `order`, ...) since the service started.
pub type CommitCounts = std::collections::BTreeMap<&'static str, u64>;

/// Handles commands: loads aggregates, checks rules, appends events.
pub struct CommandService {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: ServiceConfig,
    pub(crate) accounts: Repo<Account>,
    pub(crate) wallets: Repo<Wallet>,
    pub(crate) orders: Repo<Order>,
    pub(crate) escrows: Repo<Escrow>,
    pub(crate) pots: Repo<Pot>,
    pub(crate) devices: Repo<Device>,
    subjects: Mutex<HashMap<String, Uuid>>,
    idempotency_locks: Mutex<HashMap<(String, String), KeyLock>>,
    pub(crate) commits: tokio::sync::watch::Sender<CommitCounts>,
}

impl CommandService {
    /// A service over `store` with `clock`.
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, config: ServiceConfig) -> Self {
        Self {
            store,
            clock,
            accounts: Repo::new(config.cache_capacity),
            wallets: Repo::new(config.cache_capacity),
            orders: Repo::new(config.cache_capacity),
            escrows: Repo::new(config.cache_capacity),
            pots: Repo::new(config.cache_capacity),
            devices: Repo::new(config.cache_capacity),
            config,
            subjects: Mutex::new(HashMap::new()),
            idempotency_locks: Mutex::new(HashMap::new()),
            commits: tokio::sync::watch::Sender::new(CommitCounts::new()),
        }
    }

    /// A signal that changes after every commit of this service, counting commits per stream
    /// type: in-process readers of the log (projectors) wait on it instead of polling, and
    /// only wake for the stream types they read.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<CommitCounts> {
        self.commits.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The account bound to a subject, if any.
    pub async fn account_of(&self, subject: &str) -> Result<Option<Uuid>, CommandError> {
        if let Some(id) = self
            .subjects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
        {
            return Ok(Some(*id));
        }
        let found = self
            .store
            .claim(crate::accounts::SUBJECT_SCOPE, subject)
            .await?;
        if let Some(c) = &found {
            self.remember_subject(subject, c.stream_id);
        }
        Ok(found.map(|c| c.stream_id))
    }

    pub(crate) fn remember_subject(&self, subject: &str, account: Uuid) {
        self.subjects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_owned(), account);
    }

    pub(crate) fn metadata(&self, env: &Envelope, role: Role) -> Metadata {
        Metadata {
            actor_sub: env.actor.subject.clone(),
            actor_role: role.as_str().to_owned(),
            command_id: env.command_id,
            correlation_id: env.correlation_id.unwrap_or(env.command_id),
            causation_id: env.causation_id,
            occurred_at: self.clock.now(),
        }
    }

    /// Runs a command under its idempotency key: a repeat gets the first answer back, the
    /// same key with another request is refused, and the answer is recorded.
    pub async fn idempotent<F, Fut>(
        &self,
        env: &Envelope,
        run: F,
    ) -> Result<CommandResult, CommandError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<CommandResult, CommandError>>,
    {
        let Some(key) = &env.idempotency else {
            return run().await;
        };
        let subject = env.actor.subject.clone();
        let lock_key = (subject.clone(), key.key.clone());
        let lock = {
            let mut locks = self
                .idempotency_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks.entry(lock_key.clone()).or_default().clone()
        };
        let result = {
            let _held = lock.lock().await;
            self.idempotent_locked(&subject, key, run).await
        };
        let mut locks = self
            .idempotency_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if locks
            .get(&lock_key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(&lock_key);
        }
        result
    }

    async fn idempotent_locked<F, Fut>(
        &self,
        subject: &str,
        key: &IdempotencyKey,
        run: F,
    ) -> Result<CommandResult, CommandError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<CommandResult, CommandError>>,
    {
        if let Some(stored) = self.store.idempotency(subject, &key.key).await? {
            return replay_stored(stored, key);
        }
        let result = run().await;
        let stored = match &result {
            Ok(r) if !r.recorded => StoredResponse {
                request_hash: key.request_hash.clone(),
                status: r.status(),
                result: Some((r.id, r.version, r.position)),
                body: None,
            },
            Err(CommandError::Refused(refusal)) => StoredResponse {
                request_hash: key.request_hash.clone(),
                status: refusal.status,
                result: None,
                body: serde_json::to_value(refusal).ok(),
            },
            Err(CommandError::IdempotencyRace) => {
                return match self.store.idempotency(subject, &key.key).await? {
                    Some(stored) => replay_stored(stored, key),
                    None => Err(CommandError::Conflict),
                };
            }
            _ => return result,
        };
        if !self
            .store
            .save_idempotency(subject, &key.key, &stored)
            .await?
        {
            // Another process recorded the key first: its answer stands.
            if let Some(first) = self.store.idempotency(subject, &key.key).await? {
                return replay_stored(first, key);
            }
        }
        result
    }
}

fn replay_stored(
    stored: StoredResponse,
    key: &IdempotencyKey,
) -> Result<CommandResult, CommandError> {
    if stored.request_hash != key.request_hash {
        return Err(CommandError::IdempotencyKeyReused);
    }
    match (stored.result, stored.body) {
        (Some((id, version, position)), _) => Ok(CommandResult {
            id,
            version,
            position,
            created: stored.status == 201,
            recorded: true,
        }),
        (None, Some(body)) => match serde_json::from_value::<Refusal>(body) {
            Ok(r) => Err(r.into()),
            Err(_) => Err(CommandError::Conflict),
        },
        (None, None) => Err(CommandError::Conflict),
    }
}
