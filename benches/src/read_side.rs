//! The read-side scenarios.
//!
//! - **rebuild**: loads a realistic mix of commands over HTTP into a server running only the
//!   API (no projector keeps up while loading), stops it, then rebuilds every read model of
//!   `projections::all()` from position 0 in-process with `rebuild::build_shadow`, and in the
//!   same database inserts the rebuilt rows into empty copies of the same tables with
//!   multi-row INSERTs from the client: the raw baseline.
//! - **lag**: runs the server with all its roles, loads it with deposits, and meanwhile probes
//!   how long after a deposit's answer arrives its event is applied by the `wallets` (and
//!   `stats`) projector, reading the checkpoints directly in PostgreSQL.

use crate::{
    cpu_line, cpu_sample, cpu_share, deposit_load, describe_setup, http_client,
    open_deposit_wallets, stats_header, stats_row, wal_delta, wal_sample, Api, Ctx, Stats,
};
use anyhow::{anyhow, bail, Context};
use futures::TryStreamExt;
use projections::rebuild;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Mints HS256 tokens in-process with the server's secret and the claims `chronicle token`
/// puts in (`sub`, `roles`, `exp`, `iat`), so that thousands of customers need no thousands of
/// child processes.
pub(crate) struct Minter {
    key: jsonwebtoken::EncodingKey,
}

impl Minter {
    pub(crate) fn new(secret: &str) -> Self {
        Self {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub(crate) fn mint(&self, sub: &str, roles: &[&str]) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({"sub": sub, "roles": roles, "exp": now + 86_400, "iat": now});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// SplitMix64: a small, seedable generator for the command mix (no statistical claims).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n >= 1).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..hi` (hi > lo).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo).max(1) as u64) as i64
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// An RFC 3339 time `days` from now.
fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339()
}

fn answer_id(v: &Value) -> Option<Uuid> {
    v.get("id")?.as_str()?.parse().ok()
}

pub(crate) async fn connect(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        .context("cannot connect to the benchmark database")
}

pub(crate) async fn count_events(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?)
}

// ---------------------------------------------------------------------------------------------
// The command mix

/// A customer of the mix: their account, token and EUR wallet.
pub(crate) struct Person {
    account: Uuid,
    token: String,
    wallet: Uuid,
}

/// What the load tasks share.
pub(crate) struct Shared {
    pub(crate) api: Api,
    pub(crate) people: Vec<Person>,
    pub(crate) payments: String,
    pub(crate) admin: String,
    pub(crate) arbiter: String,
    pub(crate) run_id: String,
    /// Makes external references, serials and names unique.
    pub(crate) seq: AtomicU64,
    /// The highest `position` any answer carried.
    pub(crate) max_position: AtomicI64,
    pub(crate) stop: AtomicBool,
}

impl Shared {
    /// The same, with `people` (and the counters carried over).
    pub(crate) fn with_people(&self, people: Vec<Person>) -> Shared {
        Shared {
            api: self.api.clone(),
            people,
            payments: self.payments.clone(),
            admin: self.admin.clone(),
            arbiter: self.arbiter.clone(),
            run_id: self.run_id.clone(),
            seq: AtomicU64::new(self.seq.load(Ordering::SeqCst)),
            max_position: AtomicI64::new(self.max_position.load(Ordering::SeqCst)),
            stop: AtomicBool::new(false),
        }
    }

