//! Escrows over HTTP: funded from the buyer's wallet, released to the seller or refunded to
//! the buyer exactly once, disputes settled by an arbiter, money conserved.

use crate::support::{Answer, TestApp};
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

struct Deal {
    app: TestApp,
    buyer_token: String,
    buyer_wallet: Uuid,
    seller: Uuid,
    seller_token: String,
}

async fn deal() -> Deal {
    let app = TestApp::new().await;
    let (_, buyer_token) = app.customer("escrow-buyer").await;
    let (seller, seller_token) = app.customer("escrow-seller").await;
    let buyer_wallet = app.wallet(&buyer_token, "EUR").await;
    assert_eq!(
        app.deposit(buyer_wallet, 10_000).await.status,
        StatusCode::OK
    );
    Deal {
        app,
        buyer_token,
        buyer_wallet,
        seller,
        seller_token,
    }
}

impl Deal {
    fn body(&self, amount: i64) -> Value {
        json!({
            "buyer_wallet": self.buyer_wallet,
            "seller": self.seller,
            "amount": amount,
            "terms": "a used bike, as seen",
            "expires_at": (Utc::now() + Duration::days(7)).to_rfc3339(),
        })
    }

    async fn open_funded(&self, amount: i64) -> Uuid {
        let opened = self
            .app
            .post("/v1/escrows", &self.buyer_token, self.body(amount))
            .await;
        assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
        let id = opened.id();
        let funded = self.act(id, "fund", &self.buyer_token, json!({})).await;
        assert_eq!(funded.status, StatusCode::OK, "{:?}", funded.body);
        id
    }

    async fn act(&self, id: Uuid, what: &str, token: &str, body: Value) -> Answer {
        self.app
            .post(&format!("/v1/escrows/{id}/{what}"), token, body)
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

    async fn status(&self, id: Uuid) -> Value {
        let admin = self.app.token("admin", &[Role::Admin]);
        self.app
            .get(&format!("/v1/escrows/{id}"), &admin)
            .await
            .body["status"]
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn funding_debits_the_buyer_and_release_pays_the_seller_once() {
    let d = deal().await;
    let id = d.open_funded(4_000).await;
    assert_eq!(d.balance(d.buyer_wallet).await, 6_000);
    assert_eq!(d.status(id).await, "funded");
    assert_eq!(
        d.act(id, "release", &d.seller_token, json!({}))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "only the buyer releases"
    );
    let released = d.act(id, "release", &d.buyer_token, json!({})).await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    let seller_wallet = d.seller_wallet().await.expect("opened on release");
    assert_eq!(d.balance(seller_wallet).await, 4_000);
    let again = d.act(id, "release", &d.buyer_token, json!({})).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        d.act(id, "refund", &d.seller_token, json!({})).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        d.balance(d.buyer_wallet).await + d.balance(seller_wallet).await,
        10_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seller_refunds_the_buyer() {
    let d = deal().await;
    let id = d.open_funded(2_500).await;
    assert_eq!(
        d.act(id, "refund", &d.buyer_token, json!({})).await.status,
        StatusCode::FORBIDDEN,
        "only the seller refunds"
    );
    assert_eq!(
        d.act(id, "refund", &d.seller_token, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(d.balance(d.buyer_wallet).await, 10_000);
    assert_eq!(d.status(id).await, "refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispute_freezes_the_escrow_until_an_arbiter_splits_it() {
    let d = deal().await;
    let id = d.open_funded(3_500).await;
    let raised = d
        .act(
            id,
            "disputes",
            &d.seller_token,
            json!({"reason": "the buyer keeps it"}),
        )
        .await;
    assert_eq!(raised.status, StatusCode::OK, "{:?}", raised.body);
    let release = d.act(id, "release", &d.buyer_token, json!({})).await;
    assert_eq!(release.body["code"], "dispute_open");
    let refund = d.act(id, "refund", &d.seller_token, json!({})).await;
    assert_eq!(refund.body["code"], "dispute_open");

    let arbiter = d.app.token("arbiter", &[Role::Arbiter]);
    let before = d.app.event_count().await;
    assert_eq!(
        d.act(
            id,
            "disputes/resolve",
            &d.buyer_token,
            json!({"to_seller": 0, "to_buyer": 3500})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let wrong = d
        .act(
            id,
            "disputes/resolve",
            &arbiter,
            json!({"to_seller": 2000, "to_buyer": 1000}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong.body["code"], "split_mismatch");
    assert_eq!(d.app.event_count().await, before, "nothing appended");
    let split = d
        .act(
            id,
            "disputes/resolve",
            &arbiter,
            json!({"to_seller": 2000, "to_buyer": 1500}),
        )
        .await;
    assert_eq!(split.status, StatusCode::OK, "{:?}", split.body);
    assert_eq!(d.balance(d.buyer_wallet).await, 6_500 + 1_500);
    assert_eq!(
        d.balance(d.seller_wallet().await.expect("seller wallet"))
            .await,
        2_000
    );
    assert_eq!(d.status(id).await, "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_and_refund_at_once_pay_out_exactly_once() {
    let d = deal().await;
    let mut winners = 0;
    for _ in 0..5 {
        let id = d.open_funded(1_000).await;
        let (a, b) = tokio::join!(
            d.act(id, "release", &d.buyer_token, json!({})),
            d.act(id, "refund", &d.seller_token, json!({}))
        );
        let oks = [&a, &b]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(oks, 1, "{:?} / {:?}", a.body, b.body);
        winners += oks;
    }
    assert_eq!(winners, 5);
    let seller = match d.seller_wallet().await {
        Some(w) => d.balance(w).await,
        None => 0,
    };
    assert_eq!(
        d.balance(d.buyer_wallet).await + seller,
        10_000,
        "money conserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escrows_refuse_bad_input_and_strangers_and_append_nothing() {
    let d = deal().await;
    let (_, stranger) = d.app.customer("escrow-stranger").await;
    let id = d.open_funded(1_000).await;
    let before = d.app.event_count().await;
    let mut past = d.body(100);
    past["expires_at"] = json!((Utc::now() - Duration::hours(1)).to_rfc3339());
    let a = d.app.post("/v1/escrows", &d.buyer_token, past).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["code"], "expires_in_past");
    let zero = d.app.post("/v1/escrows", &d.buyer_token, d.body(0)).await;
    assert_eq!(
        (zero.status, zero.body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("amount"))
    );
    let mut bad_date = d.body(100);
    bad_date["expires_at"] = json!("next tuesday");
    assert_eq!(
        d.app
            .post("/v1/escrows", &d.buyer_token, bad_date)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let mut unknown = d.body(100);
    unknown["seller"] = json!(Uuid::now_v7());
    assert_eq!(
        d.app
            .post("/v1/escrows", &d.buyer_token, unknown)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        d.app
            .post("/v1/escrows", &stranger, d.body(100))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "another's wallet"
    );
    assert_eq!(
        d.act(id, "release", &stranger, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        d.app
            .get(&format!("/v1/escrows/{id}"), &stranger)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        d.act(Uuid::now_v7(), "release", &d.buyer_token, json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let auditor = d.app.token("auditor", &[Role::Auditor]);
    assert_eq!(
        d.act(id, "release", &auditor, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(d.app.event_count().await, before, "nothing appended");
}
