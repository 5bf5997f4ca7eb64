//! Orders over HTTP: paid directly or through an escrow, shipped, delivered, cancelled and
//! refunded, every money move in one commit, money conserved, parties checked.

use crate::support::{Answer, TestApp};
use axum::http::StatusCode;
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

struct Market {
    app: TestApp,
    buyer: Uuid,
    buyer_token: String,
    buyer_wallet: Uuid,
    seller: Uuid,
    seller_token: String,
}

async fn market() -> Market {
    let app = TestApp::new().await;
    let (buyer, buyer_token) = app.customer("buyer").await;
    let (seller, seller_token) = app.customer("seller").await;
    let buyer_wallet = app.wallet(&buyer_token, "EUR").await;
    assert_eq!(
        app.deposit(buyer_wallet, 10_000).await.status,
        StatusCode::OK
    );
    Market {
        app,
        buyer,
        buyer_token,
        buyer_wallet,
        seller,
        seller_token,
    }
}

impl Market {
    async fn place(&self, use_escrow: bool) -> Uuid {
        let body = json!({
            "seller": self.seller,
            "currency": "EUR",
            "lines": [
                {"sku": "mug", "description": "A mug", "quantity": 2, "unit_price": 1500},
                {"sku": "tea", "description": "Tea", "quantity": 1, "unit_price": 500}
            ],
            "use_escrow": use_escrow
        });
        let a = self.app.post("/v1/orders", &self.buyer_token, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.id()
    }

    async fn act(&self, order: Uuid, what: &str, token: &str, body: Value) -> Answer {
        self.app
            .post(&format!("/v1/orders/{order}/{what}"), token, body)
            .await
    }

    async fn balance(&self, wallet: Uuid) -> i64 {
        self.app.wallet_view(wallet).await["balance"]
            .as_i64()
            .expect("a balance")
    }

    async fn seller_wallet(&self) -> Option<Uuid> {
        sqlx::query_scalar("SELECT stream_id FROM claims WHERE scope = 'wallet' AND key = $1")
            .bind(format!("{}:EUR", self.seller))
            .fetch_optional(&self.app.db.pool)
            .await
            .expect("claims")
    }

    async fn order(&self, order: Uuid) -> Value {
        let a = self
            .app
            .get(&format!("/v1/orders/{order}"), &self.buyer_token)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body
    }

    /// Wallets plus funded escrows hold exactly what was deposited minus what was withdrawn.
    async fn assert_conserved(&self) {
        let pool = &self.app.db.pool;
        let net: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(CASE event_type WHEN 'FundsDeposited' THEN (payload->>'amount')::bigint \
             ELSE -(payload->>'amount')::bigint END), 0)::bigint FROM events \
             WHERE event_type IN ('FundsDeposited', 'FundsWithdrawn')",
        )
        .fetch_one(pool)
        .await
        .expect("net deposits");
        let wallets: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT stream_id FROM events WHERE stream_type = 'wallet'",
        )
        .fetch_all(pool)
        .await
        .expect("wallets");
        let mut total = 0;
        for w in wallets {
            total += self.balance(w).await;
        }
        let escrows: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT stream_id FROM events WHERE stream_type = 'escrow'",
        )
        .fetch_all(pool)
        .await
        .expect("escrows");
        let admin = self.app.token("admin", &[Role::Admin]);
        for e in escrows {
            let view = self.app.get(&format!("/v1/escrows/{e}"), &admin).await;
            assert_eq!(view.status, StatusCode::OK);
            if view.body["status"] == "funded" {
                total += view.body["amount"].as_i64().expect("an amount");
            }
        }
        assert_eq!(
            total, net,
            "wallets + funded escrows = deposits - withdrawals"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_direct_payment_moves_the_total_to_the_seller_in_one_commit() {
    let m = market().await;
    let order = m.place(false).await;
    assert_eq!(m.order(order).await["total"], 3500);
    assert!(
        m.seller_wallet().await.is_none(),
        "the seller has no EUR wallet yet"
    );
    let paid = m
        .act(
            order,
            "pay",
            &m.buyer_token,
            json!({"wallet": m.buyer_wallet}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    let seller_wallet = m.seller_wallet().await.expect("opened on the fly");
    assert_eq!(m.balance(m.buyer_wallet).await, 6_500);
    assert_eq!(m.balance(seller_wallet).await, 3_500);
    // One transaction: the order, the debit and the credit (with the wallet's opening).
    let txs: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT tx) FROM events WHERE position > $1 - 4 AND position <= $1",
    )
    .bind(paid.body["position"].as_i64().expect("a position"))
    .fetch_one(&m.app.db.pool)
    .await
    .expect("count");
    assert_eq!(txs, 1);
    let again = m
        .act(
            order,
            "pay",
            &m.buyer_token,
            json!({"wallet": m.buyer_wallet}),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.body["code"], "invalid_state");
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seller_ships_the_buyer_confirms_and_refunds_never_exceed_the_payment() {
    let m = market().await;
    let order = m.place(false).await;
    m.act(
        order,
        "pay",
        &m.buyer_token,
        json!({"wallet": m.buyer_wallet}),
    )
    .await;
    let ship = json!({"carrier": "DHL", "tracking": "123"});
    assert_eq!(
        m.act(order, "ship", &m.buyer_token, ship.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        m.act(order, "ship", &m.seller_token, ship).await.status,
        StatusCode::OK
    );
    assert_eq!(
        m.act(order, "confirm-delivery", &m.seller_token, json!({}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        m.act(order, "confirm-delivery", &m.buyer_token, json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(m.order(order).await["status"], "delivered");

    let refund = m
        .act(
            order,
            "refunds",
            &m.seller_token,
            json!({"amount": 1000, "reason": "damaged"}),
        )
        .await;
    assert_eq!(refund.status, StatusCode::OK, "{:?}", refund.body);
    assert_eq!(m.balance(m.buyer_wallet).await, 7_500);
    let seller_wallet = m.seller_wallet().await.expect("the seller's wallet");
    assert_eq!(m.balance(seller_wallet).await, 2_500);
    let before = m.app.event_count().await;
    let too_much = m
        .act(
            order,
            "refunds",
            &m.seller_token,
            json!({"amount": 2501, "reason": "again"}),
        )
        .await;
    assert_eq!(too_much.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_much.body["code"], "refund_exceeds_paid");
    assert_eq!(m.app.event_count().await, before, "nothing appended");
    assert_eq!(
        m.act(
            order,
            "refunds",
            &m.buyer_token,
            json!({"amount": 1, "reason": "x"})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let admin = m.app.token("admin", &[Role::Admin]);
    assert_eq!(
        m.act(
            order,
            "refunds",
            &admin,
            json!({"amount": 2500, "reason": "goodwill"})
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(m.order(order).await["refunded_amount"], 3500);
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_escrow_holds_the_payment_until_delivery_then_pays_the_seller() {
    let m = market().await;
    let order = m.place(true).await;
    let paid = m
        .act(
            order,
            "pay",
            &m.buyer_token,
            json!({"wallet": m.buyer_wallet}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(m.balance(m.buyer_wallet).await, 6_500);
    let escrow = m.order(order).await["escrow_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .expect("an escrow");
    let view = m
        .app
        .get(&format!("/v1/escrows/{escrow}"), &m.seller_token)
        .await;
    assert_eq!(view.body["status"], "funded");
    assert_eq!(view.body["amount"], 3500);
    assert!(
        m.seller_wallet().await.is_none(),
        "the seller gets nothing before delivery"
    );
    m.assert_conserved().await;

    m.act(
        order,
        "ship",
        &m.seller_token,
        json!({"carrier": "UPS", "tracking": "1Z"}),
    )
    .await;
    let done = m
        .act(order, "confirm-delivery", &m.buyer_token, json!({}))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let seller_wallet = m.seller_wallet().await.expect("opened on release");
    assert_eq!(m.balance(seller_wallet).await, 3_500);
    let view = m
        .app
        .get(&format!("/v1/escrows/{escrow}"), &m.buyer_token)
        .await;
    assert_eq!(view.body["status"], "released");
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seller_cancelling_a_paid_escrow_order_refunds_the_buyer_in_full() {
    let m = market().await;
    let order = m.place(true).await;
    m.act(
        order,
        "pay",
        &m.buyer_token,
        json!({"wallet": m.buyer_wallet}),
    )
    .await;
    let partial = m
        .act(
            order,
            "refunds",
            &m.seller_token,
            json!({"amount": 100, "reason": "partial"}),
        )
        .await;
    assert_eq!(partial.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(partial.body["code"], "escrow_holds_payment");
    assert_eq!(
        m.act(
            order,
            "cancel",
            &m.buyer_token,
            json!({"reason": "changed my mind"})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the buyer cancels only before payment"
    );
    let cancel = m
        .act(
            order,
            "cancel",
            &m.seller_token,
            json!({"reason": "out of stock"}),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);
    assert_eq!(m.balance(m.buyer_wallet).await, 10_000);
    assert_eq!(m.order(order).await["status"], "cancelled");
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seller_cancelling_a_paid_direct_order_pays_it_back() {
    let m = market().await;
    let order = m.place(false).await;
    m.act(
        order,
        "pay",
        &m.buyer_token,
        json!({"wallet": m.buyer_wallet}),
    )
    .await;
    let cancel = m
        .act(
            order,
            "cancel",
            &m.seller_token,
            json!({"reason": "out of stock"}),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);
    assert_eq!(m.balance(m.buyer_wallet).await, 10_000);
    assert_eq!(m.balance(m.seller_wallet().await.expect("wallet")).await, 0);
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paying_twice_at_once_takes_the_money_once() {
    let m = market().await;
    let order = m.place(false).await;
    let body = json!({"wallet": m.buyer_wallet});
    let (a, b) = tokio::join!(
        m.act(order, "pay", &m.buyer_token, body.clone()),
        m.act(order, "pay", &m.buyer_token, body.clone())
    );
    let oks = [&a, &b]
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(oks, 1, "{:?} {:?}", a.body, b.body);
    assert_eq!(m.balance(m.buyer_wallet).await, 6_500);
    m.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_refuse_bad_input_strangers_and_poor_buyers_and_append_nothing() {
    let m = market().await;
    let (_, stranger) = m.app.customer("stranger").await;
    let order = m.place(false).await;
    let line = json!({"sku": "x", "description": "x", "quantity": 1, "unit_price": 100});
    let cases = [
        (
            json!({"seller": m.seller, "currency": "EUR", "lines": []}),
            400,
            "lines",
        ),
        (
            json!({"seller": m.seller, "currency": "EUR", "lines": [{"sku": "x", "description": "x", "quantity": 0, "unit_price": 1}]}),
            400,
            "lines.quantity",
        ),
        (
            json!({"seller": m.seller, "currency": "EUR", "lines": [{"sku": "x", "description": "x", "quantity": 1, "unit_price": -1}]}),
            400,
            "lines.unit_price",
        ),
        (
            json!({"seller": m.seller, "currency": "eur", "lines": [line]}),
            400,
            "currency",
        ),
        (
            json!({"seller": m.seller, "currency": "EUR", "lines": [line], "extra": 1}),
            400,
            "extra",
        ),
    ];
    for (body, status, field) in cases {
        let before = m.app.event_count().await;
        let a = m.app.post("/v1/orders", &m.buyer_token, body.clone()).await;
        assert_eq!(a.status.as_u16(), status, "{body}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{body}: {:?}", a.body);
        assert_eq!(m.app.event_count().await, before);
    }
    let before = m.app.event_count().await;
    let unknown = m
        .app
        .post(
            "/v1/orders",
            &m.buyer_token,
            json!({"seller": Uuid::now_v7(), "currency": "EUR", "lines": [line]}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let own = m
        .app
        .post(
            "/v1/orders",
            &m.buyer_token,
            json!({"seller": m.buyer, "currency": "EUR", "lines": [line]}),
        )
        .await;
    assert_eq!(own.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(own.body["code"], "seller_is_buyer");
    assert_eq!(
        m.act(order, "pay", &stranger, json!({"wallet": m.buyer_wallet}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        m.app
            .get(&format!("/v1/orders/{order}"), &stranger)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        m.act(
            Uuid::now_v7(),
            "pay",
            &m.buyer_token,
            json!({"wallet": m.buyer_wallet})
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(m.app.event_count().await, before, "nothing appended");

    // A buyer without the money: refused, nothing moves.
    let big = m.app.post("/v1/orders", &m.buyer_token, json!({"seller": m.seller, "currency": "EUR", "lines": [{"sku": "car", "description": "A car", "quantity": 1, "unit_price": 10_001}]})).await;
    let before = m.app.event_count().await;
    let poor = m
        .act(
            big.id(),
            "pay",
            &m.buyer_token,
            json!({"wallet": m.buyer_wallet}),
        )
        .await;
    assert_eq!(poor.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(poor.body["code"], "insufficient_funds");
    assert_eq!(m.app.event_count().await, before);
    let usd = m.app.wallet(&m.buyer_token, "USD").await;
    let wrong = m
        .act(order, "pay", &m.buyer_token, json!({"wallet": usd}))
        .await;
    assert_eq!(wrong.body["code"], "currency_mismatch");
    assert_eq!(
        m.app.event_count().await,
        before + 1,
        "only the USD wallet's opening"
    );
    m.assert_conserved().await;
}
