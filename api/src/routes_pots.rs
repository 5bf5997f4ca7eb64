//! Pot routes: create, contribute, invite, close, pay out, cancel; GET a pot.

use crate::extract::CommandRequest;
use crate::routes::{answer, CommandHeaders, CommandResponses, NoBody, ReasonBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use commands::pots::{CreatePot, PotAction};
use commands::Envelope;
use domain::pot::Visibility;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(
    create_pot,
    contribute,
    invite_to_pot,
    close_pot,
    pay_out_pot,
    cancel_pot
))]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/pots", post(create_pot))
        .route("/v1/pots/{id}/contributions", post(contribute))
        .route("/v1/pots/{id}/invitations", post(invite_to_pot))
        .route("/v1/pots/{id}/close", post(close_pot))
        .route("/v1/pots/{id}/payout", post(pay_out_pot))
        .route("/v1/pots/{id}/cancel", post(cancel_pot))
}

/// Who may see and contribute to a pot.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PotVisibility {
    /// Any active account may contribute; any authenticated caller may read it.
    Public,
    /// Only the owner, the beneficiary and invited accounts may contribute.
    Private,
}

impl From<PotVisibility> for Visibility {
    fn from(v: PotVisibility) -> Self {
        match v {
            PotVisibility::Public => Visibility::Public,
            PotVisibility::Private => Visibility::Private,
        }
    }
}

impl From<Visibility> for PotVisibility {
    fn from(v: Visibility) -> Self {
        match v {
            Visibility::Public => PotVisibility::Public,
            Visibility::Private => PotVisibility::Private,
        }
    }
}

/// POST /v1/pots.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePotBody {
    /// The account the money is for (active).
    beneficiary: Uuid,
    /// 1-200 characters.
    title: String,
    /// ISO 4217 code; contributions are made in it.
    currency: String,
    /// An optional goal, in minor units (informational).
    #[serde(default)]
    target_amount: Option<i64>,
    /// RFC 3339, in the future: contributions stop then.
    closes_at: DateTime<Utc>,
    /// `public` or `private`.
    visibility: PotVisibility,
}

#[utoipa::path(post, path = "/v1/pots", tag = "commands", request_body = CreatePotBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn create_pot(State(s): State<AppState>, req: CommandRequest<CreatePotBody>) -> Response {
    let b = req.body;
    let input = CreatePot {
        beneficiary: b.beneficiary,
        title: b.title,
        currency: b.currency,
        target_amount: b.target_amount,
        closes_at: b.closes_at,
        visibility: b.visibility.into(),
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.create_pot(env, input))
            .await,
    )
}

async fn act(s: &AppState, env: &Envelope, id: Uuid, action: PotAction) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.pot_command(env, id, action))
            .await,
    )
}

/// POST /v1/pots/{id}/contributions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContributeBody {
    /// The caller's wallet to debit, in the pot's currency.
    wallet: Uuid,
    /// Minor units.
    amount: i64,
    /// A message to the beneficiary, 0-500 characters (blank means none).
    #[serde(default)]
    message: Option<String>,
    /// Hide the contributor from everyone but themselves, admins and auditors.
    #[serde(default)]
    anonymous: bool,
}

#[utoipa::path(post, path = "/v1/pots/{id}/contributions", tag = "commands", request_body = ContributeBody, params(("id" = Uuid, Path, description = "the pot"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn contribute(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ContributeBody>,
) -> Response {
    let b = req.body;
    let action = PotAction::Contribute {
        wallet: b.wallet,
        amount: b.amount,
        message: b.message,
        anonymous: b.anonymous,
    };
    act(&s, &req.env, id, action).await
}

/// POST /v1/pots/{id}/invitations.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    /// The account to invite (active).
    account: Uuid,
}

#[utoipa::path(post, path = "/v1/pots/{id}/invitations", tag = "commands", request_body = InviteBody, params(("id" = Uuid, Path, description = "the pot"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn invite_to_pot(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<InviteBody>,
) -> Response {
    let action = PotAction::Invite {
        account: req.body.account,
    };
    act(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/pots/{id}/close", tag = "commands", params(("id" = Uuid, Path, description = "the pot"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn close_pot(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    act(&s, &req.env, id, PotAction::Close).await
}

#[utoipa::path(post, path = "/v1/pots/{id}/payout", tag = "commands", params(("id" = Uuid, Path, description = "the pot"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn pay_out_pot(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    act(&s, &req.env, id, PotAction::PayOut).await
}

#[utoipa::path(post, path = "/v1/pots/{id}/cancel", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "the pot"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn cancel_pot(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    let action = PotAction::Cancel {
        reason: req.body.reason,
    };
    act(&s, &req.env, id, action).await
}
