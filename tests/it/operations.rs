//! Operations endpoints: /openapi.json describes every command route, /metrics counts requests.

use crate::support::TestApp;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use commands::Role;
use http_body_util::BodyExt;
use tower::ServiceExt;

const COMMAND_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/accounts"),
    ("patch", "/v1/accounts/{id}/profile"),
    ("post", "/v1/accounts/{id}/kyc"),
    ("post", "/v1/accounts/{id}/kyc/approve"),
    ("post", "/v1/accounts/{id}/kyc/reject"),
    ("post", "/v1/accounts/{id}/suspend"),
    ("post", "/v1/accounts/{id}/reinstate"),
    ("post", "/v1/accounts/{id}/close"),
    ("delete", "/v1/accounts/{id}/personal-data"),
    ("post", "/v1/wallets"),
    ("post", "/v1/wallets/{id}/deposits"),
    ("post", "/v1/wallets/{id}/withdrawals"),
    ("post", "/v1/wallets/{id}/freeze"),
    ("post", "/v1/wallets/{id}/unfreeze"),
    ("post", "/v1/wallets/{id}/close"),
    ("post", "/v1/transfers"),
    ("post", "/v1/orders"),
    ("post", "/v1/orders/{id}/pay"),
    ("post", "/v1/orders/{id}/ship"),
    ("post", "/v1/orders/{id}/confirm-delivery"),
    ("post", "/v1/orders/{id}/cancel"),
    ("post", "/v1/orders/{id}/refunds"),
    ("get", "/v1/orders/{id}"),
    ("get", "/v1/escrows/{id}"),
    ("get", "/v1/accounts/{id}"),
    ("get", "/v1/wallets/{id}"),
];

#[tokio::test]
async fn the_openapi_document_lists_every_route_in_version_3_1() {
    let app = TestApp::new().await;
    let doc = app
        .send(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc.body["openapi"]
    );
    for (method, path) in COMMAND_ROUTES {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "{method} {path} is not described"
        );
    }
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    let deposit = &doc.body["paths"]["/v1/wallets/{id}/deposits"]["post"];
    let params: Vec<&str> = deposit["parameters"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(params, ["id", "Idempotency-Key", "If-Match"], "{deposit}");
    for status in [
        "200", "400", "401", "403", "404", "409", "412", "413", "415", "422",
    ] {
        assert!(
            deposit["responses"][status].is_object(),
            "no {status} for deposits: {deposit}"
        );
    }
    let docs = app.send(Method::GET, "/docs", None, None, &[]).await;
    assert_eq!(docs.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::new().await;
    let (_, token) = app.customer("metrics-user").await;
    let wallet = app.wallet(&token, "EUR").await;
    let _ = app.get(&format!("/v1/wallets/{wallet}"), &token).await;
    let req = Request::builder()
        .method(Method::GET)
        .uri("/metrics")
        .body(Body::empty())
        .expect("request");
    let response = app.router.clone().oneshot(req).await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");
    assert!(
        text.lines()
            .any(|l| l.starts_with("chronicle_http_requests_total")
                && l.contains("route=\"/v1/wallets/{id}\"")
                && l.contains("status=\"200\"")),
        "no request counter for GET /v1/wallets/{{id}} in:\n{text}"
    );
    assert!(
        text.contains("chronicle_append_batch_requests_bucket{le=\"1\"}"),
        "no batch-size histogram with count buckets in:\n{text}"
    );
    assert!(
        text.contains("chronicle_log_horizon_age_seconds"),
        "no horizon age in:\n{text}"
    );
    let _ = Role::Customer;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = TestApp::new().await;
    let a = app
        .send(Method::GET, "/v1/nothing-here", None, None, &[])
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(a.body["code"], "not_found");
    let b = app
        .send(Method::PUT, "/v1/transfers", None, None, &[])
        .await;
    assert_eq!(b.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(b.headers["content-type"], "application/problem+json");
}
