//! Pots over HTTP: created for a beneficiary, funded by contributions (anonymous ones hidden
//! from third parties), closed and paid out, or cancelled with every contribution refunded
//! exactly once; each money move one commit, money conserved, parties checked.

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// A pot's cast: its owner, its beneficiary, two contributors and a stranger, each with an
/// account; the owner and the contributors with a funded EUR wallet.
struct Cast {
    app: TestApp,
    owner: Uuid,
    owner_token: String,
    owner_wallet: Uuid,
    beneficiary: Uuid,
    beneficiary_token: String,
    carol: Uuid,
    carol_token: String,
    carol_wallet: Uuid,
    dave: Uuid,
    dave_token: String,
    dave_wallet: Uuid,
    stranger_token: String,
    admin: String,
    auditor: String,
}

const FUNDS: i64 = 10_000;

async fn cast() -> Cast {
    let app = TestApp::new().await;
    let (owner, owner_token) = app.customer("pot-owner").await;
    let (beneficiary, beneficiary_token) = app.customer("pot-beneficiary").await;
    let (carol, carol_token) = app.customer("carol").await;
    let (dave, dave_token) = app.customer("dave").await;
    let (_, stranger_token) = app.customer("stranger").await;
    let mut wallets = Vec::new();
    for token in [&owner_token, &carol_token, &dave_token] {
        let w = app.wallet(token, "EUR").await;
        assert_eq!(app.deposit(w, FUNDS).await.status, StatusCode::OK);
        wallets.push(w);
    }
    let admin = app.token("pot-admin", &[Role::Admin]);
    let auditor = app.token("pot-auditor", &[Role::Auditor]);
    Cast {
        owner,
        owner_token,
        owner_wallet: wallets[0],
        beneficiary,
        beneficiary_token,
        carol,
        carol_token,
        carol_wallet: wallets[1],
        dave,
        dave_token,
        dave_wallet: wallets[2],
        stranger_token,
        admin,
        auditor,
        app,
    }
}

fn in_days(days: i64) -> String {
    (Utc::now() + Duration::days(days)).to_rfc3339()
}

impl Cast {
    fn pot_body(&self, visibility: &str) -> Value {
        json!({
            "beneficiary": self.beneficiary,
            "title": "Bob's 40th",
            "currency": "EUR",
            "target_amount": 20_000,
            "closes_at": in_days(7),
            "visibility": visibility,
        })
    }

    async fn create(&self, visibility: &str) -> Uuid {
        let a = self
            .app
            .post("/v1/pots", &self.owner_token, self.pot_body(visibility))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        assert_eq!(a.body["version"], 1);
        a.id()
    }

    async fn act(&self, pot: Uuid, what: &str, token: &str, body: Value) -> Answer {
        self.app
            .post(&format!("/v1/pots/{pot}/{what}"), token, body)
            .await
    }

    async fn contribute(&self, pot: Uuid, token: &str, wallet: Uuid, amount: i64) -> Answer {
        self.act(
            pot,
            "contributions",
            token,
            json!({"wallet": wallet, "amount": amount}),
        )
        .await
    }

    async fn view(&self, pot: Uuid, token: &str) -> Value {
        let a = self.app.get(&format!("/v1/pots/{pot}"), token).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body
    }

    async fn balance(&self, wallet: Uuid) -> i64 {
        self.app.wallet_view(wallet).await["balance"]
            .as_i64()
            .expect("a balance")
    }

    async fn wallet_of(&self, account: Uuid) -> Option<Uuid> {
        sqlx::query_scalar("SELECT stream_id FROM claims WHERE scope = 'wallet' AND key = $1")
            .bind(format!("{account}:EUR"))
            .fetch_optional(&self.app.db.pool)
            .await
            .expect("claims")
    }

