//! Pot routes: create, contribute, invite, close, pay out, cancel; GET a pot.

use crate::error::Problem;
use crate::extract::{Caller, CommandRequest};
use crate::routes::{answer, with_etag, CommandHeaders, CommandResponses, NoBody, ReasonBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use commands::pots::{CreatePot, PotAction};
use commands::Envelope;
use domain::pot::{PotStatus, PublicContribution, Visibility};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(
    create_pot,
    get_pot,
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
        .route("/v1/pots/{id}", get(get_pot))
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

/// One contribution as GET /v1/pots/{id} shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContributionView {
    contribution_id: Uuid,
    /// Null when the contribution is anonymous (except to the contributor, admins, auditors).
    contributor: Option<Uuid>,
    /// Null when the contributor is hidden.
    wallet: Option<Uuid>,
    amount: i64,
    anonymous: bool,
    message: Option<String>,
    refunded: bool,
}

impl From<PublicContribution> for ContributionView {
    fn from(c: PublicContribution) -> Self {
        Self {
            contribution_id: c.contribution_id,
            contributor: c.contributor,
            wallet: c.wallet,
            amount: c.amount,
            anonymous: c.anonymous,
            message: c.message,
            refunded: c.refunded,
        }
    }
}

/// A pot as GET /v1/pots/{id} returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PotView {
    id: Uuid,
    owner: Uuid,
    beneficiary: Uuid,
    title: String,
    currency: String,
    target_amount: Option<i64>,
    closes_at: Option<DateTime<Utc>>,
    visibility: PotVisibility,
    /// `open`, `closed`, `paid_out` or `cancelled`.
    #[schema(value_type = String, example = "open")]
    status: PotStatus,
    /// Contributions not refunded, in minor units.
    raised: i64,
    /// What went to the beneficiary.
    paid_out: i64,
    /// What the pot holds now (`raised - paid_out`).
    held: i64,
    /// Distinct accounts with contributions not refunded (anonymous ones counted, not named).
    contributor_count: usize,
    /// Every contribution ever received.
    contribution_count: usize,
    /// The most recent contributions (at most 100), newest first.
    contributions: Vec<ContributionView>,
    /// Invited accounts: shown to the owner, admins and auditors only.
    #[serde(skip_serializing_if = "Option::is_none")]
    invited: Option<Vec<Uuid>>,
    version: i64,
}

#[utoipa::path(get, path = "/v1/pots/{id}", tag = "queries", params(("id" = Uuid, Path)), security(("bearer" = [])), responses((status = 200, description = "the pot: raised total, contributor count, recent contributions (anonymous contributors hidden); ETag is its version", body = PotView), (status = 401, description = "no or bad credentials", body = Problem, content_type = "application/problem+json"), (status = 403, description = "a private pot the caller is no party to", body = Problem, content_type = "application/problem+json"), (status = 404, description = "unknown id", body = Problem, content_type = "application/problem+json")))]
async fn get_pot(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Caller(actor): Caller,
) -> Response {
    match s.service.get_pot(&Envelope::new(actor), id).await {
        Ok(read) => {
            let p = &read.pot.state;
            let view = PotView {
                id: p.id,
                owner: p.owner,
                beneficiary: p.beneficiary,
                title: p.title.clone(),
                currency: p.currency.map(String::from).unwrap_or_default(),
                target_amount: p.target_amount,
                closes_at: p.closes_at,
                visibility: p.visibility.into(),
                status: p.status,
                raised: p.raised,
                paid_out: p.paid_out,
                held: p.held(),
                contributor_count: read.contributor_count,
                contribution_count: p.contributions.len(),
                contributions: read.contributions.into_iter().map(Into::into).collect(),
                invited: read
                    .show_invited
                    .then(|| p.invited.iter().copied().collect()),
                version: read.pot.version,
            };
            with_etag(
                read.pot.version,
                serde_json::to_value(view).unwrap_or_default(),
            )
        }
        Err(e) => Problem::from(e).into_response(),
    }
}
