//! Read-model queries (filled in by this version's read models).

use crate::AppState;
use axum::Router;
use utoipa::OpenApi;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi()]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
}
