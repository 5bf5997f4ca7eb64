//! As-of for orders, escrows, pots and devices: during a workload the state `GET` answered
//! after each command is recorded, and `GET /v1/{type}s/{id}/as-of` by version, at the time
//! of that version's event and a microsecond before the next event must reproduce it (the
//! wallet and account cases are in `audit.rs`).

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// Two customers with funded EUR wallets, and the staff's tokens.
struct Cast {
    app: TestApp,
    buyer_token: String,
    buyer_wallet: Uuid,
    seller: Uuid,
    seller_token: String,
    seller_wallet: Uuid,
    admin: String,
    auditor: String,
    arbiter: String,
}

async fn cast() -> Cast {
    let app = TestApp::new().await;
    let (_, buyer_token) = app.customer("asof-buyer").await;
    let (seller, seller_token) = app.customer("asof-seller").await;
    let buyer_wallet = app.wallet(&buyer_token, "EUR").await;
    let seller_wallet = app.wallet(&seller_token, "EUR").await;
    for wallet in [buyer_wallet, seller_wallet] {
        assert_eq!(app.deposit(wallet, 100_000).await.status, StatusCode::OK);
    }
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    let arbiter = app.token("arbiter", &[Role::Arbiter]);
    Cast {
        app,
        buyer_token,
        buyer_wallet,
        seller,
        seller_token,
        seller_wallet,
        admin,
        auditor,
        arbiter,
    }
}

/// What GET answered after each command, for one aggregate.
struct Recorded {
    /// `orders`, `escrows`, `pots` or `devices`.
    route: &'static str,
    /// `order`, `escrow`, `pot` or `device`.
    stream_type: &'static str,
    id: Uuid,
    views: Vec<Value>,
}

impl Cast {
    /// Sends a command and asserts it succeeded.
    async fn ok(&self, path: &str, token: &str, body: Value) -> Answer {
        let a = self.app.post(path, token, body).await;
        assert!(a.status.is_success(), "POST {path}: {:?}", a.body);
        a
    }

    /// Records what `GET /v1/{route}/{id}` answers the admin now.
    async fn record(&self, r: &mut Recorded) {
        let a = self
            .app
            .get(&format!("/v1/{}/{}", r.route, r.id), &self.admin)
            .await;
        assert_eq!(a.status, StatusCode::OK, "GET {}: {:?}", r.route, a.body);
        r.views.push(a.body);
    }

    async fn as_of(&self, r: &Recorded, query: &str) -> Answer {
        let a = self
            .app
            .get(
                &format!("/v1/{}/{}/as-of?{query}", r.route, r.id),
                &self.auditor,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "as-of {query}: {:?}", a.body);
        assert_eq!(a.body["stream_type"], r.stream_type);
        assert_eq!(a.body["id"], r.id.to_string());
        a
    }

    /// Every recorded view is reproduced by as-of by its version, at the time of its event
    /// and a microsecond before the next event; `same(view, state, what)` compares the view
    /// with the rebuilt state.
    async fn assert_as_of_reproduces(&self, r: &Recorded, same: fn(&Value, &Value, &str)) {
        let history = self
            .app
            .get(
                &format!("/v1/audit/streams/{}/{}?limit=1000", r.stream_type, r.id),
                &self.auditor,
            )
            .await;
        assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
        let events = history.body["events"].as_array().expect("events").clone();
        let time = |e: &Value| -> DateTime<Utc> {
            e["occurred_at"]
                .as_str()
                .expect("a time")
                .parse()
                .expect("RFC 3339")
        };
        let micros = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut versions = Vec::new();
        for view in &r.views {
            let version = view["version"].as_i64().expect("a version");
            versions.push(version);
            let what = format!("{} {} version {version}", r.stream_type, r.id);
            let a = self.as_of(r, &format!("version={version}")).await;
            assert_eq!(a.body["version"], version, "{what}");
            let event = &events[(version - 1) as usize];
            assert_eq!(a.body["as_of"], event["occurred_at"], "{what}");
            assert_eq!(a.body["position"], event["position"], "{what}");
            same(view, &a.body["state"], &what);

            let at = time(event);
            let a = self.as_of(r, &format!("at={}", micros(at))).await;
            assert_eq!(a.body["version"], version, "{what}, at {at}");
            same(view, &a.body["state"], &format!("{what}, at {at}"));
            if let Some(next) = events.get(version as usize) {
                let just_before = time(next) - Duration::microseconds(1);
                let a = self.as_of(r, &format!("at={}", micros(just_before))).await;
                assert_eq!(a.body["version"], version, "{what}, just before the next");
                same(
                    view,
                    &a.body["state"],
                    &format!("{what}, just before the next"),
                );
            }
        }
        // The workload recorded the whole stream, state after state.
        assert_eq!(
            versions.last().copied(),
            Some(events.len() as i64),
            "the last view is the stream's end"
        );
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "each command moved the stream on: {versions:?}"
        );
        // Before the first event: nothing.
        let before = micros(time(&events[0]) - Duration::seconds(1));
        let a = self
            .app
            .get(
                &format!("/v1/{}/{}/as-of?at={before}", r.route, r.id),
                &self.auditor,
            )
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
    }
}

