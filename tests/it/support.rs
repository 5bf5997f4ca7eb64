//! Test support: a fresh database per test, the app on it, tokens and requests.

#![allow(dead_code)]

use api::{AppState, AuthConfig};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use commands::pg::PgEventStore;
use commands::{CommandService, Role, ServiceConfig, SystemClock};
use http_body_util::BodyExt;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use tower::ServiceExt;
use uuid::Uuid;

/// The secret test tokens are signed with.
pub const SECRET: &[u8] = b"test-secret-for-chronicle-tests";

fn admin_url() -> String {
    std::env::var("CHRONICLE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn url_for(db: &str) -> String {
    let base = admin_url();
    match base.rfind('/') {
        Some(i) => format!("{}/{db}", &base[..i]),
        None => format!("{base}/{db}"),
    }
}

/// A database created for one test and dropped when the test ends (even if it fails).
pub struct TestDb {
    /// A pool on it.
    pub pool: PgPool,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Self {
        Self::with_pool_size(20).await
    }

    /// Creates and migrates a fresh database with a pool of `size` connections.
    pub async fn with_pool_size(size: u32) -> Self {
        let name = format!("chronicle_test_{}", Uuid::now_v7().simple());
        let admin = commands::db::connect(&admin_url(), 1)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = url_for(&name);
        let pool = commands::db::connect(&url, size)
            .await
            .expect("connect to the test database");
        commands::db::migrate(&pool).await.expect("migrate");
        Self { pool, name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = commands::db::connect(&admin_url(), 1).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The app on a fresh database.
pub struct TestApp {
    /// The database (dropped with the app).
    pub db: TestDb,
    /// The router.
    pub router: Router,
    /// The shared state.
    pub state: AppState,
    auth: AuthConfig,
    /// Stops the projector workers when the app is dropped.
    projectors: tokio::sync::watch::Sender<bool>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.projectors.send(true);
    }
}

/// Runs every projector on `pool`, woken by `service`'s commits, until `shutdown` turns true.
pub fn spawn_projectors(
    pool: &PgPool,
    service: &CommandService,
    shutdown: &tokio::sync::watch::Sender<bool>,
) {
    for projector in projections::all() {
        let worker = projections::Worker::live(
            pool.clone(),
            projector,
            projections::WorkerConfig {
                idle_poll: std::time::Duration::from_millis(20),
                ..Default::default()
            },
        );
        tokio::spawn(worker.run(Some(service.commits()), shutdown.subscribe()));
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body as JSON (Null when empty or not JSON).
    pub body: Value,
}

impl Answer {
    /// The `id` field of a command answer.
    pub fn id(&self) -> Uuid {
        self.body["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("an id in the answer")
    }
}

impl TestApp {
    /// The app with the default configuration.
    pub async fn new() -> Self {
        Self::with_config(ServiceConfig::default()).await
    }

    /// The app with a service configuration.
    pub async fn with_config(config: ServiceConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock)).await
    }

    /// The app with a service configuration and a clock.
    pub async fn with_clock(config: ServiceConfig, clock: Arc<dyn commands::Clock>) -> Self {
        Self::build(config, clock, true).await
    }

    /// The app without projector workers: the test drives them.
    pub async fn without_projectors() -> Self {
        Self::build(ServiceConfig::default(), Arc::new(SystemClock), false).await
    }

    async fn build(config: ServiceConfig, clock: Arc<dyn commands::Clock>, run: bool) -> Self {
        let db = TestDb::new().await;
        let store = PgEventStore::new(db.pool.clone(), 2);
        let service = CommandService::new(store, clock, config);
        let projectors = tokio::sync::watch::Sender::new(false);
        if run {
            spawn_projectors(&db.pool, &service, &projectors);
        }
        let auth = AuthConfig::hs256(SECRET, None, None);
        let state = AppState {
            service: Arc::new(service),
            auth: Arc::new(auth.clone()),
            pool: db.pool.clone(),
            telemetry: ingest::group::GroupWriter::new(db.pool.clone(), 2),
        };
        let router = api::router(state.clone());
        Self {
            db,
            router,
            state,
            auth,
            projectors,
        }
    }

    /// A valid token for `sub` with `roles`.
    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        self.auth.mint(sub, roles, 3600).expect("mint a token")
    }

    /// Sends a request with an optional bearer token, JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        // Queries read what was committed before them: wait for the last event of the log
        // (in commit order), whichever command or process wrote it. Under a loaded machine a
        // read model may stay behind longer than the server's wait: the query is then asked
        // again, as a client does with a 504 `read_model_behind`, for up to a minute.
        let implicit_position = method == Method::GET
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-min-position"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let mut req = Request::builder().method(method.clone()).uri(path);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let body = match &body {
                Some(v) => {
                    req = req.header("content-type", "application/json");
                    Body::from(serde_json::to_vec(v).expect("serialize"))
                }
                None => Body::empty(),
            };
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if implicit_position {
                if let Some(p) = self.log_head().await {
                    req = req.header("x-min-position", p.to_string());
                }
            }
            let answer = self.raw(req.body(body).expect("a request")).await;
            let behind = answer.status == StatusCode::GATEWAY_TIMEOUT
                && answer.body["code"] == "read_model_behind";
            if !(implicit_position && behind && std::time::Instant::now() < deadline) {
                return answer;
            }
        }
    }

    /// Sends a prepared request.
    pub async fn raw(&self, req: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(token), Some(body), &[])
            .await
    }

    /// GET.
    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None, &[]).await
    }

    /// Opens an account for `sub` (customer) and returns its id and the customer token.
    pub async fn customer(&self, sub: &str) -> (Uuid, String) {
        let token = self.token(sub, &[Role::Customer]);
        let a = self
            .post(
                "/v1/accounts",
                &token,
                serde_json::json!({"email": format!("{sub}@example.com"), "display_name": sub}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "open account: {:?}", a.body);
        (a.id(), token)
    }

    /// Opens a wallet in `currency` with the owner's token.
    pub async fn wallet(&self, token: &str, currency: &str) -> Uuid {
        let a = self
            .post(
                "/v1/wallets",
                token,
                serde_json::json!({"currency": currency}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "open wallet: {:?}", a.body);
        a.id()
    }

    /// Deposits `amount` into `wallet` as the payment provider.
    pub async fn deposit(&self, wallet: Uuid, amount: i64) -> Answer {
        let psp = self.token("psp", &[Role::Payments]);
        let r = format!("dep-{}", Uuid::now_v7());
        self.post(
            &format!("/v1/wallets/{wallet}/deposits"),
            &psp,
            serde_json::json!({"amount": amount, "external_ref": r}),
        )
        .await
    }

    /// The wallet as GET returns it (as admin).
    pub async fn wallet_view(&self, wallet: Uuid) -> Value {
        let admin = self.token("admin", &[Role::Admin]);
        let a = self.get(&format!("/v1/wallets/{wallet}"), &admin).await;
        assert_eq!(a.status, StatusCode::OK, "get wallet: {:?}", a.body);
        a.body
    }

    /// The position of the last event of the log in commit order, if any.
    pub async fn log_head(&self) -> Option<i64> {
        sqlx::query_scalar("SELECT position FROM events ORDER BY tx DESC, position DESC LIMIT 1")
            .fetch_optional(&self.db.pool)
            .await
            .expect("read the log head")
    }

    /// How many events the log holds.
    /// `customers` customers, each with a funded EUR wallet, and a transfer from each to the
    /// next: a log of a few dozen events of two stream types.
    pub async fn customers_with_transfers(&self, customers: usize) {
        let mut wallets = Vec::new();
        for i in 0..customers {
            let (_, token) = self
                .customer(&format!("t{i}-{}", Uuid::now_v7().simple()))
                .await;
            let wallet = self.wallet(&token, "EUR").await;
            assert_eq!(self.deposit(wallet, 50_000).await.status, StatusCode::OK);
            wallets.push((token, wallet));
        }
        for pair in wallets.windows(2) {
            let answer = self
                .post(
                    "/v1/transfers",
                    &pair[0].0,
                    serde_json::json!({"from_wallet": pair[0].1, "to_wallet": pair[1].1, "amount": 250, "memo": "rent"}),
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        }
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.db.pool)
            .await
            .expect("count events")
    }
}

/// Worker settings for tests: batches of `batch`, quick polls and retries.
pub fn small_batches(batch: i64) -> projections::WorkerConfig {
    projections::WorkerConfig {
        batch,
        idle_poll: std::time::Duration::from_millis(10),
        attempts: 3,
        backoff: std::time::Duration::from_millis(5),
        coalesce: std::time::Duration::ZERO,
    }
}
