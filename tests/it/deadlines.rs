//! Deadline processes with a clock the tests move: escrows released at `release_after` and
//! refunded at `expires_at`, unshipped paid orders cancelled after 14 days; each deadline
//! fires exactly once, across restarts and deadlines that passed while nothing ran.

use crate::support::TestApp;
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use commands::pg::PgEventStore;
use commands::processes::{self, fire_due, schedule_step};
use commands::{CommandService, ManualClock, ServiceConfig};
use rand::Rng;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

struct Clocked {
    app: TestApp,
    clock: Arc<ManualClock>,
    buyer_token: String,
    buyer_wallet: Uuid,
    seller: Uuid,
    seller_token: String,
}

async fn clocked() -> Clocked {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let app = TestApp::with_clock(ServiceConfig::default(), clock.clone()).await;
    let (_, buyer_token) = app.customer("deadline-buyer").await;
    let (seller, seller_token) = app.customer("deadline-seller").await;
    let buyer_wallet = app.wallet(&buyer_token, "EUR").await;
    assert_eq!(
        app.deposit(buyer_wallet, 100_000).await.status,
        StatusCode::OK
    );
    Clocked {
        app,
        clock,
        buyer_token,
        buyer_wallet,
        seller,
        seller_token,
    }
}

impl Clocked {
    async fn escrow(&self, amount: i64, release_in: Duration, expires_in: Duration) -> Uuid {
        let now = self.clock_now();
        let body = json!({
            "buyer_wallet": self.buyer_wallet,
            "seller": self.seller,
            "amount": amount,
            "terms": "t",
            "release_after": (now + release_in).to_rfc3339(),
            "expires_at": (now + expires_in).to_rfc3339(),
        });
        let opened = self.app.post("/v1/escrows", &self.buyer_token, body).await;
        assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
        let id = opened.id();
        let funded = self
            .app
            .post(
                &format!("/v1/escrows/{id}/fund"),
                &self.buyer_token,
                json!({}),
            )
            .await;
        assert_eq!(funded.status, StatusCode::OK, "{:?}", funded.body);
        id
    }

    fn clock_now(&self) -> chrono::DateTime<Utc> {
        commands::Clock::now(self.clock.as_ref())
    }

    fn service(&self) -> &CommandService {
        &self.app.state.service
    }

    /// Lets the scheduler catch up with the whole log, then fires what is due.
    async fn tick(&self) -> usize {
        self.catch_up().await;
        fire_due(self.service(), &self.app.db.pool, self.clock_now(), 100)
            .await
            .expect("fire")
    }