/// `view[f] == state[f]` for each field `f`.
fn same_fields(view: &Value, state: &Value, fields: &[&str], what: &str) {
    for f in fields {
        assert_eq!(view[f], state[f], "{what}: field {f}");
    }
}

fn same_order(view: &Value, state: &Value, what: &str) {
    same_fields(
        view,
        state,
        &[
            "id",
            "buyer",
            "seller",
            "currency",
            "total",
            "use_escrow",
            "escrow_id",
            "paid_wallet",
            "paid_amount",
            "refunded_amount",
            "status",
            "carrier",
            "tracking",
            "cancelled_by",
        ],
        what,
    );
    let lines = |v: &Value, with_amount: bool| -> Vec<Value> {
        v["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| {
                if with_amount {
                    assert_eq!(
                        l["amount"].as_i64(),
                        Some(
                            l["quantity"].as_i64().expect("quantity")
                                * l["unit_price"].as_i64().expect("price")
                        )
                    );
                }
                json!([l["sku"], l["description"], l["quantity"], l["unit_price"]])
            })
            .collect()
    };
    assert_eq!(lines(view, true), lines(state, false), "{what}: lines");
}

fn same_escrow(view: &Value, state: &Value, what: &str) {
    same_fields(
        view,
        state,
        &[
            "id",
            "buyer",
            "buyer_wallet",
            "seller",
            "currency",
            "amount",
            "terms",
            "order_id",
            "status",
            "resolution",
        ],
        what,
    );
    let dispute = |v: &Value| json!([v["dispute"]["raised_by"], v["dispute"]["reason"]]);
    assert_eq!(dispute(view), dispute(state), "{what}: dispute");
}

fn same_pot(view: &Value, state: &Value, what: &str) {
    same_fields(
        view,
        state,
        &[
            "id",
            "owner",
            "beneficiary",
            "title",
            "currency",
            "target_amount",
            "visibility",
            "status",
            "raised",
            "paid_out",
        ],
        what,
    );
    let contributions = state["contributions"].as_array().expect("contributions");
    assert_eq!(
        view["contribution_count"].as_u64(),
        Some(contributions.len() as u64),
        "{what}: contribution count"
    );
    // (id, amount, refunded), by id: the view lists the newest first.
    let sorted = |list: &Value| -> Vec<Value> {
        let mut v: Vec<Value> = list
            .as_array()
            .expect("contributions")
            .iter()
            .map(|c| json!([c["contribution_id"], c["amount"], c["refunded"]]))
            .collect();
        v.sort_by_key(|c| c[0].as_str().unwrap_or_default().to_owned());
        v
    };
    assert_eq!(
        sorted(&view["contributions"]),
        sorted(&state["contributions"]),
        "{what}: contributions"
    );
    let mut invited: Vec<Value> = view["invited"].as_array().cloned().unwrap_or_default();
    invited.sort_by_key(|c| c.as_str().unwrap_or_default().to_owned());
    assert_eq!(json!(invited), state["invited"], "{what}: invited");
}

fn same_device(view: &Value, state: &Value, what: &str) {
    same_fields(
        view,
        state,
        &[
            "id",
            "owner",
            "serial",
            "model",
            "firmware_version",
            "status",
            "last_update_outcome",
        ],
        what,
    );
    let pending = |v: &Value| {
        json!([
            v["pending_update"]["target_version"],
            v["pending_update"]["artifact_url"],
            v["pending_update"]["sha256"]
        ])
    };
    assert_eq!(pending(view), pending(state), "{what}: pending update");
    // Never the credential, but the state knows whether one works.
    assert_eq!(
        state["credential_hash"].is_string(),
        matches!(view["status"].as_str(), Some("active" | "suspended")),
        "{what}: a credential exactly while active or suspended"
    );
}