    fn unique(&self, what: &str) -> String {
        format!(
            "{what}-{}-{}",
            self.run_id,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Answers of one kind of request.
#[derive(Default)]
pub(crate) struct Outcome {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

/// One load task: sends requests and counts their answers by kind.
struct Driver {
    shared: Arc<Shared>,
    outcomes: BTreeMap<&'static str, Outcome>,
}

impl Driver {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            outcomes: BTreeMap::new(),
        }
    }

    /// Sends one request; `Some(body)` on a 2xx answer, `None` (counted as failed) otherwise.
    /// A transport error ends the run.
    async fn call(
        &mut self,
        label: &'static str,
        method: reqwest::Method,
        path: &str,
        authorization: String,
        body: Value,
    ) -> anyhow::Result<Option<Value>> {
        let api = &self.shared.api;
        let r = api
            .client
            .request(method, format!("{}{path}", api.base))
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("{label}: {path}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        let outcome = self.outcomes.entry(label).or_default();
        if (200..300).contains(&status) {
            outcome.ok += 1;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(p) = v.get("position").and_then(Value::as_i64) {
                self.shared.max_position.fetch_max(p, Ordering::Relaxed);
            }
            Ok(Some(v))
        } else {
            outcome.failed += 1;
            if outcome.first_error.is_none() {
                outcome.first_error = Some(format!(
                    "{path}: {status} {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            Ok(None)
        }
    }

    async fn post(
        &mut self,
        label: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> anyhow::Result<Option<Value>> {
        self.call(
            label,
            reqwest::Method::POST,
            path,
            format!("Bearer {token}"),
            body,
        )
        .await
    }

    /// A POST that creates an aggregate; its id.
    async fn create(
        &mut self,
        label: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> anyhow::Result<Option<Uuid>> {
        Ok(self
            .post(label, path, token, body)
            .await?
            .as_ref()
            .and_then(answer_id))
    }

    /// Opens customer `i`: account, EUR wallet, a first deposit, and for half of them an
    /// approved KYC.
    async fn open_person(&mut self, minter: &Minter, i: usize) -> anyhow::Result<Person> {
        let sh = self.shared.clone();
        let sub = format!("bench-{}-c{i}", sh.run_id);
        let token = minter.mint(&sub, &["customer"])?;
        let account = self
            .create(
                "open account",
                "/v1/accounts",
                &token,
                json!({"email": format!("{sub}@example.com"), "display_name": format!("Customer {i}")}),
            )
            .await?
            .ok_or_else(|| anyhow!("cannot open account {i}: {}", self.last_error("open account")))?;
        let wallet = self
            .create(
                "open wallet",
                "/v1/wallets",
                &token,
                json!({"currency": "EUR"}),
            )
            .await?
            .ok_or_else(|| anyhow!("cannot open wallet {i}: {}", self.last_error("open wallet")))?;
        let r = sh.unique("fund");
        self.post(
            "deposit",
            &format!("/v1/wallets/{wallet}/deposits"),
            &sh.payments,
            json!({"amount": 5_000_000, "external_ref": r}),
        )
        .await?;
        // Half of the customers (two of every four) get an approved KYC.
        if i % 4 < 2 {
            self.post(
                "kyc",
                &format!("/v1/accounts/{account}/kyc"),
                &token,
                json!({"document_ref": format!("passport-{i}")}),
            )
            .await?;
            self.post(
                "kyc approve",
                &format!("/v1/accounts/{account}/kyc/approve"),
                &sh.admin,
                json!({}),
            )
            .await?;
        }
        Ok(Person {
            account,
            token,
            wallet,
        })
    }

    fn last_error(&self, label: &str) -> String {
        self.outcomes
            .get(label)
            .and_then(|o| o.first_error.clone())
            .unwrap_or_default()
    }

    /// One step of the mix between two random customers (by share of steps): deposits 34%,
    /// transfers 28%, withdrawals 6%, orders 9%, escrows 6%, pots 5%, devices 4%, profile
    /// updates 8%.
    async fn step(&mut self, rng: &mut Rng) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        let n = sh.people.len();
        let a = rng.below(n);
        let b = (a + 1 + rng.below(n - 1)) % n;
        let (pa, pb) = (&sh.people[a], &sh.people[b]);
        match rng.below(100) {
            0..=33 => {
                let r = sh.unique("dep");
                let amount = rng.range(100, 50_000);
                self.post(
                    "deposit",
                    &format!("/v1/wallets/{}/deposits", pa.wallet),
                    &sh.payments,
                    json!({"amount": amount, "external_ref": r}),
                )
                .await?;
            }
            34..=61 => {
                let mut body = json!({"from_wallet": pa.wallet, "to_wallet": pb.wallet,
                                      "amount": rng.range(100, 20_000)});
                if rng.chance(50) {
                    body["memo"] = json!("thanks");
                }
                self.post("transfer", "/v1/transfers", &pa.token, body)
                    .await?;
            }
            62..=67 => {
                let r = sh.unique("wd");
                let amount = rng.range(100, 50_000);
                self.post(
                    "withdrawal",
                    &format!("/v1/wallets/{}/withdrawals", pa.wallet),
                    &pa.token,
                    json!({"amount": amount, "external_ref": r}),
                )
                .await?;
            }
            68..=76 => self.order(rng, pa, pb).await?,
            77..=82 => self.escrow(rng, pa, pb).await?,
            83..=87 => self.pot(rng, pa, pb).await?,
            88..=91 => self.device(rng, pa).await?,
            _ => {
                let name = format!("Customer {}", sh.seq.fetch_add(1, Ordering::Relaxed));
                self.call(
                    "profile",
                    reqwest::Method::PATCH,
                    &format!("/v1/accounts/{}/profile", pa.account),
                    format!("Bearer {}", pa.token),
                    json!({"display_name": name}),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// An order, direct or through escrow (40%): cancelled by the buyer before paying (10%);
    /// else paid, then shipped and delivered (50%), shipped, delivered and partly refunded
    /// (12%), cancelled by the seller with a refund (12%), partly refunded while paid (direct)
    /// or shipped only (escrow) (8%), or left paid (8%).
    async fn order(
        &mut self,
        rng: &mut Rng,
        buyer: &Person,
        seller: &Person,
    ) -> anyhow::Result<()> {
        let mut lines = Vec::new();
        for _ in 0..rng.range(1, 4) {
            lines.push(
                json!({"sku": format!("sku-{}", rng.below(500)), "description": "bench item",
                              "quantity": rng.range(1, 4), "unit_price": rng.range(500, 20_000)}),
            );
        }
        let escrow = rng.chance(40);
        let body = json!({"seller": seller.account, "currency": "EUR", "lines": lines,
                          "use_escrow": escrow});
        let Some(id) = self
            .create("order place", "/v1/orders", &buyer.token, body)
            .await?
        else {
            return Ok(());
        };
        let roll = rng.below(100);
        if roll < 10 {
            self.post(
                "order cancel (buyer)",
                &format!("/v1/orders/{id}/cancel"),
                &buyer.token,
                json!({"reason": "changed my mind"}),
            )
            .await?;
            return Ok(());
        }
        let paid = self
            .post(
                "order pay",
                &format!("/v1/orders/{id}/pay"),
                &buyer.token,
                json!({"wallet": buyer.wallet}),
            )
            .await?;
        if paid.is_none() {
            return Ok(());
        }
        let ship = roll < 72 || ((84..92).contains(&roll) && escrow);
        let deliver = roll < 72;
        let refund = (60..72).contains(&roll) || ((84..92).contains(&roll) && !escrow);
        if ship {
            self.post(
                "order ship",
                &format!("/v1/orders/{id}/ship"),
                &seller.token,
                json!({"carrier": "DHL", "tracking": format!("JD{}", rng.below(1_000_000_000))}),
            )
            .await?;
        }
        if deliver {
            self.post(
                "order deliver",
                &format!("/v1/orders/{id}/confirm-delivery"),
                &buyer.token,
                json!({}),
            )
            .await?;
        }
        if refund {
            self.post(
                "order refund",
                &format!("/v1/orders/{id}/refunds"),
                &seller.token,
                json!({"amount": rng.range(1, 500), "reason": "damaged box"}),
            )
            .await?;
        }
        if (72..84).contains(&roll) {
            self.post(
                "order cancel (seller)",
                &format!("/v1/orders/{id}/cancel"),
                &seller.token,
                json!({"reason": "out of stock"}),
            )
            .await?;
        }
        Ok(())
    }

    /// An escrow opened and funded, then released (50%), disputed and resolved by the
    /// arbiter (30%) or refunded by the seller (20%).
    async fn escrow(
        &mut self,
        rng: &mut Rng,
        buyer: &Person,
        seller: &Person,
    ) -> anyhow::Result<()> {
        let amount = rng.range(1_000, 50_000);
        let body = json!({"buyer_wallet": buyer.wallet, "seller": seller.account, "amount": amount,
                          "terms": "as described", "expires_at": in_days(7)});
        let Some(id) = self
            .create("escrow open", "/v1/escrows", &buyer.token, body)
            .await?
        else {
            return Ok(());
        };
        let funded = self
            .post(
                "escrow fund",
                &format!("/v1/escrows/{id}/fund"),
                &buyer.token,
                json!({}),
            )
            .await?;
        if funded.is_none() {
            return Ok(());
        }
        match rng.below(10) {
            0..=4 => {
                self.post(
                    "escrow release",
                    &format!("/v1/escrows/{id}/release"),
                    &buyer.token,
                    json!({}),
                )
                .await?;
            }
            5..=7 => {
                let by = if rng.chance(50) { buyer } else { seller };
                self.post(
                    "escrow dispute",
                    &format!("/v1/escrows/{id}/disputes"),
                    &by.token,
                    json!({"reason": "not as described"}),
                )
                .await?;
                let to_seller = rng.range(0, amount + 1);
                let arbiter = self.shared.arbiter.clone();
                self.post(
                    "escrow resolve",
                    &format!("/v1/escrows/{id}/disputes/resolve"),
                    &arbiter,
                    json!({"to_seller": to_seller, "to_buyer": amount - to_seller}),
                )
                .await?;
            }
            _ => {
                self.post(
                    "escrow refund",
                    &format!("/v1/escrows/{id}/refund"),
                    &seller.token,
                    json!({}),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A pot for `beneficiary`, public or private (with 1-3 invitations), with contributions
    /// from its owner and 1-3 others (the invited ones for a private pot), then closed and
    /// paid out (50%), cancelled with refunds (30%) or left open (20%).
    async fn pot(
        &mut self,
        rng: &mut Rng,
        owner: &Person,
        beneficiary: &Person,
    ) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        let visibility = if rng.chance(50) { "public" } else { "private" };
        let body = json!({"beneficiary": beneficiary.account, "title": "A gift", "currency": "EUR",
                          "target_amount": 100_000, "closes_at": in_days(rng.range(2, 300)),
                          "visibility": visibility});
        let Some(id) = self
            .create("pot create", "/v1/pots", &owner.token, body)
            .await?
        else {
            return Ok(());
        };
        // A private pot admits its owner and the accounts invited; a public one anyone.
        let mut givers = vec![owner];
        if visibility == "private" {
            for _ in 0..rng.range(1, 4) {
                let guest = &sh.people[rng.below(sh.people.len())];
                let invited = self
                    .post(
                        "pot invite",
                        &format!("/v1/pots/{id}/invitations"),
                        &owner.token,
                        json!({"account": guest.account}),
                    )
                    .await?;
                if invited.is_some() {
                    givers.push(guest);
                }
            }
        } else {
            for _ in 0..rng.range(1, 4) {
                givers.push(&sh.people[rng.below(sh.people.len())]);
            }
        }
        for giver in givers {
            let mut body = json!({"wallet": giver.wallet, "amount": rng.range(100, 10_000),
                                  "anonymous": rng.chance(30)});
            if rng.chance(50) {
                body["message"] = json!("happy birthday");
            }
            self.post(
                "pot contribute",
                &format!("/v1/pots/{id}/contributions"),
                &giver.token,
                body,
            )
            .await?;
        }
        match rng.below(10) {
            0..=4 => {
                self.post(
                    "pot close",
                    &format!("/v1/pots/{id}/close"),
                    &owner.token,
                    json!({}),
                )
                .await?;
                self.post(
                    "pot payout",
                    &format!("/v1/pots/{id}/payout"),
                    &owner.token,
                    json!({}),
                )
                .await?;
            }
            5..=7 => {
                self.post(
                    "pot cancel",
                    &format!("/v1/pots/{id}/cancel"),
                    &owner.token,
                    json!({"reason": "plans changed"}),
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A device registered, activated and sent a firmware update; it reports the update
    /// applied (70%) with its own credential; 10% are decommissioned by an admin.
    async fn device(&mut self, rng: &mut Rng, owner: &Person) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        let body =
            json!({"serial": sh.unique("SN"), "model": "Thermo 3", "firmware_version": "1.0.0"});
        let Some(id) = self
            .create("device register", "/v1/devices", &owner.token, body)
            .await?
        else {
            return Ok(());
        };
        let activated = self
            .post(
                "device activate",
                &format!("/v1/devices/{id}/activate"),
                &owner.token,
                json!({}),
            )
            .await?;
        let credential = activated
            .as_ref()
            .and_then(|v| v.get("credential"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let scheduled = self
            .post(
                "device firmware",
                &format!("/v1/devices/{id}/firmware"),
                &owner.token,
                json!({"target_version": "1.1.0", "artifact_url": "https://example.com/fw-1.1.0.bin",
                       "sha256": "ab".repeat(32)}),
            )
            .await?;
        if let (Some(credential), Some(_)) = (credential, scheduled) {
            if rng.chance(70) {
                self.call(
                    "device report",
                    reqwest::Method::POST,
                    &format!("/v1/devices/{id}/firmware/report"),
                    format!("Device {credential}"),
                    json!({"version": "1.1.0", "outcome": "applied"}),
                )
                .await?;
            }
        }
        if rng.chance(10) {
            self.post(
                "device decommission",
                &format!("/v1/devices/{id}/decommission"),
                &sh.admin,
                json!({"reason": "end of life"}),
            )
            .await?;
        }
        Ok(())
    }
}

pub(crate) fn merge_outcomes(
    into: &mut BTreeMap<&'static str, Outcome>,
    from: BTreeMap<&'static str, Outcome>,
) {
    for (label, o) in from {
        let e = into.entry(label).or_default();
        e.ok += o.ok;
        e.failed += o.failed;
        if e.first_error.is_none() {
            e.first_error = o.first_error;
        }
    }
}

/// Opens `count` customers from `clients` tasks.
pub(crate) async fn open_people(
    shared: &Arc<Shared>,
    minter: &Arc<Minter>,
    count: usize,
    clients: usize,
) -> anyhow::Result<(Vec<Person>, BTreeMap<&'static str, Outcome>)> {
    let mut set = JoinSet::new();
    for c in 0..clients.min(count) {
        let shared = shared.clone();
        let minter = minter.clone();
        set.spawn(async move {
            let mut driver = Driver::new(shared);
            let mut people = Vec::new();
            for i in (c..count).step_by(clients) {
                people.push((i, driver.open_person(&minter, i).await?));
            }
            anyhow::Ok((people, driver.outcomes))
        });
    }
    let mut people = Vec::with_capacity(count);
    let mut outcomes = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (p, o) = r??;
        people.extend(p);
        merge_outcomes(&mut outcomes, o);
    }
    people.sort_by_key(|(i, _)| *i);
    Ok((people.into_iter().map(|(_, p)| p).collect(), outcomes))
}

/// Runs the mix from `clients` tasks until an answer carries a position >= `until_position`.
pub(crate) async fn mix_round(
    shared: &Arc<Shared>,
    clients: usize,
    until_position: i64,
    seed: u64,
) -> anyhow::Result<BTreeMap<&'static str, Outcome>> {
    shared.stop.store(false, Ordering::SeqCst);
    let mut set = JoinSet::new();
    for c in 0..clients {
        let shared = shared.clone();
        set.spawn(async move {
            let mut rng = Rng(seed ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut driver = Driver::new(shared.clone());
            while !shared.stop.load(Ordering::Relaxed) {
                driver.step(&mut rng).await?;
            }
            anyhow::Ok(driver.outcomes)
        });
    }
    let watcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last_report = Instant::now();
            let first = shared.max_position.load(Ordering::Relaxed);
            while !shared.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let at = shared.max_position.load(Ordering::Relaxed);
                if at >= until_position {
                    shared.stop.store(true, Ordering::SeqCst);
                }
                if last_report.elapsed() >= Duration::from_secs(15) {
                    last_report = Instant::now();
                    eprintln!(
                        "rebuild: load at position {at} of {until_position} ({:.0} positions/s)",
                        (at - first) as f64 / start.elapsed().as_secs_f64()
                    );
                }
            }
        })
    };
    let mut outcomes = BTreeMap::new();
    let mut failure = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(o)) => merge_outcomes(&mut outcomes, o),
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(e);
            }
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(e.into());
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let _ = watcher.await;
    match failure {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

pub(crate) fn print_outcomes(outcomes: &BTreeMap<&'static str, Outcome>) {
    println!(
        "  {:<22} {:>10} {:>9}  first failure",
        "request", "ok", "failed"
    );
    for (label, o) in outcomes {
        let first = o
            .first_error
            .as_deref()
            .map(|e| e.chars().take(140).collect::<String>())
            .unwrap_or_default();
        println!("  {label:<22} {:>10} {:>9}  {first}", o.ok, o.failed);
    }
}

// ---------------------------------------------------------------------------------------------
// rebuild

/// One projector's rebuild.
struct Rebuilt {
    name: &'static str,
    took: Duration,
    batches: usize,
    /// (table, rows) of its shadow tables.
    tables: Vec<(&'static str, i64)>,
    parked: i64,
}

/// One table of the raw baseline: its rows, fetched as JSON arrays of up to 1,000.
struct RawTable {
    /// Its projector's index in `projections::all()`.
    projector: usize,
    shadow: String,
    raw: String,
    columns: String,
    chunks: Vec<String>,
    rows: i64,
    took: Duration,
}

/// Rows per fetched chunk and per INSERT of the raw baseline.
const RAW_CHUNK: usize = 1_000;

/// Starts `chronicle serve --roles api` for loading the command mix over HTTP, with the
/// tokens and client the load tasks share; `what` names the bench in its log lines.
pub(crate) async fn start_load_server(
    ctx: &Ctx,
    clients: usize,
    what: &str,
) -> anyhow::Result<(crate::Server, Arc<Minter>, Arc<Shared>)> {
    let server = ctx.start_server_with_roles("api").await?;
    eprintln!(
        "{what}: chronicle (--roles api) is serving at {} (pid {})",
        server.base,
        server.pid()
    );
    let minter = Arc::new(Minter::new(&ctx.secret));
    let shared = Arc::new(Shared {
        api: Api {
            client: http_client(clients)?,
            base: server.base.clone(),
        },
        people: Vec::new(),
        payments: minter.mint("bench-payments", &["payments"])?,
        admin: minter.mint("bench-admin", &["admin"])?,
        arbiter: minter.mint("bench-arbiter", &["arbiter"])?,
        run_id: ctx.run_id.clone(),
        seq: AtomicU64::new(0),
        max_position: AtomicI64::new(0),
        stop: AtomicBool::new(false),
    });
    Ok((server, minter, shared))
}

pub(crate) async fn run_rebuild(ctx: &Ctx, admin_url: &str) -> anyhow::Result<()> {
    let a = &ctx.args;
    let projectors = projections::all();
    if projectors.is_empty() {
        bail!("projections::all() is empty: nothing to rebuild");
    }
    let clients = a.concurrency.max(1);

    let jobs = projectors.len();
    let pool = connect(&ctx.db_url, jobs as u32 + 3).await?;
    if ctx.reused {
        return rebuild_measure(ctx, admin_url, pool, None).await;
    }

    // 1. Load over HTTP, API only.
    let (mut server, minter, shared) = start_load_server(ctx, clients, "rebuild").await?;
    eprintln!(
        "rebuild: opening {} customers (account, EUR wallet, deposit; half with KYC)",
        a.accounts
    );
    let t0 = Instant::now();
    let (people, mut outcomes) = open_people(&shared, &minter, a.accounts, clients).await?;
    let setup_took = t0.elapsed();
    let setup_requests: u64 = outcomes.values().map(|o| o.ok + o.failed).sum();
    let shared = Arc::new(shared.with_people(people));
    let setup_events = count_events(&pool).await?;
    eprintln!(
        "rebuild: {setup_events} events of setup in {:.1} s; loading the mix from {clients} clients \
         up to {} events",
        setup_took.as_secs_f64(),
        a.events
    );

    let load_start = Instant::now();
    let mut until = a.events;
    let mut round = 0u64;
    let mut total = setup_events;
    while total < a.events {
        let o = mix_round(&shared, clients, until, 0x5EED + round).await?;
        merge_outcomes(&mut outcomes, o);
        total = count_events(&pool).await?;
        // Positions of rolled-back inserts leave gaps: go on for the missing events.
        until += a.events - total;
        round += 1;
    }
    let load_took = load_start.elapsed();
    let mix_requests = outcomes.values().map(|o| o.ok + o.failed).sum::<u64>() - setup_requests;
    server.stop();
    eprintln!(
        "rebuild: loaded {} events in {:.1} s ({:.0} events/s); server stopped",
        total - setup_events,
        load_took.as_secs_f64(),
        (total - setup_events) as f64 / load_took.as_secs_f64()
    );
    let load = Loaded {
        clients,
        setup_events,
        setup_took,
        setup_requests,
        load_took,
        mix_requests,
        outcomes,
    };
    rebuild_measure(ctx, admin_url, pool, Some(load)).await
}

/// What loading the log for the rebuild did.
struct Loaded {
    clients: usize,
    setup_events: i64,
    setup_took: Duration,
    setup_requests: u64,
    load_took: Duration,
    mix_requests: u64,
    outcomes: BTreeMap<&'static str, Outcome>,
}

/// The rebuild's measurements on a loaded log (`load`: how it was loaded, or `None` for a
/// database reused from an earlier run, whose chain is not measured again).
async fn rebuild_measure(
    ctx: &Ctx,
    admin_url: &str,
    pool: PgPool,
    load: Option<Loaded>,
) -> anyhow::Result<()> {
    let projectors = projections::all();
    let jobs = projectors.len();
    let total = count_events(&pool).await?;
    if total == 0 {
        bail!("the database has no events to rebuild from");
    }
    // A reused database may hold shadows and raw tables of an earlier run.
    for projector in &projectors {
        rebuild::discard(&pool, projector.as_ref()).await?;
    }
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
         AND tablename LIKE 'bench\\_raw\\_%'",
    )
    .fetch_all(&pool)
    .await?;
    for t in stale {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await?;
    }

    // 2. The log must be fully readable (no transaction anywhere in the cluster holding the
    // horizon below its end), and, like a production database, have planner statistics.
    let waited = wait_for_horizon(&pool, total).await?;
    sqlx::query("ANALYZE events").execute(&pool).await?;
    let per_type: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_type, count(*) FROM events GROUP BY stream_type ORDER BY 2 DESC",
    )
    .fetch_all(&pool)
    .await?;

    // 3. The rebuild, in-process, as `chronicle projections rebuild all` does it: one shared
    // read of the log, every projector applying on its own connection.
    eprintln!(
        "rebuild: rebuilding {} projectors from {total} events (rebuild::build_all)",
        projectors.len()
    );
    let wal0 = wal_sample(&ctx.db_url).await;
    let cpu0 = cpu_sample(None);
    let start = Instant::now();
    let finished: Arc<
        std::sync::Mutex<std::collections::HashMap<&'static str, (Duration, usize)>>,
    > = Arc::default();
    let seen = finished.clone();
    rebuild::build_all(&pool, projectors.clone(), move |name, _, _| {
        if let Ok(mut m) = seen.lock() {
            let e = m.entry(name).or_insert((Duration::ZERO, 0));
            e.0 = start.elapsed();
            e.1 += 1;
        }
    })
    .await
    .context("rebuild::build_all")?;
    let rebuild_took = start.elapsed();
    let finished = finished
        .lock()
        .map_err(|_| anyhow!("progress lock poisoned"))?
        .clone();
    let mut rebuilt: Vec<Rebuilt> = projectors
        .iter()
        .map(|p| {
            let (took, batches) = finished.get(p.name()).copied().unwrap_or_default();
            Rebuilt {
                name: p.name(),
                took,
                batches,
                tables: Vec::new(),
                parked: 0,
            }
        })
        .collect();
    let mut rebuild_stats = Stats::new("rebuild (in-process)");
    rebuild_stats.elapsed = rebuild_took;
    rebuild_stats.cpu = cpu_share(&cpu0, &cpu_sample(None));
    rebuild_stats.wal = wal_delta(wal0, wal_sample(&ctx.db_url).await);

    // Diagnostic (not part of the rebuild's time): one pass over the log as the shared reader
    // reads it (`read_all`, same batch size), applying nothing.
    let scan_took = scan_log(&pool).await?;

    // Every projector took in every event of its stream types once, and parked none
    // (outside the timing).
    for (r, projector) in rebuilt.iter_mut().zip(&projectors) {
        let key = projections::runtime::rebuild_key(r.name);
        let applied: i64 =
            sqlx::query_scalar("SELECT applied FROM projection_checkpoints WHERE name = $1")
                .bind(&key)
                .fetch_one(&pool)
                .await?;
        let types: Vec<String> = projector
            .stream_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let own: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_type = ANY($1)")
                .bind(&types)
                .fetch_one(&pool)
                .await?;
        if applied != own {
            bail!(
                "{}: the rebuild took in {applied} of the log's {own} events of its streams ({total} in all)",
                r.name
            );
        }
        r.parked =
            sqlx::query_scalar("SELECT count(*) FROM projection_parked WHERE projector = $1")
                .bind(&key)
                .fetch_one(&pool)
                .await?;
        for table in projector.tables() {
            let rows: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.{table}",
                rebuild::shadow_schema(r.name)
            ))
            .fetch_one(&pool)
            .await?;
            r.tables.push((table, rows));
        }
    }

    // 4. The raw baseline: the same rows, INSERTed from the client 1,000 per statement.
    let raw_tables = prepare_raw(&pool, &projectors).await?;
    let rows_total: i64 = raw_tables.iter().map(|t| t.rows).sum();
    let chunks_total: usize = raw_tables.iter().map(|t| t.chunks.len()).sum();
    eprintln!(
        "raw: inserting {rows_total} rows in {chunks_total} multi-row INSERTs into copies of {} tables",
        raw_tables.len()
    );
    let (raw_tables, raw_serial) = insert_raw(ctx, &pool, raw_tables, 1).await?;
    check_raw(&pool, &raw_tables).await?;
    for t in &raw_tables {
        sqlx::query(&format!("TRUNCATE {}", t.raw))
            .execute(&pool)
            .await?;
    }
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    let serial_tables: Vec<(String, Duration)> = raw_tables
        .iter()
        .map(|t| (t.shadow.clone(), t.took))
        .collect();
    let (raw_tables, raw_parallel) = insert_raw(ctx, &pool, raw_tables, jobs).await?;
    check_raw(&pool, &raw_tables).await?;
    // The ratio is taken against the faster of the two baselines.
    let raw_stats = if raw_parallel.elapsed < raw_serial.elapsed {
        &raw_parallel
    } else {
        &raw_serial
    };
    // 5. The hash chain of the same log: sealing it from position 0, verifying it, and the
    // raw baseline of verification, a COPY of the same rows in the same order to the client.
    let chain = match load {
        Some(_) => Some(chain_figures(&pool, total).await?),
        None => None,
    };
    pool.close().await;

    // 5. Report.
    let setup = describe_setup(admin_url, ctx).await;
    let raw_took = raw_stats.elapsed;
    let eps = |d: Duration| total as f64 / d.as_secs_f64();
    println!();
    println!("==== Chronicle benchmark: rebuild ====");
    println!("{setup}");
    println!();
    match &load {
        Some(l) => println!(
            "Load (chronicle serve --roles api, {} clients, {} customers): setup {} \
             events in {:.1} s ({} requests); mix {} events in {:.1} s = {:.0} \
             events/s ({} requests, {:.0}/s)",
            l.clients,
            ctx.args.accounts,
            l.setup_events,
            l.setup_took.as_secs_f64(),
            l.setup_requests,
            total - l.setup_events,
            l.load_took.as_secs_f64(),
            (total - l.setup_events) as f64 / l.load_took.as_secs_f64(),
            l.mix_requests,
            l.mix_requests as f64 / l.load_took.as_secs_f64()
        ),
        None => println!("Log loaded by an earlier run (BENCH_REUSE_DATABASE), not loaded again"),
    }
    let types: Vec<String> = per_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("log: {total} events ({})", types.join(", "));
    if waited > Duration::from_millis(100) {
        println!(
            "  waited {:.1} s before the rebuild for a transaction elsewhere in the cluster \
             holding the log's horizon back",
            waited.as_secs_f64()
        );
    }
    if let Some(l) = &load {
        print_outcomes(&l.outcomes);
    }
    println!();
    println!(
        "Rebuild of {} projectors from position 0 (rebuild::build_all, as `chronicle projections \
         rebuild all`: one reader, batches of {} log events, each projector applying its events \
         on its own connection):",
        rebuilt.len(),
        rebuild::SHARED_READ_BATCH,
    );
    println!(
        "  {:<10} {:>9} {:>8} {:>7}  rows",
        "projector", "done at", "batches", "parked"
    );
    for r in &rebuilt {
        let rows: Vec<String> = r.tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
        println!(
            "  {:<10} {:>8.2}s {:>8} {:>7}  {}",
            r.name,
            r.took.as_secs_f64(),
            r.batches,
            r.parked,
            rows.join(", ")
        );
    }
    println!(
        "  {:<10} {:>8.2}s   = {:.0} events/s (log events / wall time of the whole rebuild)",
        "all",
        rebuild_took.as_secs_f64(),
        eps(rebuild_took)
    );
    println!(
        "  diagnostic: one read of the whole log alone (read_all, batches of {}, nothing \
         applied) takes {:.2} s ({:.0} events/s)",
        rebuild::SHARED_READ_BATCH,
        scan_took.as_secs_f64(),
        eps(scan_took),
    );
    println!();
    println!(
        "Raw baseline: {rows_total} rebuilt rows INSERTed into empty copies (LIKE ... INCLUDING \
         ALL) with INSERT ... SELECT FROM jsonb_populate_recordset, {RAW_CHUNK} rows per \
         statement, autocommit (the fetch of the rows as JSON is not timed); once on one \
         connection, table after table, then on {jobs} connections (one per projector) at once:"
    );
    println!(
        "  {:<36} {:>9} {:>12} {:>12}",
        "table", "rows", "1 conn (s)", "parallel (s)"
    );
    for (t, (_, serial)) in raw_tables.iter().zip(&serial_tables) {
        println!(
            "  {:<36} {:>9} {:>12.2} {:>12.2}",
            t.shadow,
            t.rows,
            serial.as_secs_f64(),
            t.took.as_secs_f64(),
        );
    }
    for r in [&raw_serial, &raw_parallel] {
        println!(
            "  {:<36} {:>9} {:>9.2} s = {:.0} rows/s = {:.0} log events/s equivalent",
            format!("all, {}", r.name),
            rows_total,
            r.elapsed.as_secs_f64(),
            rows_total as f64 / r.elapsed.as_secs_f64(),
            eps(r.elapsed)
        );
    }
    let ratio = raw_took.as_secs_f64() / rebuild_took.as_secs_f64();
    let verdict = if ratio >= 0.85 { "met" } else { "NOT met" };
    println!(
        "ratio rebuild throughput / raw throughput ({:.0} / {:.0} events/s): {ratio:.3} \
         (target >= 0.85: {verdict})",
        eps(rebuild_took),
        eps(raw_took)
    );
    println!("(chronicle serve is stopped here; \"bench client\" is the in-process rebuild)");
    println!();
    if let Some(chain) = &chain {
        print_chain(chain, total);
    }
    for s in [&rebuild_stats, &raw_serial, &raw_parallel] {
        if let Some(line) = cpu_line(s) {
            println!("{line}");
        }
        if let Some((syncs, bytes)) = s.wal {
            println!(
                "  WAL during \"{}\": {syncs} flushes, {:.1} MB",
                s.name,
                bytes as f64 / 1e6
            );
        }
    }
    Ok(())
}

/// The hash chain's figures of a rebuild run.
fn print_chain(chain: &ChainFigures, total: i64) {
    let eps = |d: Duration| total as f64 / d.as_secs_f64();
    println!("Hash chain of the same {total} events (projections::chain):");
    println!(
        "  sealing from position 0 (the chain projector, batches of 5,000): {:.2} s = {:.0} events/s",
        chain.seal.as_secs_f64(),
        eps(chain.seal)
    );
    println!(
        "  verify (one REPEATABLE READ snapshot, batches of {}): {:.2} s = {:.0} events/s, {}",
        projections::chain::VERIFY_BATCH,
        chain.verify.as_secs_f64(),
        eps(chain.verify),
        if chain.ok {
            "the chain holds"
        } else {
            "BROKEN"
        }
    );
    println!(
        "  raw: COPY (SELECT every column FROM events ORDER BY tx, position) TO STDOUT, read by \
         the client: {:.2} s = {:.0} events/s ({:.1} MB)",
        chain.copy.as_secs_f64(),
        eps(chain.copy),
        chain.copy_bytes as f64 / 1e6
    );
    println!(
        "  ratio verify / raw COPY: {:.3} (target >= 0.5: {})",
        chain.copy.as_secs_f64() / chain.verify.as_secs_f64(),
        if chain.copy.as_secs_f64() / chain.verify.as_secs_f64() >= 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// Reads the whole log once with `schemas::log::read_all` in batches of
/// `rebuild::REBUILD_BATCH` (rows decoded, nothing applied); how long that took.
async fn scan_log(pool: &PgPool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut cursor = schemas::Cursor::START;
    loop {
        let events = schemas::log::read_all(pool, cursor, rebuild::REBUILD_BATCH).await?;
        let Some(last) = events.last() else { break };
        cursor = schemas::Cursor {
            tx: last.tx,
            position: last.position,
        };
    }
    Ok(start.elapsed())
}

/// Waits until every one of the log's `total` events is below the transaction horizon;
/// returns how long that took.
pub(crate) async fn wait_for_horizon(pool: &PgPool, total: i64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut said = Instant::now();
    loop {
        let readable: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events \
             WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(pool)
        .await?;
        if readable >= total {
            return Ok(start.elapsed());
        }
        if said.elapsed() > Duration::from_secs(10) {
            said = Instant::now();
            eprintln!(
                "rebuild: {readable} of {total} events below the horizon: a transaction elsewhere \
                 in the cluster holds it back; waiting"
            );
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the log's horizon did not pass its end within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the empty copies and fetches the rebuilt rows as JSON chunks.
async fn prepare_raw(
    pool: &PgPool,
    projectors: &[Arc<dyn projections::Projector>],
) -> anyhow::Result<Vec<RawTable>> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (index, projector) in projectors.iter().enumerate() {
        let schema = rebuild::shadow_schema(projector.name());
        for table in projector.tables() {
            let shadow = format!("{schema}.{table}");
            let mut raw = format!("bench_raw_{table}");
            if !names.insert(raw.clone()) {
                raw = format!("bench_raw_{}_{table}", projector.name());
                names.insert(raw.clone());
            }
            sqlx::query(&format!("CREATE TABLE {raw} (LIKE {shadow} INCLUDING ALL)"))
                .execute(pool)
                .await
                .with_context(|| format!("creating {raw}"))?;
            let columns: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) \
                 FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
                   AND NOT attisdropped AND attgenerated = ''",
            )
            .bind(&shadow)
            .fetch_one(pool)
            .await?;
            let columns = columns.ok_or_else(|| anyhow!("{shadow} has no columns"))?;
            let fetch_sql = format!("SELECT to_jsonb(t)::text FROM {shadow} t");
            let mut rows = sqlx::query_scalar::<_, String>(&fetch_sql).fetch(pool);
            let mut chunks = Vec::new();
            let mut chunk = String::from("[");
            let mut in_chunk = 0usize;
            let mut count = 0i64;
            while let Some(row) = rows.try_next().await? {
                if in_chunk > 0 {
                    chunk.push(',');
                }
                chunk.push_str(&row);
                in_chunk += 1;
                count += 1;
                if in_chunk == RAW_CHUNK {
                    chunk.push(']');
                    chunks.push(std::mem::replace(&mut chunk, String::from("[")));
                    in_chunk = 0;
                }
            }
            if in_chunk > 0 {
                chunk.push(']');
                chunks.push(chunk);
            }
            out.push(RawTable {
                projector: index,
                shadow,
                raw,
                columns,
                chunks,
                rows: count,
                took: Duration::ZERO,
            });
        }
    }
    Ok(out)
}

/// Inserts every chunk, one autocommit statement each: the tables of one projector one after
/// the other on one connection, `jobs` projectors at a time, on connections opened before the
/// clock starts.
async fn insert_raw(
    ctx: &Ctx,
    pool: &PgPool,
    tables: Vec<RawTable>,
    jobs: usize,
) -> anyhow::Result<(Vec<RawTable>, Stats)> {
    let mut held = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        held.push(pool.acquire().await?);
    }
    drop(held);
    let mut groups: BTreeMap<usize, Vec<RawTable>> = BTreeMap::new();
    for t in tables {
        groups.entry(t.projector).or_default().push(t);
    }
    let wal0 = wal_sample(&ctx.db_url).await;
    let cpu0 = cpu_sample(None);
    let start = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut set = JoinSet::new();
    for (_, mut group) in groups {
        let pool = pool.clone();
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = pool.acquire().await?;
            for t in &mut group {
                let sql = format!(
                    "INSERT INTO {raw} ({cols}) SELECT {cols} \
                     FROM jsonb_populate_recordset(NULL::{raw}, $1::jsonb)",
                    raw = t.raw,
                    cols = t.columns
                );
                let t0 = Instant::now();
                for chunk in &t.chunks {
                    sqlx::query(&sql)
                        .bind(chunk.as_str())
                        .execute(&mut *conn)
                        .await
                        .with_context(|| format!("inserting into {}", t.raw))?;
                }
                t.took = t0.elapsed();
            }
            anyhow::Ok(group)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r??);
    }
    let mut stats = Stats::new(&if jobs == 1 {
        "raw INSERTs, 1 connection".to_owned()
    } else {
        format!("raw INSERTs, {jobs} connections")
    });
    stats.elapsed = start.elapsed();
    stats.cpu = cpu_share(&cpu0, &cpu_sample(None));
    stats.wal = wal_delta(wal0, wal_sample(&ctx.db_url).await);
    out.sort_by_key(|t| t.projector);
    Ok((out, stats))
}

/// Timings of the hash chain over the bench's log.
pub(crate) struct ChainFigures {
    pub(crate) seal: Duration,
    pub(crate) verify: Duration,
    pub(crate) ok: bool,
    pub(crate) copy: Duration,
    pub(crate) copy_bytes: usize,
}

pub(crate) async fn chain_figures(pool: &PgPool, total: i64) -> anyhow::Result<ChainFigures> {
    use projections::chain::ChainProjector;
    let start = Instant::now();
    let mut sealer = projections::Worker::live(
        pool.clone(),
        Arc::new(ChainProjector),
        projections::WorkerConfig {
            batch: 5_000,
            ..Default::default()
        },
    );
    sealer.load().await?;
    sealer.catch_up(|_, _| {}).await?;
    let seal = start.elapsed();

    let start = Instant::now();
    let report = projections::chain::verify_snapshot(pool, |_| {}).await?;
    let verify = start.elapsed();
    if report.checked != total as u64 {
        bail!("verify checked {} of {total} events", report.checked);
    }

    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT {} FROM events ORDER BY tx, position) TO STDOUT",
            schemas::log::EVENT_COLUMNS
        ))
        .await?;
    let mut copy_bytes = 0usize;
    while let Some(chunk) = out.try_next().await? {
        copy_bytes += chunk.len();
    }
    let copy = start.elapsed();
    Ok(ChainFigures {
        seal,
        verify,
        ok: report.ok,
        copy,
        copy_bytes,
    })
}

/// Every raw table holds as many rows as its shadow.
async fn check_raw(pool: &PgPool, tables: &[RawTable]) -> anyhow::Result<()> {
    for t in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", t.raw))
            .fetch_one(pool)
            .await?;
        if n != t.rows {
            bail!("{}: {n} rows inserted, {} expected", t.raw, t.rows);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// lag

/// When the event at `$1` is applied by each named projector: the event's transaction and the
/// checkpoints' cursors; applied exactly when (event tx, $1) <= (checkpoint tx, position).
/// The last column says whether the event's transaction is below the oldest one running in
/// the cluster, that is whether any tailer of the log (`schemas::log::read_all`) can read it.
const LAG_SQL: &str = "SELECT e.tx, c.name, c.tx, c.position, \
            e.tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
     FROM projection_checkpoints c LEFT JOIN events e ON e.position = $1 \
     WHERE c.name = ANY($2)";

/// A row of [`LAG_SQL`]: event tx, projector, checkpoint tx and position, readable.
type LagRow = (Option<i64>, String, i64, i64, Option<bool>);

/// The name of the probe's extra series: when the event became readable by tailers.
const READABLE: &str = "(log readable)";

/// A probe gives up on a projector after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Visibility delays of the probes, per projector.
struct ProbeReport {
    /// Per projector: delays from the deposit's answer to the poll that saw it applied.
    lags: Vec<Stats>,
    /// Per projector: probes already applied at the first poll.
    at_first_poll: Vec<u64>,
    /// Per projector: probes not applied within PROBE_TIMEOUT.
    timeouts: Vec<u64>,
    /// The probe's own deposits.
    deposits: Stats,
}

/// What a probe needs: the API and a payments token, its own wallet, a small pool of its
/// own, the projectors to watch and the pause between probes.
#[derive(Clone)]
struct Probe {
    api: Api,
    token: Arc<String>,
    wallet: Uuid,
    pg: PgPool,
    names: Vec<String>,
    every: Duration,
}

/// Probes for `run_for`: one deposit every `every`, then polls every 1 ms until each
/// projector has applied it.
async fn probe(p: Probe, run_for: Duration, tag: &'static str) -> anyhow::Result<ProbeReport> {
    let Probe {
        api,
        token,
        wallet,
        pg,
        names,
        every,
    } = p;
    // One series per projector, then READABLE.
    let series = names.len() + 1;
    let mut report = ProbeReport {
        lags: names
            .iter()
            .map(|n| Stats::new(n))
            .chain([Stats::new(READABLE)])
            .collect(),
        at_first_poll: vec![0; series],
        timeouts: vec![0; series],
        deposits: Stats::new("probe deposits"),
    };
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0u64;
    while start.elapsed() < run_for {
        tick.tick().await;
        k += 1;
        let sent = Instant::now();
        let answer = api
            .deposit(&token, wallet, &format!("probe-{tag}-{k}"))
            .await?;
        let arrived = Instant::now();
        if !answer.ok() {
            report.deposits.error(answer.describe());
            continue;
        }
        report
            .deposits
            .latencies_us
            .push((arrived - sent).as_micros() as u64);
        let position = answer
            .json()?
            .get("position")
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("a deposit's answer has no position"))?;
        let mut seen = vec![false; series];
        let mut first = true;
        loop {
            let rows: Vec<LagRow> = sqlx::query_as(LAG_SQL)
                .bind(position)
                .bind(&names)
                .fetch_all(&pg)
                .await?;
            let now = Instant::now();
            let mut record = |i: usize, seen: &mut [bool]| {
                if !seen[i] {
                    seen[i] = true;
                    report.lags[i]
                        .latencies_us
                        .push((now - arrived).as_micros() as u64);
                    if first {
                        report.at_first_poll[i] += 1;
                    }
                }
            };
            for (event_tx, name, tx, at, readable) in rows {
                let Some(event_tx) = event_tx else { continue };
                if readable == Some(true) {
                    record(series - 1, &mut seen);
                }
                let Some(i) = names.iter().position(|n| *n == name) else {
                    continue;
                };
                if (event_tx, position) <= (tx, at) {
                    record(i, &mut seen);
                }
            }
            if seen.iter().all(|s| *s) {
                break;
            }
            if now - arrived > PROBE_TIMEOUT {
                for (i, s) in seen.iter().enumerate() {
                    if !s {
                        report.timeouts[i] += 1;
                    }
                }
                break;
            }
            first = false;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let elapsed = start.elapsed();
    for s in &mut report.lags {
        s.finish(elapsed);
    }
    report.deposits.finish(elapsed);
    Ok(report)
}

/// Waits until every named checkpoint stands at or past the log's last event (in commit
/// order); how long that took.
async fn wait_caught_up(
    pg: &PgPool,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let head: Option<(i64, i64)> =
        sqlx::query_as("SELECT tx, position FROM events ORDER BY tx DESC, position DESC LIMIT 1")
            .fetch_optional(pg)
            .await?;
    let Some(head) = head else {
        return Ok(Duration::ZERO);
    };
    loop {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT tx, position FROM projection_checkpoints WHERE name = ANY($1)")
                .bind(names)
                .fetch_all(pg)
                .await?;
        if rows.len() == names.len() && rows.iter().all(|c| *c >= head) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "the projectors did not reach the log's end (position {}) within {} s",
                head.1,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn print_probe(title: &str, r: &ProbeReport) {
    println!("{title}");
    println!(
        "  {:<14} {:>7} {:>13} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "projector", "probes", "at 1st poll", "p50 ms", "p90 ms", "p99 ms", "max ms", "timeouts"
    );
    for (i, s) in r.lags.iter().enumerate() {
        println!(
            "  {:<14} {:>7} {:>13} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            s.name,
            s.latencies_us.len(),
            r.at_first_poll[i],
            s.quantile_ms(0.50),
            s.quantile_ms(0.90),
            s.quantile_ms(0.99),
            s.max_ms(),
            r.timeouts[i]
        );
    }
    if let Some(e) = &r.deposits.first_error {
        println!("  {} probe deposits failed, first: {e}", r.deposits.errors);
    }
}

pub(crate) async fn run_lag(ctx: &Ctx, admin_url: &str) -> anyhow::Result<()> {
    let a = &ctx.args;
    let live: Vec<String> = projections::all()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    let names: Vec<String> = ["wallets", "stats"]
        .into_iter()
        .filter(|n| live.iter().any(|l| l == n))
        .map(str::to_owned)
        .collect();
    if !names.iter().any(|n| n == "wallets") {
        bail!("no `wallets` projector in projections::all(): nothing to probe");
    }
    let n = a.concurrency.max(1);
    let duration = Duration::from_secs(a.duration.max(1));
    let every = Duration::from_millis(a.probe_interval_ms.max(1));

    let mut server = ctx
        .start_server_with_roles("api,projectors,processes")
        .await?;
    eprintln!(
        "lag: chronicle (--roles api,projectors,processes) is serving at {} (pid {})",
        server.base,
        server.pid()
    );
    let api = Api {
        client: http_client(n + 1)?,
        base: server.base.clone(),
    };
    let payments = Arc::new(ctx.token("bench-payments", "payments")?);
    eprintln!("lag: opening {n} customers with one EUR wallet each, and the probe's");
    let wallets = open_deposit_wallets(ctx, &api, n).await?;
    let probe_owner = ctx.token("bench-probe", "customer")?;
    let probe_wallet = api
        .open_customer_wallet(&probe_owner, &format!("{}-probe", ctx.run_id))
        .await?;
    let pg = connect(&ctx.db_url, 2).await?;
    wait_caught_up(&pg, &live, Duration::from_secs(60))
        .await
        .context("waiting for the projectors to start")?;

    // Idle: the probe alone.
    let idle_for = Duration::from_secs(3).min(duration);
    eprintln!("lag: probing for {} s with no load", idle_for.as_secs());
    let prober = Probe {
        api: api.clone(),
        token: payments.clone(),
        wallet: probe_wallet,
        pg: pg.clone(),
        names,
        every,
    };
    let idle = probe(prober.clone(), idle_for, "idle").await?;

    // Under load: the deposits of `n` clients, and the probe.
    eprintln!(
        "lag: {n} clients posting deposits for {} s, probing every {} ms",
        duration.as_secs(),
        every.as_millis()
    );
    let wal0 = wal_sample(&ctx.db_url).await;
    let cpu0 = cpu_sample(Some(server.pid()));
    let probing = tokio::spawn(probe(prober, duration, "load"));
    let load = deposit_load(&api, wallets, payments, duration).await;
    let load_end = Instant::now();
    let loaded = probing.await?;
    let mut load = load?;
    let loaded = loaded?;
    load.cpu = cpu_share(&cpu0, &cpu_sample(Some(server.pid())));
    load.wal = wal_delta(wal0, wal_sample(&ctx.db_url).await);
    wait_caught_up(&pg, &live, Duration::from_secs(300)).await?;
    let caught_up = load_end.elapsed();
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
        .fetch_one(&pg)
        .await?;
    let events = count_events(&pg).await?;
    pg.close().await;
    server.stop();

    let setup = describe_setup(admin_url, ctx).await;
    println!();
    println!("==== Chronicle benchmark: lag ====");
    println!("{setup}");
    println!();
    println!(
        "Live lag = from a deposit's answer arriving at the client to the first poll (every 1 ms, \
         straight to PostgreSQL) seeing the event's (tx, position) <= the projector's checkpoint \
         (tx, position); one probe every {} ms.",
        every.as_millis()
    );
    print_probe(
        &format!("Idle ({} s, no other load):", idle_for.as_secs()),
        &idle,
    );
    print_probe(
        &format!(
            "Under load ({} s of deposits from {n} clients):",
            duration.as_secs()
        ),
        &loaded,
    );
    if let Some(w) = loaded.lags.first() {
        let p99 = w.quantile_ms(0.99);
        let verdict = if p99 <= 100.0 && loaded.timeouts[0] == 0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "p99 live lag of {} under load: {p99:.2} ms (target <= 100 ms: {verdict})",
            w.name
        );
    }
    println!();
    println!("Deposits in the same run (the load, without the probe's):");
    println!("{}", stats_header());
    println!("{}", stats_row(&load));
    if let Some(e) = &load.first_error {
        println!("  {} errors, first: {e}", load.errors);
    }
    if let Some(line) = cpu_line(&load) {
        println!("{line}");
    }
    if let Some((syncs, _)) = load.wal {
        println!(
            "  WAL during the load: {:.0} flushes/s",
            syncs as f64 / load.elapsed.as_secs_f64()
        );
    }
    println!(
        "All {} projectors at the log's end {:.1} ms after the load stopped; {events} events in \
         the log, {parked} parked.",
        live.len(),
        caught_up.as_secs_f64() * 1000.0
    );
    Ok(())
}