    /// `read_all` only returns events below the cluster's oldest running transaction, and
    /// other tests' transactions share the cluster: wait until the scheduler has read all.
    async fn catch_up(&self) {
        for _ in 0..500 {
            schedule_step(&self.app.db.pool, 100)
                .await
                .expect("schedule");
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM process_checkpoints c \
                 WHERE c.name = 'deadline_scheduler' AND (e.tx, e.position) <= (c.tx, c.position))",
            )
            .fetch_one(&self.app.db.pool)
            .await
            .expect("lag");
            if behind == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the scheduler did not catch up with the log in 10 s");
    }

    async fn count(&self, event_type: &str, stream: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1 AND stream_id = $2")
            .bind(event_type)
            .bind(stream)
            .fetch_one(&self.app.db.pool)
            .await
            .expect("count")
    }

    async fn seller_balance(&self) -> i64 {
        let w: Option<Uuid> =
            sqlx::query_scalar("SELECT stream_id FROM claims WHERE scope = 'wallet' AND key = $1")
                .bind(format!("{}:EUR", self.seller))
                .fetch_optional(&self.app.db.pool)
                .await
                .expect("claims");
        match w {
            Some(w) => self.app.wallet_view(w).await["balance"]
                .as_i64()
                .expect("balance"),
            None => 0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escrow_is_released_at_release_after_once_and_its_refund_deadline_then_does_nothing() {
    let c = clocked().await;
    let id = c.escrow(4_000, Duration::hours(1), Duration::days(2)).await;
    assert_eq!(c.tick().await, 0, "nothing is due yet");
    c.clock.advance(Duration::minutes(61));
    assert_eq!(c.tick().await, 1);
    assert_eq!(c.count("EscrowReleased", id).await, 1);
    assert_eq!(c.seller_balance().await, 4_000);
    let released_by: String = sqlx::query_scalar(
        "SELECT actor_sub FROM events WHERE event_type = 'EscrowReleased' AND stream_id = $1",
    )
    .bind(id)
    .fetch_one(&c.app.db.pool)
    .await
    .expect("actor");
    assert_eq!(released_by, "system:deadlines");
    assert_eq!(c.tick().await, 0, "fired once");
    c.clock.advance(Duration::days(3));
    assert_eq!(c.tick().await, 1, "the refund deadline is settled");
    assert_eq!(
        c.count("EscrowRefunded", id).await,
        0,
        "a released escrow is never refunded"
    );
    assert_eq!(c.seller_balance().await, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_escrow_is_refunded_but_not_while_disputed() {
    let c = clocked().await;
    let plain = c.escrow(1_000, Duration::days(5), Duration::days(5)).await;
    let disputed = c.escrow(2_000, Duration::days(5), Duration::days(5)).await;
    let raised = c
        .app
        .post(
            &format!("/v1/escrows/{disputed}/disputes"),
            &c.seller_token,
            json!({"reason": "no"}),
        )
        .await;
    assert_eq!(raised.status, StatusCode::OK);
    c.clock.advance(Duration::days(6));
    c.tick().await;
    // Release and refund fall due at the same moment: exactly one of them pays out.
    let paid = c.count("EscrowReleased", plain).await + c.count("EscrowRefunded", plain).await;
    assert_eq!(paid, 1);
    assert_eq!(
        c.count("EscrowReleased", disputed).await + c.count("EscrowRefunded", disputed).await,
        0,
        "a dispute freezes it"
    );
    let buyer = c.app.wallet_view(c.buyer_wallet).await["balance"]
        .as_i64()
        .expect("balance");
    assert_eq!(
        buyer + c.seller_balance().await + 2_000,
        100_000,
        "money conserved (2,000 still in escrow)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_order_not_shipped_in_14_days_is_cancelled_and_refunded() {
    let c = clocked().await;
    let body = json!({"seller": c.seller, "currency": "EUR", "lines": [{"sku": "a", "description": "a", "quantity": 1, "unit_price": 3_000}]});
    let order = c
        .app
        .post("/v1/orders", &c.buyer_token, body.clone())
        .await
        .id();
    let shipped = c.app.post("/v1/orders", &c.buyer_token, body).await.id();
    for o in [order, shipped] {
        let paid = c
            .app
            .post(
                &format!("/v1/orders/{o}/pay"),
                &c.buyer_token,
                json!({"wallet": c.buyer_wallet}),
            )
            .await;
        assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    }
    let ship = c
        .app
        .post(
            &format!("/v1/orders/{shipped}/ship"),
            &c.seller_token,
            json!({"carrier": "c", "tracking": "t"}),
        )
        .await;
    assert_eq!(ship.status, StatusCode::OK);
    c.clock.advance(Duration::days(13));
    c.tick().await;
    assert_eq!(c.count("OrderCancelled", order).await, 0, "not yet");
    c.clock.advance(Duration::days(2));
    c.tick().await;
    assert_eq!(c.count("OrderCancelled", order).await, 1);
    assert_eq!(
        c.count("OrderCancelled", shipped).await,
        0,
        "a shipped order stays"
    );
    let buyer = c.app.wallet_view(c.buyer_wallet).await["balance"]
        .as_i64()
        .expect("balance");
    assert_eq!(
        buyer,
        100_000 - 3_000,
        "the unshipped order's payment came back"
    );
    assert_eq!(c.seller_balance().await, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_repeated_after_a_crash_before_it_was_marked_done_performs_nothing() {
    let c = clocked().await;
    let id = c.escrow(1_500, Duration::hours(1), Duration::days(1)).await;
    c.clock.advance(Duration::hours(2));
    c.catch_up().await;
    let due: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT due_at FROM timers WHERE kind = 'escrow_release'")
            .fetch_one(&c.app.db.pool)
            .await
            .expect("timer");
    // The step commits, then the runner "crashes" before marking the timer done, twice.
    let first = c
        .service()
        .fire(processes::kind::ESCROW_RELEASE, id, due)
        .await
        .expect("fire")
        .expect("performed");
    let events = c.app.event_count().await;
    let again = c
        .service()
        .fire(processes::kind::ESCROW_RELEASE, id, due)
        .await
        .expect("fire")
        .expect("performed");
    assert_eq!(
        (again.id, again.version),
        (first.id, first.version),
        "the repeat answers with the first step"
    );
    assert_eq!(c.app.event_count().await, events, "and appends nothing");
    assert_eq!(c.tick().await, 1, "the timer is then settled");
    assert_eq!(c.count("EscrowReleased", id).await, 1);
    assert_eq!(c.seller_balance().await, 1_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_process_runner_20_times_fires_every_deadline_exactly_once() {
    let c = clocked().await;
    let mut escrows = Vec::new();
    for i in 0..12 {
        escrows.push(
            c.escrow(1_000, Duration::minutes(10 + i), Duration::days(3))
                .await,
        );
    }
    // Every deadline passes while nothing runs.
    c.clock.advance(Duration::hours(1));
    let mut rng = rand::thread_rng();
    for _ in 0..20 {
        // A new process each time: its own cache and writers, the same database.
        let store = PgEventStore::new(c.app.db.pool.clone(), 1);
        let service = Arc::new(CommandService::new(
            store,
            c.clock.clone(),
            ServiceConfig::default(),
        ));
        let runner = tokio::spawn(processes::run(
            service,
            c.app.db.pool.clone(),
            std::future::pending(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(0..25))).await;
        runner.abort();
        let _ = runner.await;
    }
    let store = PgEventStore::new(c.app.db.pool.clone(), 1);
    let service = Arc::new(CommandService::new(
        store,
        c.clock.clone(),
        ServiceConfig::default(),
    ));
    let runner = tokio::spawn(processes::run(
        service,
        c.app.db.pool.clone(),
        std::future::pending(),
    ));
    // Until every release is done (a generous bound: on a loaded machine the runner's
    // catch-up after 20 kills can take well over ten seconds).
    for _ in 0..1200 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM timers WHERE done_at IS NULL AND kind = 'escrow_release'",
        )
        .fetch_one(&c.app.db.pool)
        .await
        .expect("timers");
        let scheduled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM timers WHERE kind = 'escrow_release'")
                .fetch_one(&c.app.db.pool)
                .await
                .expect("timers");
        if scheduled == 12 && open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    runner.abort();
    for e in &escrows {
        assert_eq!(
            c.count("EscrowReleased", *e).await,
            1,
            "escrow {e} released exactly once"
        );
    }
    assert_eq!(c.seller_balance().await, 12_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_firmware_update_not_reported_in_24_hours_is_marked_failed() {
    let c = clocked().await;
    let device = c
        .app
        .post(
            "/v1/devices",
            &c.seller_token,
            json!({"serial": "SN-24H", "model": "m", "firmware_version": "1.0"}),
        )
        .await;
    assert_eq!(device.status, StatusCode::CREATED, "{:?}", device.body);
    let id = device.id();
    assert_eq!(
        c.app
            .post(
                &format!("/v1/devices/{id}/activate"),
                &c.seller_token,
                json!({})
            )
            .await
            .status,
        StatusCode::OK
    );
    let update = json!({"target_version": "2.0", "artifact_url": "https://example.com/fw.bin", "sha256": "a".repeat(64)});
    let scheduled = c
        .app
        .post(
            &format!("/v1/devices/{id}/firmware"),
            &c.seller_token,
            update,
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::OK, "{:?}", scheduled.body);
    c.clock.advance(Duration::hours(23));
    c.tick().await;
    assert_eq!(c.count("FirmwareUpdateFailed", id).await, 0, "not yet");
    c.clock.advance(Duration::hours(2));
    assert_eq!(c.tick().await, 1);
    assert_eq!(c.count("FirmwareUpdateFailed", id).await, 1);
    assert_eq!(c.tick().await, 0, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pot_closes_at_closes_at_and_then_takes_no_contribution() {
    let c = clocked().await;
    let (beneficiary, _) = c.app.customer("deadline-beneficiary").await;
    let closes_at = (c.clock_now() + Duration::days(2)).to_rfc3339();
    let pot = c
        .app
        .post("/v1/pots", &c.buyer_token, json!({"beneficiary": beneficiary, "title": "Gift", "currency": "EUR", "closes_at": closes_at, "visibility": "public"}))
        .await;
    assert_eq!(pot.status, StatusCode::CREATED, "{:?}", pot.body);
    let id = pot.id();
    c.tick().await;
    assert_eq!(c.count("PotClosed", id).await, 0);
    c.clock.advance(Duration::days(2) + Duration::seconds(1));
    assert_eq!(c.tick().await, 1);
    assert_eq!(c.count("PotClosed", id).await, 1);
    let late = c
        .app
        .post(
            &format!("/v1/pots/{id}/contributions"),
            &c.buyer_token,
            json!({"wallet": c.buyer_wallet, "amount": 10}),
        )
        .await;
    assert_eq!(
        late.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        late.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_an_account_closes_its_wallets_and_decommissions_its_devices() {
    let c = clocked().await;
    let (account, token) = c.app.customer("leaving").await;
    let eur = c.app.wallet(&token, "EUR").await;
    let usd = c.app.wallet(&token, "USD").await;
    let device = c
        .app
        .post(
            "/v1/devices",
            &token,
            json!({"serial": "SN-LEAVE", "model": "m", "firmware_version": "1"}),
        )
        .await
        .id();
    // Obligations first: money in a wallet, a funded escrow, an open pot.
    c.app.deposit(eur, 500).await;
    let close_path = format!("/v1/accounts/{account}/close");
    let close = |reason: &'static str| c.app.post(&close_path, &token, json!({"reason": reason}));
    let refused = close("bye").await;
    assert_eq!(
        refused.body["code"], "account_has_obligations",
        "{:?}",
        refused.body
    );
    let withdrawn = c
        .app
        .post(
            &format!("/v1/wallets/{eur}/withdrawals"),
            &token,
            json!({"amount": 200, "external_ref": "out-1"}),
        )
        .await;
    assert_eq!(withdrawn.status, StatusCode::OK);
    let body = json!({"buyer_wallet": eur, "seller": c.seller, "amount": 300, "terms": "t", "expires_at": (c.clock_now() + Duration::days(1)).to_rfc3339()});
    let escrow = c.app.post("/v1/escrows", &token, body).await.id();
    assert_eq!(
        c.app
            .post(&format!("/v1/escrows/{escrow}/fund"), &token, json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        close("bye").await.body["code"],
        "account_has_obligations",
        "a funded escrow"
    );
    assert_eq!(
        c.app
            .post(
                &format!("/v1/escrows/{escrow}/refund"),
                &c.seller_token,
                json!({})
            )
            .await
            .status,
        StatusCode::OK
    );
    let withdrawn = c
        .app
        .post(
            &format!("/v1/wallets/{eur}/withdrawals"),
            &token,
            json!({"amount": 300, "external_ref": "out-2"}),
        )
        .await;
    assert_eq!(withdrawn.status, StatusCode::OK);
    let (friend, _) = c.app.customer("leaving-friend").await;
    let pot = c
        .app
        .post("/v1/pots", &token, json!({"beneficiary": friend, "title": "t", "currency": "EUR", "closes_at": (c.clock_now() + Duration::days(3)).to_rfc3339(), "visibility": "public"}))
        .await
        .id();
    assert_eq!(
        close("bye").await.body["code"],
        "account_has_obligations",
        "an open pot"
    );
    assert_eq!(
        c.app
            .post(
                &format!("/v1/pots/{pot}/cancel"),
                &token,
                json!({"reason": "never mind"})
            )
            .await
            .status,
        StatusCode::OK
    );

    let closed = close("bye").await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    c.tick().await;
    for w in [eur, usd] {
        assert_eq!(
            c.count("WalletClosed", w).await,
            1,
            "wallet {w} closed once"
        );
    }
    assert_eq!(c.count("DeviceDecommissioned", device).await, 1);
    assert_eq!(c.tick().await, 0, "the cascade ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_opted_in_account_gets_a_public_birthday_pot_30_days_ahead_every_year() {
    let c = clocked().await;
    let today = c.clock_now().date_naive();
    let birthday = today + Duration::days(40);
    // 30 years earlier; a 29 February birthday moves to the 28th to stay a date.
    let birth_date = chrono::NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&birthday) - 30,
        chrono::Datelike::month(&birthday),
        chrono::Datelike::day(&birthday).min(28),
    )
    .expect("a date");
    let birthday = chrono::NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&birthday),
        chrono::Datelike::month(&birthday),
        chrono::Datelike::day(&birth_date),
    )
    .expect("a date");
    let token = c.app.token("birthday-kid", &[commands::Role::Customer]);
    let opened = c
        .app
        .post(
            "/v1/accounts",
            &token,
            json!({"email": "kid@example.com", "display_name": "Kid", "birth_date": birth_date}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let account = opened.id();
    c.app.wallet(&token, "EUR").await;
    let pots = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE event_type = 'PotCreated' AND payload->>'beneficiary' = $1")
            .bind(account.to_string())
            .fetch_one(&c.app.db.pool)
            .await
            .expect("pots")
    };
    c.tick().await;
    assert_eq!(pots().await, 0, "not opted in");
    let opt_in = c
        .app
        .send(
            axum::http::Method::PATCH,
            &format!("/v1/accounts/{account}/profile"),
            Some(&token),
            Some(json!({"preferences": {"birthday_pot": true}})),
            &[],
        )
        .await;
    assert_eq!(opt_in.status, StatusCode::OK, "{:?}", opt_in.body);
    c.tick().await;
    assert_eq!(pots().await, 0, "the birthday is 40 days away");
    c.clock.advance(Duration::days(11));
    c.tick().await;
    assert_eq!(pots().await, 1, "created 30 days ahead");
    let (closes_at, visibility): (String, String) = sqlx::query_as(
        "SELECT payload->>'closes_at', payload->>'visibility' FROM events WHERE event_type = 'PotCreated' AND payload->>'beneficiary' = $1",
    )
    .bind(account.to_string())
    .fetch_one(&c.app.db.pool)
    .await
    .expect("the pot");
    assert!(
        closes_at.starts_with(&birthday.to_string()),
        "{closes_at} closes on {birthday}"
    );
    assert_eq!(visibility, "public");
    c.tick().await;
    assert_eq!(pots().await, 1, "once a year");
    c.clock.advance(Duration::days(366));
    c.tick().await;
    assert_eq!(pots().await, 2, "and again the next year");
}