#[tokio::test]
async fn as_of_rebuilds_each_state_of_an_order_that_get_answered() {
    let c = cast().await;
    let place = |use_escrow: bool| {
        json!({"seller": c.seller, "currency": "EUR", "use_escrow": use_escrow, "lines": [
            {"sku": "mug", "description": "A mug", "quantity": 2, "unit_price": 1500},
            {"sku": "tea", "description": "Tea", "quantity": 1, "unit_price": 500}]})
    };
    // Paid directly, shipped, delivered, then partly refunded.
    let a = c.ok("/v1/orders", &c.buyer_token, place(false)).await;
    let mut direct = Recorded {
        route: "orders",
        stream_type: "order",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut direct).await;
    let id = direct.id;
    let path = move |what: &str| format!("/v1/orders/{id}/{what}");
    let steps = [
        (
            path("pay"),
            &c.buyer_token,
            json!({"wallet": c.buyer_wallet}),
        ),
        (
            path("ship"),
            &c.seller_token,
            json!({"carrier": "DHL", "tracking": "JD0001"}),
        ),
        (path("confirm-delivery"), &c.buyer_token, json!({})),
        (
            path("refunds"),
            &c.seller_token,
            json!({"amount": 700, "reason": "damaged box"}),
        ),
    ];
    for (p, token, body) in steps {
        c.ok(&p, token, body).await;
        c.record(&mut direct).await;
    }
    let last = direct.views.last().expect("a view");
    assert_eq!(last["status"], "delivered");
    assert_eq!(last["refunded_amount"], 700);
    c.assert_as_of_reproduces(&direct, same_order).await;

    // Paid and cancelled by the seller with a refund.
    let a = c.ok("/v1/orders", &c.buyer_token, place(false)).await;
    let mut cancelled = Recorded {
        route: "orders",
        stream_type: "order",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut cancelled).await;
    let id = cancelled.id;
    let path = move |what: &str| format!("/v1/orders/{id}/{what}");
    c.ok(
        &path("pay"),
        &c.buyer_token,
        json!({"wallet": c.buyer_wallet}),
    )
    .await;
    c.record(&mut cancelled).await;
    c.ok(
        &path("cancel"),
        &c.seller_token,
        json!({"reason": "out of stock"}),
    )
    .await;
    c.record(&mut cancelled).await;
    let last = cancelled.views.last().expect("a view");
    assert_eq!(last["status"], "cancelled");
    assert_eq!(last["cancelled_by"], "seller");
    c.assert_as_of_reproduces(&cancelled, same_order).await;
}

#[tokio::test]
async fn as_of_rebuilds_each_state_of_an_escrow_that_get_answered() {
    let c = cast().await;
    let open = |amount: i64| {
        json!({"buyer_wallet": c.buyer_wallet, "seller": c.seller, "amount": amount,
               "terms": "a used bike, as seen",
               "expires_at": (Utc::now() + Duration::days(7)).to_rfc3339()})
    };
    // Funded, disputed, split by the arbiter.
    let a = c.ok("/v1/escrows", &c.buyer_token, open(3_500)).await;
    let mut disputed = Recorded {
        route: "escrows",
        stream_type: "escrow",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut disputed).await;
    let id = disputed.id;
    let path = move |what: &str| format!("/v1/escrows/{id}/{what}");
    let steps = [
        (path("fund"), &c.buyer_token, json!({})),
        (
            path("disputes"),
            &c.seller_token,
            json!({"reason": "the buyer keeps it"}),
        ),
        (
            path("disputes/resolve"),
            &c.arbiter,
            json!({"to_seller": 2_000, "to_buyer": 1_500}),
        ),
    ];
    for (p, token, body) in steps {
        c.ok(&p, token, body).await;
        c.record(&mut disputed).await;
    }
    let last = disputed.views.last().expect("a view");
    assert_eq!(last["status"], "resolved");
    assert_eq!(last["resolution"], json!([2_000, 1_500]));
    c.assert_as_of_reproduces(&disputed, same_escrow).await;

    // Funded and released by the buyer.
    let a = c.ok("/v1/escrows", &c.buyer_token, open(1_000)).await;
    let mut released = Recorded {
        route: "escrows",
        stream_type: "escrow",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut released).await;
    for what in ["fund", "release"] {
        c.ok(
            &format!("/v1/escrows/{}/{what}", released.id),
            &c.buyer_token,
            json!({}),
        )
        .await;
        c.record(&mut released).await;
    }
    assert_eq!(released.views.last().expect("a view")["status"], "released");
    c.assert_as_of_reproduces(&released, same_escrow).await;
}

