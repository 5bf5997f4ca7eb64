//! Queries of the commerce read models over HTTP: orders, escrows, pots and devices, single and
//! listed; keyset pagination without gaps or duplicates, filters, who sees what (parties, other
//! customers, admins, auditors, arbiters), anonymous contributors hidden, escrow histories,
//! bad query parameters refused with the field, and answers shaped as OpenAPI describes them.

use crate::support::{Answer, TestApp};
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use commands::Role;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

fn in_days(days: i64) -> String {
    (Utc::now() + Duration::days(days)).to_rfc3339()
}

fn assert_invalid(a: &Answer, field: &str, what: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", a.body);
    assert_eq!(a.body["code"], "invalid_input", "{what}: {:?}", a.body);
    assert_eq!(a.body["field"], field, "{what}: {:?}", a.body);
    assert!(
        a.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("application/problem+json")),
        "{what}: problem+json"
    );
}

fn assert_refused(a: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {:?}", a.body);
    assert_eq!(a.body["code"], code, "{what}: {:?}", a.body);
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Every item of a list, read `limit` at a time: each page carries `X-Position`, holds at most
/// `limit` items, no item comes twice, and the last page's `next_cursor` is null.
async fn all_pages(app: &TestApp, path: &str, token: &str, limit: usize) -> (Vec<Value>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let a = app.get(&url, token).await;
        assert_eq!(a.status, StatusCode::OK, "{url}: {:?}", a.body);
        assert!(a.headers.contains_key("x-position"), "{url}: X-Position");
        pages += 1;
        let page = a.body["items"].as_array().expect("items").clone();
        assert!(page.len() <= limit, "{url}: at most {limit} items");
        items.extend(page);
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert_eq!(a.body["next_cursor"], Value::Null);
                break;
            }
        }
        assert!(pages < 100, "{url}: pagination ends");
    }
    let unique: HashSet<String> = ids(&items).into_iter().collect();
    assert_eq!(unique.len(), items.len(), "{path}: no item twice");
    (items, pages)
}

/// The ids of a one-page list.
async fn list(app: &TestApp, path: &str, token: &str) -> BTreeSet<String> {
    let a = app.get(path, token).await;
    assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
    assert!(a.body["next_cursor"].is_null(), "{path}: one page");
    ids(a.body["items"].as_array().expect("items"))
        .into_iter()
        .collect()
}

fn set(ids: &[Uuid]) -> BTreeSet<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// The answer has exactly the properties OpenAPI describes for `schema`.
async fn assert_shape(app: &TestApp, schema: &str, value: &Value) {
    let doc = app.get("/openapi.json", "unused").await;
    let properties = &doc.body["components"]["schemas"][schema]["properties"];
    let described: BTreeSet<&str> = properties
        .as_object()
        .unwrap_or_else(|| panic!("{schema} is described"))
        .keys()
        .map(String::as_str)
        .collect();
    let answered: BTreeSet<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        answered.is_subset(&described),
        "{schema}: answered {answered:?}, described {described:?}"
    );
    let optional: BTreeSet<&str> = ["invited", "history"].into();
    let missing: Vec<_> = described
        .difference(&answered)
        .filter(|k| !optional.contains(*k))
        .collect();
    assert!(missing.is_empty(), "{schema}: {missing:?} not answered");
}