    /// How many events of `event_type` the log holds.
    async fn count(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.app.db.pool)
            .await
            .expect("count")
    }

    /// How many transactions wrote the events up to `position` back to `position - n + 1`.
    async fn commits_of_last(&self, answer: &Answer, n: i64) -> i64 {
        sqlx::query_scalar(
            "SELECT count(DISTINCT tx) FROM events WHERE position > $1 - $2 AND position <= $1",
        )
        .bind(answer.body["position"].as_i64().expect("a position"))
        .bind(n)
        .fetch_one(&self.app.db.pool)
        .await
        .expect("count")
    }

    /// Wallets plus the money pots hold equal deposits minus withdrawals.
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
        let mut total = 0;
        let wallets: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT stream_id FROM events WHERE stream_type = 'wallet'",
        )
        .fetch_all(pool)
        .await
        .expect("wallets");
        for w in wallets {
            total += self.balance(w).await;
        }
        let pots: Vec<Uuid> =
            sqlx::query_scalar("SELECT DISTINCT stream_id FROM events WHERE stream_type = 'pot'")
                .fetch_all(pool)
                .await
                .expect("pots");
        for p in pots {
            let view = self.view(p, &self.admin).await;
            let held = view["held"].as_i64().expect("held");
            assert_eq!(
                held,
                view["raised"].as_i64().expect("raised") - view["paid_out"].as_i64().expect("paid")
            );
            total += held;
        }
        assert_eq!(total, net, "wallets + pots = deposits - withdrawals");
    }
}

fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(a.body["code"], code, "{:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pot_is_funded_closed_and_paid_out_to_the_beneficiary_in_one_commit() {
    let c = cast().await;
    let pot = c.create("public").await;
    let view = c.view(pot, &c.owner_token).await;
    assert_eq!(view["status"], "open");
    assert_eq!(view["owner"], json!(c.owner));
    assert_eq!(view["beneficiary"], json!(c.beneficiary));
    assert_eq!(view["currency"], "EUR");
    assert_eq!(view["target_amount"], 20_000);
    assert_eq!(view["visibility"], "public");
    assert_eq!(view["raised"], 0);

    let carol = c
        .act(
            pot,
            "contributions",
            &c.carol_token,
            json!({"wallet": c.carol_wallet, "amount": 1_500, "message": "Happy birthday!"}),
        )
        .await;
    assert_eq!(carol.status, StatusCode::OK, "{:?}", carol.body);
    assert_eq!(carol.body["id"], json!(pot));
    assert_eq!(carol.body["version"], 2);
    assert_eq!(
        c.commits_of_last(&carol, 2).await,
        1,
        "the debit and the contribution are one commit"
    );
    let dave = c
        .act(
            pot,
            "contributions",
            &c.dave_token,
            json!({"wallet": c.dave_wallet, "amount": 2_500, "anonymous": true}),
        )
        .await;
    assert_eq!(dave.status, StatusCode::OK, "{:?}", dave.body);
    let own = c
        .contribute(pot, &c.owner_token, c.owner_wallet, 1_000)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS - 1_500);
    assert_eq!(c.balance(c.dave_wallet).await, FUNDS - 2_500);
    assert_eq!(c.balance(c.owner_wallet).await, FUNDS - 1_000);

    let view = c.view(pot, &c.beneficiary_token).await;
    assert_eq!(view["raised"], 5_000);
    assert_eq!(view["held"], 5_000);
    assert_eq!(view["contributor_count"], 3);
    assert_eq!(view["contribution_count"], 3);
    let list = view["contributions"].as_array().expect("contributions");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["amount"], 1_000, "newest first");
    assert_eq!(list[2]["message"], "Happy birthday!");
    assert_eq!(list[2]["contributor"], json!(c.carol));
    c.assert_conserved().await;

    // Only the owner closes; then nothing more comes in.
    assert_refused(
        &c.act(pot, "close", &c.beneficiary_token, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let closed = c.act(pot, "close", &c.owner_token, json!({})).await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    assert_eq!(c.view(pot, &c.owner_token).await["status"], "closed");
    let before = c.app.event_count().await;
    assert_refused(
        &c.contribute(pot, &c.carol_token, c.carol_wallet, 100).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_refused(
        &c.act(pot, "close", &c.owner_token, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_eq!(c.app.event_count().await, before, "nothing appended");
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS - 1_500);

    // The beneficiary has no EUR wallet yet: the payout opens one in the same commit.
    assert!(c.wallet_of(c.beneficiary).await.is_none());
    let paid = c.act(pot, "payout", &c.beneficiary_token, json!({})).await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(
        c.commits_of_last(&paid, 3).await,
        1,
        "payout, wallet opening and credit are one commit"
    );
    let wallet = c.wallet_of(c.beneficiary).await.expect("opened on the fly");
    assert_eq!(c.balance(wallet).await, 5_000);
    let view = c.view(pot, &c.owner_token).await;
    assert_eq!(view["status"], "paid_out");
    assert_eq!(view["paid_out"], 5_000);
    assert_eq!(view["held"], 0);
    c.assert_conserved().await;

    // Terminal: no second payout, no cancellation, even by an admin.
    let before = c.app.event_count().await;
    assert_refused(
        &c.act(pot, "payout", &c.owner_token, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_refused(
        &c.act(pot, "cancel", &c.admin, json!({"reason": "too late"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_eq!(c.app.event_count().await, before);
    assert_eq!(c.balance(wallet).await, 5_000);
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_refunds_every_contribution_exactly_once_in_one_commit() {
    let c = cast().await;
    let pot = c.create("public").await;
    // Carol gives twice from one wallet: that wallet gets two refunds in the same commit.
    for (token, wallet, amount) in [
        (&c.carol_token, c.carol_wallet, 700),
        (&c.dave_token, c.dave_wallet, 1_200),
        (&c.carol_token, c.carol_wallet, 300),
    ] {
        let a = c.contribute(pot, token, wallet, amount).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS - 1_000);
    assert_eq!(c.view(pot, &c.owner_token).await["contributor_count"], 2);
    c.assert_conserved().await;

    assert_refused(
        &c.act(pot, "cancel", &c.carol_token, json!({"reason": "mine"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let cancelled = c
        .act(
            pot,
            "cancel",
            &c.owner_token,
            json!({"reason": "party called off"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    // PotCancelled, three ContributionRefunded and three wallet credits.
    assert_eq!(c.commits_of_last(&cancelled, 7).await, 1, "one commit");
    assert_eq!(c.count("ContributionRefunded").await, 3);
    let credits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'WalletCredited' \
         AND payload->>'reason' = 'contribution_refund' AND payload->>'reference' = $1",
    )
    .bind(pot.to_string())
    .fetch_one(&c.app.db.pool)
    .await
    .expect("count");
    assert_eq!(credits, 3);
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS);
    assert_eq!(c.balance(c.dave_wallet).await, FUNDS);
    let view = c.view(pot, &c.admin).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["raised"], 0);
    assert_eq!(view["held"], 0);
    assert!(view["contributions"]
        .as_array()
        .expect("contributions")
        .iter()
        .all(|x| x["refunded"] == true));
    c.assert_conserved().await;

    // A second cancellation refunds nothing again.
    let before = c.app.event_count().await;
    assert_refused(
        &c.act(pot, "cancel", &c.admin, json!({"reason": "again"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_eq!(c.app.event_count().await, before);
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS);

    // A closed pot: its owner may no longer cancel it, an admin still may.
    let other = c
        .app
        .post(
            "/v1/pots",
            &c.owner_token,
            json!({"beneficiary": c.beneficiary, "title": "Another", "currency": "EUR",
                   "closes_at": in_days(9), "visibility": "public"}),
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{:?}", other.body);
    let other = other.id();
    assert_eq!(
        c.contribute(other, &c.dave_token, c.dave_wallet, 400)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        c.act(other, "close", &c.owner_token, json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_refused(
        &c.act(other, "cancel", &c.owner_token, json!({"reason": "oops"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    assert_refused(
        &c.act(other, "cancel", &c.auditor, json!({"reason": "audit"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let by_admin = c
        .act(other, "cancel", &c.admin, json!({"reason": "fraud report"}))
        .await;
    assert_eq!(by_admin.status, StatusCode::OK, "{:?}", by_admin.body);
    assert_eq!(c.balance(c.dave_wallet).await, FUNDS);
    let actor: String = sqlx::query_scalar(
        "SELECT actor_role FROM events WHERE event_type = 'PotCancelled' AND stream_id = $1",
    )
    .bind(other)
    .fetch_one(&c.app.db.pool)
    .await
    .expect("the cancellation");
    assert_eq!(actor, "admin");
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_pot_takes_contributions_only_from_invited_accounts() {
    let c = cast().await;
    let pot = c.create("private").await;
    let before = c.app.event_count().await;
    assert_refused(
        &c.contribute(pot, &c.carol_token, c.carol_wallet, 500).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not_invited",
    );
    assert_refused(
        &c.app.get(&format!("/v1/pots/{pot}"), &c.carol_token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &c.act(
            pot,
            "invitations",
            &c.dave_token,
            json!({"account": c.carol}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &c.act(
            pot,
            "invitations",
            &c.owner_token,
            json!({"account": Uuid::now_v7()}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(c.app.event_count().await, before, "nothing appended");
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS);

    let invited = c
        .act(
            pot,
            "invitations",
            &c.owner_token,
            json!({"account": c.carol}),
        )
        .await;
    assert_eq!(invited.status, StatusCode::OK, "{:?}", invited.body);
    assert_refused(
        &c.act(
            pot,
            "invitations",
            &c.owner_token,
            json!({"account": c.carol}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "already_invited",
    );
    let given = c.contribute(pot, &c.carol_token, c.carol_wallet, 500).await;
    assert_eq!(given.status, StatusCode::OK, "{:?}", given.body);
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS - 500);
    // The invited contributor reads the pot; the invitation list is the owner's business.
    let seen = c.view(pot, &c.carol_token).await;
    assert_eq!(seen["raised"], 500);
    assert!(seen.get("invited").is_none());
    assert_eq!(
        c.view(pot, &c.owner_token).await["invited"],
        json!([c.carol])
    );
    // The beneficiary contributes without an invitation; dave still may not.
    let (_, bene_wallet) = ((), c.app.wallet(&c.beneficiary_token, "EUR").await);
    c.app.deposit(bene_wallet, 1_000).await;
    assert_eq!(
        c.contribute(pot, &c.beneficiary_token, bene_wallet, 100)
            .await
            .status,
        StatusCode::OK
    );
    assert_refused(
        &c.contribute(pot, &c.dave_token, c.dave_wallet, 500).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not_invited",
    );
    assert_refused(
        &c.app
            .get(&format!("/v1/pots/{pot}"), &c.stranger_token)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Public pots take no invitations.
    let public = c
        .app
        .post(
            "/v1/pots",
            &c.owner_token,
            json!({"beneficiary": c.carol, "title": "Carol's gift", "currency": "EUR",
                   "closes_at": in_days(3), "visibility": "public"}),
        )
        .await;
    assert_eq!(public.status, StatusCode::CREATED, "{:?}", public.body);
    assert_refused(
        &c.act(
            public.id(),
            "invitations",
            &c.owner_token,
            json!({"account": c.dave}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_state",
    );
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minor_beneficiary_is_paid_out_only_after_an_approved_kyc() {
    let c = cast().await;
    let kid_token = c.app.token("kid", &[Role::Customer]);
    let birth = (Utc::now() - Duration::days(10 * 365)).date_naive();
    let opened = c
        .app
        .post(
            "/v1/accounts",
            &kid_token,
            json!({"email": "kid@example.com", "display_name": "Kid", "birth_date": birth}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let kid = opened.id();
    let created = c
        .app
        .post(
            "/v1/pots",
            &c.owner_token,
            json!({"beneficiary": kid, "title": "Kid's bike", "currency": "EUR",
                   "closes_at": in_days(5), "visibility": "public"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let pot = created.id();
    assert_eq!(
        c.contribute(pot, &c.carol_token, c.carol_wallet, 2_000)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        c.act(pot, "close", &c.owner_token, json!({})).await.status,
        StatusCode::OK
    );
    let before = c.app.event_count().await;
    for token in [&c.owner_token, &kid_token] {
        assert_refused(
            &c.act(pot, "payout", token, json!({})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "kyc_required",
        );
    }
    assert_eq!(c.app.event_count().await, before, "nothing appended");
    assert!(c.wallet_of(kid).await.is_none(), "no wallet opened");

    let submitted = c
        .app
        .post(
            &format!("/v1/accounts/{kid}/kyc"),
            &kid_token,
            json!({"document_ref": "passport-123"}),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::OK, "{:?}", submitted.body);
    // Pending is not approved.
    assert_refused(
        &c.act(pot, "payout", &c.owner_token, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "kyc_required",
    );
    let approved = c
        .app
        .post(
            &format!("/v1/accounts/{kid}/kyc/approve"),
            &c.admin,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    let paid = c.act(pot, "payout", &c.owner_token, json!({})).await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    let wallet = c.wallet_of(kid).await.expect("the kid's wallet");
    assert_eq!(c.balance(wallet).await, 2_000);
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_pots_parties_may_act_and_auditors_write_nothing() {
    let c = cast().await;
    let pot = c.create("public").await;
    assert_eq!(
        c.contribute(pot, &c.carol_token, c.carol_wallet, 800)
            .await
            .status,
        StatusCode::OK
    );
    let before = c.app.event_count().await;
    let reason = json!({"reason": "not mine"});
    for (what, body) in [
        ("close", json!({})),
        ("invitations", json!({"account": c.dave})),
        ("payout", json!({})),
        ("cancel", reason.clone()),
    ] {
        for token in [&c.stranger_token, &c.carol_token] {
            assert_refused(
                &c.act(pot, what, token, body.clone()).await,
                StatusCode::FORBIDDEN,
                "forbidden",
            );
        }
    }
    // The beneficiary may pay out, nothing else of the owner's.
    for (what, body) in [
        ("close", json!({})),
        ("invitations", json!({"account": c.dave})),
        ("cancel", reason.clone()),
    ] {
        assert_refused(
            &c.act(pot, what, &c.beneficiary_token, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    // Someone else's wallet cannot pay a contribution.
    assert_refused(
        &c.contribute(pot, &c.dave_token, c.carol_wallet, 100).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // The auditor reads everything and writes nothing.
    assert_refused(
        &c.app
            .post("/v1/pots", &c.auditor, c.pot_body("public"))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    for (what, body) in [
        (
            "contributions",
            json!({"wallet": c.carol_wallet, "amount": 100}),
        ),
        ("close", json!({})),
        ("invitations", json!({"account": c.dave})),
        ("payout", json!({})),
        ("cancel", reason.clone()),
    ] {
        assert_refused(
            &c.act(pot, what, &c.auditor, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    assert_eq!(c.app.event_count().await, before, "nothing appended");
    assert_eq!(c.view(pot, &c.auditor).await["raised"], 800);
    // Any authenticated caller reads a public pot; nobody unauthenticated does.
    assert_eq!(c.view(pot, &c.stranger_token).await["status"], "open");
    let anonymous = c
        .app
        .send(Method::GET, &format!("/v1/pots/{pot}"), None, None, &[])
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_refused(
        &c.app
            .get(&format!("/v1/pots/{}", Uuid::now_v7()), &c.admin)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pot_routes_refuse_bad_input_with_the_field_and_append_nothing() {
    let c = cast().await;
    let pot = c.create("public").await;
    let base = c.pot_body("public");
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let without = |key: &str| {
        let mut b = base.clone();
        b.as_object_mut().map(|o| o.remove(key));
        b
    };
    let contribution = json!({"wallet": c.carol_wallet, "amount": 100});
    let contrib = |key: &str, value: Value| {
        let mut b = contribution.clone();
        b[key] = value;
        b
    };
    let pots = "/v1/pots".to_owned();
    let on = |what: &str| format!("/v1/pots/{pot}/{what}");
    let cases: Vec<(String, Value, &str)> = vec![
        (pots.clone(), with("title", json!("")), "title"),
        (pots.clone(), with("title", json!("   ")), "title"),
        (pots.clone(), with("title", json!("x".repeat(201))), "title"),
        (pots.clone(), with("title", json!("a\u{7}b")), "title"),
        (pots.clone(), without("title"), "title"),
        (pots.clone(), with("currency", json!("eur")), "currency"),
        (pots.clone(), with("currency", json!("XYZ")), "currency"),
        (
            pots.clone(),
            with("target_amount", json!(0)),
            "target_amount",
        ),
        (
            pots.clone(),
            with("target_amount", json!(1_000_000_000_000_001_i64)),
            "target_amount",
        ),
        (
            pots.clone(),
            with("closes_at", json!("next friday")),
            "closes_at",
        ),
        (
            pots.clone(),
            with("closes_at", json!("2030-01-01")),
            "closes_at",
        ),
        (pots.clone(), without("closes_at"), "closes_at"),
        (
            pots.clone(),
            with("visibility", json!("secret")),
            "visibility",
        ),
        (pots.clone(), without("visibility"), "visibility"),
        (
            pots.clone(),
            with("beneficiary", json!("bob")),
            "beneficiary",
        ),
        (pots.clone(), with("extra", json!(1)), "extra"),
        (on("contributions"), contrib("amount", json!(0)), "amount"),
        (on("contributions"), contrib("amount", json!(-5)), "amount"),
        (
            on("contributions"),
            contrib("amount", json!(1_000_000_000_000_001_i64)),
            "amount",
        ),
        (on("contributions"), contrib("amount", json!(1.5)), "amount"),
        (
            on("contributions"),
            contrib("message", json!("x".repeat(501))),
            "message",
        ),
        (
            on("contributions"),
            contrib("message", json!("line\nbreak")),
            "message",
        ),
        (
            on("contributions"),
            contrib("wallet", json!("mine")),
            "wallet",
        ),
        (
            on("contributions"),
            contrib("anonymous", json!("yes")),
            "anonymous",
        ),
        (on("contributions"), contrib("tip", json!(1)), "tip"),
        (on("contributions"), json!({"amount": 100}), "wallet"),
        (on("invitations"), json!({}), "account"),
        (on("invitations"), json!({"account": 7}), "account"),
        (on("close"), json!({"now": true}), "now"),
        (on("payout"), json!({"wallet": c.owner_wallet}), "wallet"),
        (on("cancel"), json!({}), "reason"),
        (on("cancel"), json!({"reason": ""}), "reason"),
        (on("cancel"), json!({"reason": "x".repeat(501)}), "reason"),
    ];
    for (path, body, field) in cases {
        let before = c.app.event_count().await;
        let token = if path.ends_with("contributions") {
            &c.carol_token
        } else {
            &c.owner_token
        };
        let a = c.app.post(&path, token, body.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {:?}",
            a.body
        );
        assert_eq!(a.body["code"], "invalid_input", "{path} {body}");
        assert_eq!(a.body["field"], field, "{path} {body}: {:?}", a.body);
        assert_eq!(c.app.event_count().await, before, "{path} {body}");
    }
    // A pot id that is no UUID.
    let a = c
        .app
        .post("/v1/pots/42/close", &c.owner_token, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // Well-formed but against the rules: refused, nothing appended.
    let before = c.app.event_count().await;
    assert_refused(
        &c.app
            .post(
                "/v1/pots",
                &c.owner_token,
                with("closes_at", json!(in_days(-1))),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "closes_in_past",
    );
    assert_refused(
        &c.app
            .post(
                "/v1/pots",
                &c.owner_token,
                with("beneficiary", json!(Uuid::now_v7())),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        &c.contribute(Uuid::now_v7(), &c.carol_token, c.carol_wallet, 100)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        &c.contribute(pot, &c.carol_token, Uuid::now_v7(), 100).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        &c.contribute(pot, &c.carol_token, c.carol_wallet, FUNDS + 1)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    assert_eq!(c.app.event_count().await, before, "nothing appended");
    let usd = c.app.wallet(&c.carol_token, "USD").await;
    c.app.deposit(usd, 1_000).await;
    let before = c.app.event_count().await;
    assert_refused(
        &c.contribute(pot, &c.carol_token, usd, 100).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency_mismatch",
    );
    assert_eq!(c.app.event_count().await, before);

    // A blank message is no message; an empty pot cannot be paid out.
    let blank = c
        .act(
            pot,
            "contributions",
            &c.carol_token,
            json!({"wallet": c.carol_wallet, "amount": 100, "message": ""}),
        )
        .await;
    assert_eq!(blank.status, StatusCode::OK, "{:?}", blank.body);
    assert_eq!(
        c.view(pot, &c.carol_token).await["contributions"][0]["message"],
        Value::Null
    );
    let empty = c
        .app
        .post(
            "/v1/pots",
            &c.owner_token,
            json!({"beneficiary": c.dave, "title": "Nothing yet", "currency": "EUR",
                   "closes_at": in_days(2), "visibility": "public"}),
        )
        .await;
    assert_eq!(empty.status, StatusCode::CREATED);
    c.act(empty.id(), "close", &c.owner_token, json!({})).await;
    assert_refused(
        &c.act(empty.id(), "payout", &c.owner_token, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "pot_empty",
    );
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_open_pot_per_beneficiary_and_closing_date() {
    let c = cast().await;
    let closes = Utc::now() + Duration::days(7);
    let body = |at: chrono::DateTime<Utc>| {
        json!({"beneficiary": c.beneficiary, "title": "Gift", "currency": "EUR",
               "closes_at": at.to_rfc3339(), "visibility": "public"})
    };
    let first = c.app.post("/v1/pots", &c.owner_token, body(closes)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let before = c.app.event_count().await;
    // Same beneficiary, same UTC date (another time of day, another owner): taken.
    let later = closes + Duration::seconds(1);
    assert_refused(
        &c.app.post("/v1/pots", &c.carol_token, body(later)).await,
        StatusCode::CONFLICT,
        "pot_exists",
    );
    assert_eq!(c.app.event_count().await, before);
    let key: String = sqlx::query_scalar(
        "SELECT key FROM claims WHERE scope = 'pot_beneficiary_date' AND stream_id = $1",
    )
    .bind(first.id())
    .fetch_one(&c.app.db.pool)
    .await
    .expect("the claim");
    assert_eq!(key, format!("{}:{}", c.beneficiary, closes.date_naive()));
    // Another date is free.
    let next_day = c
        .app
        .post("/v1/pots", &c.owner_token, body(closes + Duration::days(1)))
        .await;
    assert_eq!(next_day.status, StatusCode::CREATED, "{:?}", next_day.body);
    // Once the first pot is no longer open, the date is free again.
    let cancelled = c
        .act(
            first.id(),
            "cancel",
            &c.owner_token,
            json!({"reason": "redo"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    let again = c.app.post("/v1/pots", &c.carol_token, body(closes)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    // Two creators racing for a free date: one wins.
    let racing = closes + Duration::days(3);
    let (a, b) = tokio::join!(
        c.app.post("/v1/pots", &c.owner_token, body(racing)),
        c.app.post("/v1/pots", &c.dave_token, body(racing))
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{:?} {:?}", a.body, b.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contributions_racing_the_close_conserve_money() {
    let c = cast().await;
    for round in 0..3 {
        let pot = c
            .app
            .post(
                "/v1/pots",
                &c.owner_token,
                json!({"beneficiary": c.beneficiary, "title": format!("Round {round}"),
                       "currency": "EUR", "closes_at": in_days(round + 1), "visibility": "public"}),
            )
            .await;
        assert_eq!(pot.status, StatusCode::CREATED, "{:?}", pot.body);
        let pot = pot.id();
        let mut sends = Vec::new();
        for i in 0..4_i64 {
            for (token, wallet) in [
                (&c.carol_token, c.carol_wallet),
                (&c.dave_token, c.dave_wallet),
                (&c.owner_token, c.owner_wallet),
            ] {
                sends.push(c.contribute(pot, token, wallet, 10 + i));
            }
        }
        let contributions = futures::future::join_all(sends);
        let close = c.act(pot, "close", &c.owner_token, json!({}));
        let (answers, closed) = tokio::join!(contributions, close);
        assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
        let mut accepted = 0;
        for a in &answers {
            match a.status {
                StatusCode::OK => accepted += 1,
                _ => assert_refused(a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state"),
            }
        }
        let view = c.view(pot, &c.admin).await;
        assert_eq!(view["status"], "closed");
        assert_eq!(view["contribution_count"], accepted);
        assert_eq!(
            c.count("ContributionReceived").await,
            c.count("WalletDebited").await,
            "every contribution has exactly its debit"
        );
        c.assert_conserved().await;
        if round == 1 {
            let paid = c.act(pot, "payout", &c.owner_token, json!({})).await;
            if accepted == 0 {
                // The close won the race against every contribution: nothing to pay out.
                assert_refused(&paid, StatusCode::UNPROCESSABLE_ENTITY, "pot_empty");
            } else {
                assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
            }
        } else if round == 2 {
            let gone = c.act(pot, "cancel", &c.admin, json!({"reason": "x"})).await;
            assert_eq!(gone.status, StatusCode::OK, "{:?}", gone.body);
        }
        c.assert_conserved().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anonymous_contributor_is_hidden_from_everyone_but_themselves_and_staff() {
    let c = cast().await;
    let pot = c.create("public").await;
    let anonymous = c
        .act(
            pot,
            "contributions",
            &c.dave_token,
            json!({"wallet": c.dave_wallet, "amount": 900, "anonymous": true, "message": "From a friend"}),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::OK, "{:?}", anonymous.body);
    assert_eq!(
        c.contribute(pot, &c.carol_token, c.carol_wallet, 100)
            .await
            .status,
        StatusCode::OK
    );
    let hidden = |v: &Value| {
        let x = &v["contributions"][1];
        assert_eq!(x["amount"], 900);
        assert_eq!(x["anonymous"], true);
        assert_eq!(x["message"], "From a friend");
        (x["contributor"].clone(), x["wallet"].clone())
    };
    for token in [
        &c.stranger_token,
        &c.owner_token,
        &c.beneficiary_token,
        &c.carol_token,
    ] {
        let a = c.app.get(&format!("/v1/pots/{pot}"), token).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            hidden(&a.body),
            (Value::Null, Value::Null),
            "hidden: {}",
            a.body
        );
        assert!(
            !a.body.to_string().contains(&c.dave.to_string()),
            "dave's id appears nowhere: {}",
            a.body
        );
        assert!(!a.body.to_string().contains(&c.dave_wallet.to_string()));
        assert_eq!(a.body["contributions"][0]["contributor"], json!(c.carol));
        assert_eq!(
            a.headers.get("etag").and_then(|v| v.to_str().ok()),
            Some("\"3\"")
        );
    }
    for token in [&c.dave_token, &c.admin, &c.auditor] {
        let v = c.view(pot, token).await;
        assert_eq!(hidden(&v), (json!(c.dave), json!(c.dave_wallet)));
    }
    // The audit log keeps the contributor.
    let logged: String = sqlx::query_scalar(
        "SELECT payload->>'contributor' FROM events WHERE event_type = 'ContributionReceived' \
         AND (payload->>'anonymous')::boolean",
    )
    .fetch_one(&c.app.db.pool)
    .await
    .expect("the contribution");
    assert_eq!(logged, c.dave.to_string());
    assert_eq!(c.view(pot, &c.stranger_token).await["contributor_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_contribution_with_its_idempotency_key_takes_the_money_once() {
    let c = cast().await;
    let pot = c.create("public").await;
    let body = json!({"wallet": c.carol_wallet, "amount": 250});
    let path = format!("/v1/pots/{pot}/contributions");
    let send = || {
        c.app.send(
            Method::POST,
            &path,
            Some(&c.carol_token),
            Some(body.clone()),
            &[("idempotency-key", "gift-1")],
        )
    };
    let first = send().await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let second = send().await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, first.body);
    assert_eq!(c.balance(c.carol_wallet).await, FUNDS - 250);
    assert_eq!(c.view(pot, &c.owner_token).await["raised"], 250);
    let other = c
        .app
        .send(
            Method::POST,
            &path,
            Some(&c.carol_token),
            Some(json!({"wallet": c.carol_wallet, "amount": 251})),
            &[("idempotency-key", "gift-1")],
        )
        .await;
    assert_refused(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    c.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contributions_racing_a_cancellation_are_all_refunded_exactly_once() {
    let c = cast().await;
    // Contributors whose wallets the cancellation cannot know of when it first looks.
    let mut givers = Vec::new();
    for i in 0..6 {
        let (_, token) = c.app.customer(&format!("giver-{i}")).await;
        let wallet = c.app.wallet(&token, "EUR").await;
        assert_eq!(c.app.deposit(wallet, 1_000).await.status, StatusCode::OK);
        givers.push((token, wallet));
    }
    for round in 0..3_i64 {
        let created = c
            .app
            .post(
                "/v1/pots",
                &c.owner_token,
                json!({"beneficiary": c.beneficiary, "title": "Race", "currency": "EUR",
                       "closes_at": in_days(round + 1), "visibility": "public"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        let pot = created.id();
        let sends = givers
            .iter()
            .map(|(token, wallet)| c.contribute(pot, token, *wallet, 100 + round));
        let contributions = futures::future::join_all(sends);
        let cancel = c.act(pot, "cancel", &c.admin, json!({"reason": "race"}));
        let (answers, cancelled) = tokio::join!(contributions, cancel);
        assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
        for a in &answers {
            if a.status != StatusCode::OK {
                assert_refused(a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state");
            }
        }
        let view = c.view(pot, &c.admin).await;
        assert_eq!(view["status"], "cancelled");
        assert_eq!(view["held"], 0);
        let per_pot = |t: &'static str| {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = $2",
            )
            .bind(pot)
            .bind(t)
            .fetch_one(&c.app.db.pool)
        };
        let received = per_pot("ContributionReceived").await.expect("count");
        let refunded = per_pot("ContributionRefunded").await.expect("count");
        assert_eq!(received, refunded, "every contribution refunded once");
        c.assert_conserved().await;
    }
    for (_, wallet) in &givers {
        assert_eq!(c.balance(*wallet).await, 1_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pot_routes_are_described_in_openapi() {
    let app = TestApp::new().await;
    let doc = app
        .send(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    for (method, path) in [
        ("post", "/v1/pots"),
        ("get", "/v1/pots/{id}"),
        ("post", "/v1/pots/{id}/contributions"),
        ("post", "/v1/pots/{id}/invitations"),
        ("post", "/v1/pots/{id}/close"),
        ("post", "/v1/pots/{id}/payout"),
        ("post", "/v1/pots/{id}/cancel"),
    ] {
        let op = &doc.body["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is described");
        if method == "post" {
            for status in ["400", "403", "404", "409", "422"] {
                assert!(op["responses"][status].is_object(), "{path} {status}");
            }
        }
    }
    for schema in ["CreatePotBody", "ContributeBody", "InviteBody", "PotView"] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "{schema} is in the components"
        );
    }
}