#[tokio::test]
async fn as_of_rebuilds_each_state_of_a_pot_that_get_answered() {
    let c = cast().await;
    let create = |visibility: &str| {
        json!({"beneficiary": c.seller, "title": "A gift", "currency": "EUR",
               "target_amount": 20_000,
               "closes_at": (Utc::now() + Duration::days(7)).to_rfc3339(),
               "visibility": visibility})
    };
    let (guest, guest_token) = c.app.customer("asof-guest").await;
    let guest_wallet = c.app.wallet(&guest_token, "EUR").await;
    assert_eq!(
        c.app.deposit(guest_wallet, 10_000).await.status,
        StatusCode::OK
    );
    // Private: an invitation, two contributions (one anonymous), closed and paid out.
    let a = c.ok("/v1/pots", &c.buyer_token, create("private")).await;
    let mut paid = Recorded {
        route: "pots",
        stream_type: "pot",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut paid).await;
    let id = paid.id;
    let path = move |what: &str| format!("/v1/pots/{id}/{what}");
    let steps = [
        (
            path("invitations"),
            &c.buyer_token,
            json!({"account": guest}),
        ),
        (
            path("contributions"),
            &c.buyer_token,
            json!({"wallet": c.buyer_wallet, "amount": 2_500, "message": "happy birthday"}),
        ),
        (
            path("contributions"),
            &guest_token,
            json!({"wallet": guest_wallet, "amount": 1_200, "anonymous": true}),
        ),
        (path("close"), &c.buyer_token, json!({})),
        (path("payout"), &c.buyer_token, json!({})),
    ];
    for (p, token, body) in steps {
        c.ok(&p, token, body).await;
        c.record(&mut paid).await;
    }
    let last = paid.views.last().expect("a view");
    assert_eq!(last["status"], "paid_out");
    assert_eq!(last["paid_out"], 3_700);
    c.assert_as_of_reproduces(&paid, same_pot).await;

    // Public: contributions, then cancelled (refunded).
    let a = c.ok("/v1/pots", &c.buyer_token, create("public")).await;
    let mut cancelled = Recorded {
        route: "pots",
        stream_type: "pot",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut cancelled).await;
    let id = cancelled.id;
    let path = move |what: &str| format!("/v1/pots/{id}/{what}");
    let steps = [
        (
            path("contributions"),
            &guest_token,
            json!({"wallet": guest_wallet, "amount": 800}),
        ),
        (
            path("contributions"),
            &c.seller_token,
            json!({"wallet": c.seller_wallet, "amount": 300}),
        ),
        (
            path("cancel"),
            &c.buyer_token,
            json!({"reason": "plans changed"}),
        ),
    ];
    for (p, token, body) in steps {
        c.ok(&p, token, body).await;
        c.record(&mut cancelled).await;
    }
    let last = cancelled.views.last().expect("a view");
    assert_eq!(last["status"], "cancelled");
    c.assert_as_of_reproduces(&cancelled, same_pot).await;
}

#[tokio::test]
async fn as_of_rebuilds_each_state_of_a_device_that_get_answered() {
    let c = cast().await;
    let owner = &c.buyer_token;
    let a = c
        .ok(
            "/v1/devices",
            owner,
            json!({"serial": "SN-ASOF-1", "model": "Thermo 3", "firmware_version": "1.0.0"}),
        )
        .await;
    let mut device = Recorded {
        route: "devices",
        stream_type: "device",
        id: a.id(),
        views: Vec::new(),
    };
    c.record(&mut device).await;
    let id = device.id;
    let path = move |what: &str| format!("/v1/devices/{id}/{what}");
    let firmware = |target: &str| {
        json!({"target_version": target,
               "artifact_url": format!("https://firmware.example.com/t3/{target}.bin"),
               "sha256": "ab".repeat(32)})
    };
    let activated = c.ok(&path("activate"), owner, json!({})).await;
    let credential = activated.body["credential"]
        .as_str()
        .expect("a credential")
        .to_owned();
    c.record(&mut device).await;
    c.ok(&path("firmware"), owner, firmware("1.1.0")).await;
    c.record(&mut device).await;
    // The device reports with its own credential.
    let report = c
        .app
        .send(
            Method::POST,
            &path("firmware/report"),
            None,
            Some(json!({"version": "1.1.0", "outcome": "applied"})),
            &[("authorization", &format!("Device {credential}"))],
        )
        .await;
    assert!(report.status.is_success(), "{:?}", report.body);
    c.record(&mut device).await;
    c.ok(&path("firmware"), owner, firmware("1.2.0")).await;
    c.record(&mut device).await;
    c.ok(&path("suspend"), owner, json!({"reason": "lost"}))
        .await;
    c.record(&mut device).await;
    c.ok(
        &path("decommission"),
        &c.admin,
        json!({"reason": "scrapped"}),
    )
    .await;
    c.record(&mut device).await;
    let statuses: Vec<&str> = device
        .views
        .iter()
        .map(|v| v["status"].as_str().expect("a status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "registered",
            "active",
            "active",
            "active",
            "active",
            "suspended",
            "decommissioned"
        ]
    );
    assert_eq!(device.views[3]["firmware_version"], "1.1.0");
    assert_eq!(device.views[3]["last_update_outcome"], "applied");
    c.assert_as_of_reproduces(&device, same_device).await;
}
