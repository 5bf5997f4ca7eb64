//! The OpenAPI 3.1 description of the HTTP surface (`/openapi.json`) and interactive docs
//! (`/docs`).

use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Chronicle", description = "Event-sourced backend for accounts, wallets, orders, escrow, pots and devices. Errors are application/problem+json with a stable `code`."),
    paths(
        crate::routes::health, crate::routes::ready,
        crate::routes::open_account, crate::routes::update_profile,
        crate::routes::submit_kyc, crate::routes::approve_kyc, crate::routes::reject_kyc,
        crate::routes::suspend_account, crate::routes::reinstate_account, crate::routes::close_account,
        crate::routes::erase_personal_data,
        crate::routes::open_wallet, crate::routes::deposit, crate::routes::withdraw,
        crate::routes::freeze, crate::routes::unfreeze, crate::routes::close_wallet, crate::routes::transfer,
        crate::routes::place_order, crate::routes::pay_order, crate::routes::ship_order,
        crate::routes::confirm_delivery, crate::routes::cancel_order, crate::routes::refund_order,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The whole description: the core routes and each area's own.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::routes_escrows::Api::openapi());
    doc.merge(crate::routes_pots::Api::openapi());
    doc.merge(crate::routes_devices::Api::openapi());
    doc.merge(crate::queries_money::Api::openapi());
    doc.merge(crate::queries_commerce::Api::openapi());
    doc.merge(crate::routes_telemetry::Api::openapi());
    doc.merge(crate::routes_audit::Api::openapi());
    doc
}

/// GET /openapi.json.
pub async fn spec() -> Response {
    Json(document()).into_response()
}

/// GET /docs: an interactive reference rendered from /openapi.json.
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html><head><title>Chronicle API</title><meta charset="utf-8"/></head>
<body>
<script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
<noscript>The interactive reference needs JavaScript; the description itself is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body></html>"#,
    )
}