async fn place(app: &TestApp, token: &str, seller: Uuid, quantity: i64) -> Uuid {
    let a = app
        .post(
            "/v1/orders",
            token,
            json!({"seller": seller, "currency": "EUR", "use_escrow": false, "lines": [
                {"sku": "mug", "description": "A mug", "quantity": quantity, "unit_price": 1500},
                {"sku": "tea", "description": "Tea", "quantity": 1, "unit_price": 500}
            ]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "place: {:?}", a.body);
    a.id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_are_listed_by_page_and_filter_to_their_parties_only() {
    let app = TestApp::new().await;
    let (ann, ann_t) = app.customer("ann").await;
    let (bea, bea_t) = app.customer("bea").await;
    let (dan, dan_t) = app.customer("dan").await;
    let (_, cy_t) = app.customer("cy").await;
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    let mut from_ann = Vec::new();
    for q in 1..=5 {
        from_ann.push(place(&app, &ann_t, bea, q).await);
    }
    let from_dan = vec![
        place(&app, &dan_t, bea, 1).await,
        place(&app, &dan_t, bea, 2).await,
    ];
    let cancelled = app
        .post(
            &format!("/v1/orders/{}/cancel", from_ann[0]),
            &ann_t,
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);

    // One order: lines, totals, amounts, ETag and X-Position.
    let one = app
        .get(&format!("/v1/orders/{}", from_ann[2]), &bea_t)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{:?}", one.body);
    assert_eq!(one.body["total"], 3 * 1500 + 500);
    assert_eq!(one.body["lines"][0]["amount"], 4500);
    assert_eq!(one.body["lines"][1]["sku"], "tea");
    assert_eq!(one.body["paid_amount"], 0);
    assert_eq!(one.body["refunded_amount"], 0);
    assert_eq!(one.body["status"], "placed");
    assert_eq!(one.headers["etag"], "\"1\"");
    assert!(one.headers.contains_key("x-position"));
    assert_shape(&app, "OrderView", &one.body).await;
    let gone = app
        .get(&format!("/v1/orders/{}", from_ann[0]), &ann_t)
        .await;
    assert_eq!(gone.body["status"], "cancelled");
    assert_eq!(gone.body["cancelled_by"], "buyer");
    assert_eq!(gone.headers["etag"], "\"2\"");
    assert_refused(
        &app.get(&format!("/v1/orders/{}", from_ann[2]), &cy_t).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "another customer",
    );
    assert_refused(
        &app.get(&format!("/v1/orders/{}", Uuid::now_v7()), &admin)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "unknown order",
    );
    assert_invalid(
        &app.get("/v1/orders/not-a-uuid", &admin).await,
        "id",
        "bad id",
    );

    // Every order, two at a time, newest first.
    let (all, pages) = all_pages(&app, "/v1/orders", &admin, 2).await;
    assert_eq!(pages, 4);
    let mut expected: Vec<String> = from_ann
        .iter()
        .chain(&from_dan)
        .map(Uuid::to_string)
        .collect();
    expected.sort();
    expected.reverse();
    assert_eq!(ids(&all), expected, "newest first, none missing");
    assert_eq!(all[0]["lines"].as_array().map(Vec::len), Some(2));

    // Who sees what.
    let everything = set(&[from_ann.clone(), from_dan.clone()].concat());
    assert_eq!(list(&app, "/v1/orders", &ann_t).await, set(&from_ann));
    assert_eq!(list(&app, "/v1/orders", &bea_t).await, everything);
    assert_eq!(list(&app, "/v1/orders", &auditor).await, everything);
    assert!(list(&app, "/v1/orders", &cy_t).await.is_empty());
    let no_account = app.token("nobody", &[Role::Customer]);
    assert!(list(&app, "/v1/orders", &no_account).await.is_empty());

    // Filters, within what the caller may see.
    assert_eq!(
        list(&app, &format!("/v1/orders?buyer={dan}"), &admin).await,
        set(&from_dan)
    );
    assert_eq!(
        list(
            &app,
            &format!("/v1/orders?buyer={ann}&seller={bea}"),
            &bea_t
        )
        .await,
        set(&from_ann)
    );
    assert!(list(&app, &format!("/v1/orders?buyer={dan}"), &ann_t)
        .await
        .is_empty());
    assert_eq!(
        list(&app, "/v1/orders?status=cancelled", &admin).await,
        set(&from_ann[..1])
    );
    assert_eq!(
        list(
            &app,
            &format!("/v1/orders?status=placed&buyer={ann}"),
            &ann_t
        )
        .await
        .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_query_parameters_are_refused_with_the_field() {
    let app = TestApp::new().await;
    let (owner, token) = app.customer("params").await;
    for serial in ["SN-P1", "SN-P2"] {
        let a = app
            .post(
                "/v1/devices",
                &token,
                json!({"serial": serial, "model": "Thermo 3", "firmware_version": "1.0.0"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    }
    let first = app.get("/v1/devices?limit=1", &token).await;
    let device_cursor = first.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let pot = app
        .post(
            "/v1/pots",
            &token,
            json!({"beneficiary": owner, "title": "t", "currency": "EUR",
                   "closes_at": in_days(3), "visibility": "public"}),
        )
        .await;
    assert_eq!(pot.status, StatusCode::CREATED, "{:?}", pot.body);
    let pot2 = app
        .post(
            "/v1/pots",
            &token,
            json!({"beneficiary": owner, "title": "t", "currency": "EUR",
                   "closes_at": in_days(4), "visibility": "public"}),
        )
        .await;
    assert_eq!(pot2.status, StatusCode::CREATED, "{:?}", pot2.body);
    let raised = app.get("/v1/pots?sort=raised&limit=1", &token).await;
    let raised_cursor = raised.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();

    let cases: Vec<(String, &str)> = vec![
        ("/v1/orders?colour=red".into(), "colour"),
        ("/v1/orders?status=lost".into(), "status"),
        ("/v1/orders?status=unplaced".into(), "status"),
        ("/v1/orders?buyer=bob".into(), "buyer"),
        ("/v1/orders?seller=".into(), "seller"),
        ("/v1/orders?limit=0".into(), "limit"),
        ("/v1/orders?limit=501".into(), "limit"),
        ("/v1/orders?limit=ten".into(), "limit"),
        ("/v1/orders?cursor=zz".into(), "cursor"),
        (format!("/v1/orders?cursor={device_cursor}"), "cursor"),
        ("/v1/escrows?party=1".into(), "party"),
        ("/v1/escrows?status=frozen".into(), "status"),
        ("/v1/escrows?owner=x".into(), "owner"),
        ("/v1/escrows?limit=-1".into(), "limit"),
        ("/v1/pots?visibility=secret".into(), "visibility"),
        ("/v1/pots?sort=loudest".into(), "sort"),
        ("/v1/pots?status=gone".into(), "status"),
        ("/v1/pots?limit=501".into(), "limit"),
        (
            format!("/v1/pots?sort=newest&cursor={raised_cursor}"),
            "cursor",
        ),
        (format!("/v1/pots?cursor={device_cursor}"), "cursor"),
        ("/v1/devices?owner=me".into(), "owner"),
        ("/v1/devices?status=broken".into(), "status"),
        ("/v1/devices?model=".into(), "model"),
        ("/v1/devices?limit=0".into(), "limit"),
        ("/v1/devices?cursor=00".into(), "cursor"),
        ("/v1/escrows/123".into(), "id"),
        ("/v1/pots/123".into(), "id"),
        ("/v1/devices/123".into(), "id"),
    ];
    for (path, field) in &cases {
        assert_invalid(&app.get(path, &token).await, field, path);
    }
    // The same cursors work where they belong; limit 500 is allowed.
    let next = app
        .get(
            &format!("/v1/devices?limit=1&cursor={device_cursor}"),
            &token,
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    assert_eq!(next.body["items"].as_array().map(Vec::len), Some(1));
    assert!(next.body["next_cursor"].is_null());
    let next = app
        .get(
            &format!("/v1/pots?sort=raised&limit=1&cursor={raised_cursor}"),
            &token,
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    assert_eq!(
        app.get("/v1/orders?limit=500", &token).await.status,
        StatusCode::OK
    );
    // Without credentials: 401 before anything else.
    let anonymous = app
        .send(
            axum::http::Method::GET,
            "/v1/orders?limit=0",
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn escrows_show_the_history_of_their_decisions_and_list_by_party() {
    let app = TestApp::new().await;
    let (buyer, buyer_t) = app.customer("e-buyer").await;
    let (seller, seller_t) = app.customer("e-seller").await;
    let (_, stranger_t) = app.customer("e-stranger").await;
    let arbiter = app.token("judge", &[Role::Arbiter]);
    let admin = app.token("admin", &[Role::Admin]);
    let wallet = app.wallet(&buyer_t, "EUR").await;
    assert_eq!(app.deposit(wallet, 20_000).await.status, StatusCode::OK);
    let open = |amount: i64| {
        let app = &app;
        let buyer_t = &buyer_t;
        async move {
            let a = app
                .post(
                    "/v1/escrows",
                    buyer_t,
                    json!({"buyer_wallet": wallet, "seller": seller, "amount": amount,
                           "terms": "a bike", "expires_at": in_days(7)}),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
            let id = a.id();
            let f = app
                .post(&format!("/v1/escrows/{id}/fund"), buyer_t, json!({}))
                .await;
            assert_eq!(f.status, StatusCode::OK, "{:?}", f.body);
            id
        }
    };
    let disputed = open(4_000).await;
    let released = open(1_000).await;
    let held = open(500).await;
    for (path, token, body) in [
        (
            format!("/v1/escrows/{disputed}/disputes"),
            &seller_t,
            json!({"reason": "never paid for shipping"}),
        ),
        (
            format!("/v1/escrows/{disputed}/disputes/resolve"),
            &arbiter,
            json!({"to_seller": 1_000, "to_buyer": 3_000}),
        ),
        (
            format!("/v1/escrows/{released}/release"),
            &buyer_t,
            json!({}),
        ),
    ] {
        let a = app.post(&path, token, body).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
    }

    let view = app.get(&format!("/v1/escrows/{disputed}"), &buyer_t).await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
    assert_eq!(view.body["status"], "resolved");
    assert_eq!(view.body["amount"], 4_000);
    assert_eq!(view.body["resolution"], json!([1_000, 3_000]));
    assert_eq!(view.body["dispute"]["raised_by"], "seller");
    assert_eq!(view.body["dispute"]["reason"], "never paid for shipping");
    assert_eq!(view.body["dispute"]["open"], false);
    assert_eq!(view.headers["etag"], "\"4\"");
    assert_shape(&app, "EscrowView", &view.body).await;
    let history = view.body["history"].as_array().expect("a history");
    let summary: Vec<(String, String, String, i64)> = history
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["party"].as_str().unwrap_or_default().to_owned(),
                d["actor"].as_str().unwrap_or_default().to_owned(),
                d["version"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let row = |k: &str, p: &str, a: &str, v: i64| (k.to_owned(), p.to_owned(), a.to_owned(), v);
    assert_eq!(
        summary,
        vec![
            row("opened", "buyer", "e-buyer", 1),
            row("funded", "buyer", "e-buyer", 2),
            row("dispute_raised", "seller", "e-seller", 3),
            row("dispute_resolved", "arbiter", "judge", 4),
        ]
    );
    assert_eq!(history[2]["reason"], "never paid for shipping");
    assert_eq!(history[3]["to_seller"], 1_000);
    assert_eq!(history[3]["to_buyer"], 3_000);
    assert_eq!(history[3]["actor_role"], "arbiter");
    let times: Vec<&str> = history.iter().filter_map(|d| d["at"].as_str()).collect();
    assert_eq!(times.len(), 4);
    assert!(
        times
            .windows(2)
            .all(|w| chrono::DateTime::parse_from_rfc3339(w[0]).ok()
                <= chrono::DateTime::parse_from_rfc3339(w[1]).ok()),
        "in time order: {times:?}"
    );
    let released_view = app.get(&format!("/v1/escrows/{released}"), &seller_t).await;
    let last = &released_view.body["history"][2];
    assert_eq!(
        (&last["kind"], &last["party"], &last["to_seller"]),
        (&json!("released"), &json!("buyer"), &json!(1_000))
    );

    // Who reads: the parties, arbiters, admins; not a stranger.
    assert_eq!(
        app.get(&format!("/v1/escrows/{held}"), &arbiter)
            .await
            .status,
        StatusCode::OK
    );
    assert_refused(
        &app.get(&format!("/v1/escrows/{held}"), &stranger_t).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "a stranger's GET",
    );

    // Lists: by party, one at a time, newest first; without histories.
    let all = set(&[disputed, released, held]);
    let (items, pages) = all_pages(&app, &format!("/v1/escrows?party={buyer}"), &seller_t, 1).await;
    assert_eq!(pages, 3);
    assert_eq!(
        ids(&items),
        [held, released, disputed]
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
    );
    assert!(items.iter().all(|i| i.get("history").is_none()));
    assert_eq!(list(&app, "/v1/escrows", &buyer_t).await, all);
    assert_eq!(list(&app, "/v1/escrows", &arbiter).await, all);
    assert!(list(&app, "/v1/escrows", &stranger_t).await.is_empty());
    assert!(
        list(&app, &format!("/v1/escrows?party={buyer}"), &stranger_t)
            .await
            .is_empty()
    );
    assert_eq!(
        list(&app, "/v1/escrows?status=funded", &admin).await,
        set(&[held])
    );
    assert_eq!(
        list(
            &app,
            &format!("/v1/escrows?party={seller}&status=released"),
            &admin
        )
        .await,
        set(&[released])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pot_lists_hide_anonymous_contributors_and_private_pots_from_other_callers() {
    let app = TestApp::new().await;
    let (_, owner_t) = app.customer("p-owner").await;
    let (bene, _) = app.customer("p-bene").await;
    let (carol, carol_t) = app.customer("p-carol").await;
    let (dave, dave_t) = app.customer("p-dave").await;
    let (_, stranger_t) = app.customer("p-stranger").await;
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    let carol_w = app.wallet(&carol_t, "EUR").await;
    let dave_w = app.wallet(&dave_t, "EUR").await;
    for w in [carol_w, dave_w] {
        assert_eq!(app.deposit(w, 10_000).await.status, StatusCode::OK);
    }
    let create = |days: i64, visibility: &'static str| {
        let app = &app;
        let owner_t = &owner_t;
        async move {
            let a = app
                .post(
                    "/v1/pots",
                    owner_t,
                    json!({"beneficiary": bene, "title": "gift", "currency": "EUR",
                           "closes_at": in_days(days), "visibility": visibility}),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
            a.id()
        }
    };
    let soon = create(3, "public").await;
    let later = create(5, "public").await;
    let private = create(7, "private").await;
    let give = |pot: Uuid, token: &str, wallet: Uuid, amount: i64, anonymous: bool| {
        let app = &app;
        let token = token.to_owned();
        async move {
            let a = app
                .post(
                    &format!("/v1/pots/{pot}/contributions"),
                    &token,
                    json!({"wallet": wallet, "amount": amount, "anonymous": anonymous}),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        }
    };
    give(soon, &dave_t, dave_w, 900, true).await;
    give(soon, &carol_t, carol_w, 100, false).await;
    give(later, &carol_t, carol_w, 2_000, false).await;
    let invited = app
        .post(
            &format!("/v1/pots/{private}/invitations"),
            &owner_t,
            json!({"account": carol}),
        )
        .await;
    assert_eq!(invited.status, StatusCode::OK, "{:?}", invited.body);

    // Others see public pots only, with dave hidden wherever his contribution shows.
    let a = app.get("/v1/pots", &stranger_t).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let items = a.body["items"].as_array().expect("items").clone();
    assert_eq!(ids(&items), vec![later.to_string(), soon.to_string()]);
    assert_shape(&app, "PotView", &items[1]).await;
    let listed = &items[1];
    assert_eq!(listed["raised"], 1_000);
    assert_eq!(listed["contributor_count"], 2);
    assert_eq!(listed["contributions"][1]["anonymous"], true);
    assert_eq!(listed["contributions"][1]["contributor"], Value::Null);
    assert_eq!(listed["contributions"][1]["wallet"], Value::Null);
    assert_eq!(listed["contributions"][0]["contributor"], json!(carol));
    assert!(listed.get("invited").is_none());
    for token in [&stranger_t, &carol_t, &owner_t] {
        for path in ["/v1/pots".to_owned(), format!("/v1/pots/{soon}")] {
            let a = app.get(&path, token).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
            let text = a.body.to_string();
            assert!(
                !text.contains(&dave.to_string()) && !text.contains(&dave_w.to_string()),
                "{path}: dave hidden in {text}"
            );
        }
    }
    // Dave, admins and auditors see him.
    for token in [&dave_t, &admin, &auditor] {
        let a = app.get("/v1/pots?sort=closes_at", token).await;
        let first = &a.body["items"][0];
        assert_eq!(first["id"], json!(soon));
        assert_eq!(first["contributions"][1]["contributor"], json!(dave));
    }

    // The private pot: listed to the invited, the owner and staff.
    assert_eq!(
        list(&app, "/v1/pots", &carol_t).await,
        set(&[soon, later, private])
    );
    assert_eq!(list(&app, "/v1/pots", &owner_t).await.len(), 3);
    assert_eq!(list(&app, "/v1/pots", &auditor).await.len(), 3);
    assert!(list(&app, "/v1/pots?visibility=private", &stranger_t)
        .await
        .is_empty());
    assert!(list(&app, "/v1/pots?visibility=private", &dave_t)
        .await
        .is_empty());
    assert_eq!(
        list(&app, "/v1/pots?visibility=private", &carol_t).await,
        set(&[private])
    );

    // Sorts, one pot per page.
    let (by_raised, pages) = all_pages(
        &app,
        "/v1/pots?visibility=public&sort=raised",
        &stranger_t,
        1,
    )
    .await;
    assert_eq!(pages, 2);
    assert_eq!(ids(&by_raised), vec![later.to_string(), soon.to_string()]);
    let (by_close, _) = all_pages(&app, "/v1/pots?sort=closes_at", &admin, 1).await;
    assert_eq!(
        ids(&by_close),
        vec![soon.to_string(), later.to_string(), private.to_string()]
    );
    let (newest, _) = all_pages(&app, "/v1/pots?sort=newest", &admin, 2).await;
    assert_eq!(
        ids(&newest),
        vec![private.to_string(), later.to_string(), soon.to_string()]
    );
    let (raised_all, _) = all_pages(&app, "/v1/pots?sort=raised", &admin, 2).await;
    let totals: Vec<i64> = raised_all
        .iter()
        .map(|p| p["raised"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(totals, vec![2_000, 1_000, 0]);
    let closed = app
        .post(&format!("/v1/pots/{soon}/close"), &owner_t, json!({}))
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    assert_eq!(
        list(&app, "/v1/pots?status=closed", &stranger_t).await,
        set(&[soon])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_lists_filter_by_owner_status_and_model_and_show_when_a_device_was_last_seen() {
    let app = TestApp::new().await;
    let (owner, owner_t) = app.customer("d-owner").await;
    let (other, other_t) = app.customer("d-other").await;
    let (_, stranger_t) = app.customer("d-stranger").await;
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    let register = |token: &str, serial: &str, model: &str| {
        let app = &app;
        let body = json!({"serial": serial, "model": model, "firmware_version": "1.0.0"});
        let token = token.to_owned();
        async move {
            let a = app.post("/v1/devices", &token, body).await;
            assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
            a.id()
        }
    };
    let t1 = register(&owner_t, "SN-T1", "Thermo 3").await;
    let t2 = register(&owner_t, "SN-T2", "Thermo 3").await;
    let cam = register(&owner_t, "SN-C1", "Cam 1").await;
    let theirs = register(&other_t, "SN-O1", "Thermo 3").await;
    let activated = app
        .post(&format!("/v1/devices/{t2}/activate"), &owner_t, json!({}))
        .await;
    assert_eq!(activated.status, StatusCode::OK, "{:?}", activated.body);
    let credential = activated.body["credential"]
        .as_str()
        .expect("a credential")
        .to_owned();
    let scheduled = app
        .post(
            &format!("/v1/devices/{t2}/firmware"),
            &owner_t,
            json!({"target_version": "1.1.0", "artifact_url": "https://fw.example.com/1.1.0.bin",
                   "sha256": "a".repeat(64)}),
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::OK, "{:?}", scheduled.body);
    let before = app.get(&format!("/v1/devices/{t2}"), &owner_t).await;
    assert_eq!(before.body["last_seen_at"], Value::Null);
    assert_eq!(before.body["pending_update"]["target_version"], "1.1.0");
    assert_shape(&app, "DeviceView", &before.body).await;
    let reported = app
        .send(
            axum::http::Method::POST,
            &format!("/v1/devices/{t2}/firmware/report"),
            None,
            Some(json!({"version": "1.1.0", "outcome": "applied"})),
            &[("authorization", &format!("Device {credential}"))],
        )
        .await;
    assert_eq!(reported.status, StatusCode::OK, "{:?}", reported.body);
    let reported_at: chrono::DateTime<Utc> = sqlx::query_scalar(
        "SELECT occurred_at FROM events WHERE event_type = 'FirmwareUpdateApplied'",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("the report");
    let after = app.get(&format!("/v1/devices/{t2}"), &owner_t).await;
    let seen = after.body["last_seen_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .expect("last seen");
    assert_eq!(seen, reported_at);
    assert_eq!(after.body["firmware_version"], "1.1.0");
    assert_eq!(after.body["pending_update"], Value::Null);
    assert_eq!(after.headers["etag"], "\"4\"");
    // A command of the owner is not the device being seen.
    let suspended = app
        .post(
            &format!("/v1/devices/{t2}/suspend"),
            &owner_t,
            json!({"reason": "maintenance"}),
        )
        .await;
    assert_eq!(suspended.status, StatusCode::OK, "{:?}", suspended.body);
    let later = app.get(&format!("/v1/devices/{t2}"), &owner_t).await;
    assert_eq!(later.body["last_seen_at"], after.body["last_seen_at"]);
    assert_eq!(later.body["status"], "suspended");

    // Lists: the caller's own by default, all for staff; filters; pages of two.
    let mine = set(&[t1, t2, cam]);
    let (items, pages) = all_pages(&app, "/v1/devices", &owner_t, 2).await;
    assert_eq!(pages, 2);
    assert_eq!(
        ids(&items),
        vec![cam.to_string(), t2.to_string(), t1.to_string()]
    );
    assert!(
        !serde_json::to_string(&items)
            .unwrap_or_default()
            .contains("credential"),
        "no credential in a list"
    );
    assert_eq!(
        list(&app, &format!("/v1/devices?owner={owner}"), &owner_t).await,
        mine
    );
    assert_eq!(
        list(&app, "/v1/devices?status=suspended", &owner_t).await,
        set(&[t2])
    );
    assert_eq!(
        list(&app, "/v1/devices?model=Cam%201", &owner_t).await,
        set(&[cam])
    );
    assert_eq!(
        list(
            &app,
            "/v1/devices?model=Thermo%203&status=registered",
            &owner_t
        )
        .await,
        set(&[t1])
    );
    assert_eq!(list(&app, "/v1/devices", &admin).await.len(), 4);
    assert_eq!(
        list(&app, "/v1/devices?model=Thermo%203", &auditor).await,
        set(&[t1, t2, theirs])
    );
    assert_eq!(
        list(&app, &format!("/v1/devices?owner={other}"), &admin).await,
        set(&[theirs])
    );
    assert!(list(&app, "/v1/devices", &stranger_t).await.is_empty());
    assert_refused(
        &app.get(&format!("/v1/devices?owner={other}"), &owner_t)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "another owner's devices",
    );
    assert_refused(
        &app.get(&format!("/v1/devices/{theirs}"), &owner_t).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "another owner's device",
    );
}
