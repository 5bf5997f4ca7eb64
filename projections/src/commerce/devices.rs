//! The `devices` read model (table `devices`): every device with its status, firmware, pending
//! update and when it was last seen (its last own report). Credentials and their hashes are
//! never stored here.

use super::{
    cursor_key, cursor_parts, cursor_uuid, decode_all, ids_to_load, load_rows, HasId, QueryError,
    Touched,
};
use crate::page::{Page, PageRequest};
use crate::runtime::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use domain::device::{DeviceEvent, DeviceStatus, FIRMWARE_REPORT_TIMEOUT_HOURS};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// The projector's name (checkpoint, `X-Position`, CLI).
pub const NAME: &str = "devices";

/// The role under which a device's own commands are recorded.
const DEVICE_ROLE: &str = "device";

/// The `devices` projector.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevicesProjector;

/// A device's status as stored and shown (`registered`, `active`, `suspended`,
/// `decommissioned`).
pub fn status_name(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Unregistered => "unregistered",
        DeviceStatus::Registered => "registered",
        DeviceStatus::Active => "active",
        DeviceStatus::Suspended => "suspended",
        DeviceStatus::Decommissioned => "decommissioned",
    }
}

/// One row of `devices`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct DeviceRow {
    id: Uuid,
    owner: Uuid,
    serial: String,
    model: String,
    firmware_version: String,
    status: String,
    pending_target_version: Option<String>,
    pending_artifact_url: Option<String>,
    pending_sha256: Option<String>,
    pending_scheduled_at: Option<DateTime<Utc>>,
    last_update_outcome: Option<String>,
    last_update_detail: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    position: i64,
}

impl HasId for DeviceRow {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl DeviceRow {
    fn clear_pending(&mut self) {
        self.pending_target_version = None;
        self.pending_artifact_url = None;
        self.pending_sha256 = None;
        self.pending_scheduled_at = None;
    }
}

#[async_trait]
impl Projector for DevicesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["devices"]
    }

    // They serve queries only.
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &["devices_owner", "devices_model"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["device"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let decoded = decode_all::<DeviceEvent>(events)?;
        let loaded = load_rows::<DeviceRow>(conn, "devices", &ids_to_load(events)).await?;
        let mut rows = Touched::new(loaded);
        for (e, event) in events.iter().zip(decoded) {
            let at = e.metadata.occurred_at;
            let row = match event {
                DeviceEvent::DeviceRegistered {
                    device_id: _,
                    owner,
                    serial,
                    model,
                    firmware_version,
                } => {
                    rows.create(
                        e.stream_id,
                        DeviceRow {
                            id: e.stream_id,
                            owner,
                            serial,
                            model,
                            firmware_version,
                            status: status_name(DeviceStatus::Registered).to_owned(),
                            pending_target_version: None,
                            pending_artifact_url: None,
                            pending_sha256: None,
                            pending_scheduled_at: None,
                            last_update_outcome: None,
                            last_update_detail: None,
                            last_seen_at: None,
                            registered_at: at,
                            updated_at: at,
                            version: 0,
                            position: 0,
                        },
                    );
                    rows.row(e)?
                }
                DeviceEvent::DeviceActivated { .. } => {
                    let row = rows.row(e)?;
                    row.status = status_name(DeviceStatus::Active).to_owned();
                    row
                }
                // The credential changes; nothing this read model shows does.
                DeviceEvent::DeviceCredentialRotated { .. } => rows.row(e)?,
                DeviceEvent::FirmwareUpdateScheduled {
                    target_version,
                    artifact_url,
                    sha256,
                    scheduled_at,
                } => {
                    let row = rows.row(e)?;
                    row.pending_target_version = Some(target_version);
                    row.pending_artifact_url = Some(artifact_url);
                    row.pending_sha256 = Some(sha256);
                    row.pending_scheduled_at = Some(scheduled_at);
                    row
                }
                DeviceEvent::FirmwareUpdateApplied { version } => {
                    let row = rows.row(e)?;
                    row.firmware_version = version;
                    row.clear_pending();
                    row.last_update_outcome = Some("applied".to_owned());
                    row.last_update_detail = None;
                    row
                }
                DeviceEvent::FirmwareUpdateFailed { detail, .. } => {
                    let row = rows.row(e)?;
                    row.clear_pending();
                    row.last_update_outcome = Some("failed".to_owned());
                    row.last_update_detail = detail;
                    row
                }
                DeviceEvent::DeviceSuspended { .. } => {
                    let row = rows.row(e)?;
                    row.status = status_name(DeviceStatus::Suspended).to_owned();
                    row
                }
                DeviceEvent::DeviceDecommissioned { .. } => {
                    let row = rows.row(e)?;
                    row.clear_pending();
                    row.status = status_name(DeviceStatus::Decommissioned).to_owned();
                    row
                }
            };
            if e.metadata.actor_role == DEVICE_ROLE {
                row.last_seen_at = Some(at);
            }
            row.version = e.stream_version;
            row.position = e.position;
            row.updated_at = at;
        }
        write_devices(conn, &rows).await?;
        Ok(())
    }
}

async fn write_devices(
    conn: &mut PgConnection,
    rows: &Touched<DeviceRow>,
) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut owner = Vec::with_capacity(n);
    let mut serial = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut firmware_version = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut pending_target_version = Vec::with_capacity(n);
    let mut pending_artifact_url = Vec::with_capacity(n);
    let mut pending_sha256 = Vec::with_capacity(n);
    let mut pending_scheduled_at = Vec::with_capacity(n);
    let mut last_update_outcome = Vec::with_capacity(n);
    let mut last_update_detail = Vec::with_capacity(n);
    let mut last_seen_at = Vec::with_capacity(n);
    let mut registered_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    for r in rows.changed() {
        id.push(r.id);
        owner.push(r.owner);
        serial.push(r.serial.as_str());
        model.push(r.model.as_str());
        firmware_version.push(r.firmware_version.as_str());
        status.push(r.status.as_str());
        pending_target_version.push(r.pending_target_version.as_deref());
        pending_artifact_url.push(r.pending_artifact_url.as_deref());
        pending_sha256.push(r.pending_sha256.as_deref());
        pending_scheduled_at.push(r.pending_scheduled_at);
        last_update_outcome.push(r.last_update_outcome.as_deref());
        last_update_detail.push(r.last_update_detail.as_deref());
        last_seen_at.push(r.last_seen_at);
        registered_at.push(r.registered_at);
        updated_at.push(r.updated_at);
        version.push(r.version);
        position.push(r.position);
    }
    sqlx::query(
        "INSERT INTO devices (id, owner, serial, model, firmware_version, status, \
           pending_target_version, pending_artifact_url, pending_sha256, pending_scheduled_at, \
           last_update_outcome, last_update_detail, last_seen_at, registered_at, updated_at, \
           version, position) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[], \
           $12::text[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], \
           $16::bigint[], $17::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
           firmware_version = EXCLUDED.firmware_version, status = EXCLUDED.status, \
           pending_target_version = EXCLUDED.pending_target_version, \
           pending_artifact_url = EXCLUDED.pending_artifact_url, \
           pending_sha256 = EXCLUDED.pending_sha256, \
           pending_scheduled_at = EXCLUDED.pending_scheduled_at, \
           last_update_outcome = EXCLUDED.last_update_outcome, \
           last_update_detail = EXCLUDED.last_update_detail, \
           last_seen_at = EXCLUDED.last_seen_at, updated_at = EXCLUDED.updated_at, \
           version = EXCLUDED.version, position = EXCLUDED.position",
    )
    .bind(&id)
    .bind(&owner)
    .bind(&serial)
    .bind(&model)
    .bind(&firmware_version)
    .bind(&status)
    .bind(&pending_target_version)
    .bind(&pending_artifact_url)
    .bind(&pending_sha256)
    .bind(&pending_scheduled_at)
    .bind(&last_update_outcome)
    .bind(&last_update_detail)
    .bind(&last_seen_at)
    .bind(&registered_at)
    .bind(&updated_at)
    .bind(&version)
    .bind(&position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A firmware update waiting for the device's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingUpdateView {
    /// The version to install.
    pub target_version: String,
    /// Where the device downloads it.
    pub artifact_url: String,
    /// The artifact's SHA-256, lower-case hex.
    pub sha256: String,
    /// When it was scheduled.
    pub scheduled_at: DateTime<Utc>,
    /// When the update is marked failed if the device has not reported.
    pub times_out_at: DateTime<Utc>,
}

/// A device as `GET /v1/devices/{id}` and `GET /v1/devices` show it (never its credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// The device's id.
    pub id: Uuid,
    /// The owning account.
    pub owner: Uuid,
    /// The manufacturer's serial number.
    pub serial: String,
    /// The model name.
    pub model: String,
    /// The firmware version running on the device.
    pub firmware_version: String,
    /// `registered`, `active`, `suspended` or `decommissioned`.
    pub status: String,
    /// The update awaiting the device's report, if any.
    pub pending_update: Option<PendingUpdateView>,
    /// How the last update ended: `applied` or `failed`.
    pub last_update_outcome: Option<String>,
    /// The last failure's detail (the device's message, or the timeout).
    pub last_update_detail: Option<String>,
    /// When the device itself last reported (null before its first report).
    pub last_seen_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// The device's stream version (its ETag).
    pub version: i64,
}

impl DeviceView {
    fn from_row(r: DeviceRow) -> Self {
        let pending_update = match (
            r.pending_target_version,
            r.pending_artifact_url,
            r.pending_sha256,
            r.pending_scheduled_at,
        ) {
            (Some(target_version), Some(artifact_url), Some(sha256), Some(scheduled_at)) => {
                Some(PendingUpdateView {
                    target_version,
                    artifact_url,
                    sha256,
                    scheduled_at,
                    times_out_at: scheduled_at + Duration::hours(FIRMWARE_REPORT_TIMEOUT_HOURS),
                })
            }
            _ => None,
        };
        Self {
            id: r.id,
            owner: r.owner,
            serial: r.serial,
            model: r.model,
            firmware_version: r.firmware_version,
            status: r.status,
            pending_update,
            last_update_outcome: r.last_update_outcome,
            last_update_detail: r.last_update_detail,
            last_seen_at: r.last_seen_at,
            registered_at: r.registered_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// Which devices `GET /v1/devices` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Only this owner's.
    pub owner: Option<Uuid>,
    /// Only in this status.
    pub status: Option<DeviceStatus>,
    /// Only of this model (exact name).
    pub model: Option<String>,
}

/// The device `id`; `None` when there is no such device.
pub async fn device(pool: &PgPool, id: Uuid) -> Result<Option<DeviceView>, sqlx::Error> {
    let row: Option<DeviceRow> = sqlx::query_as("SELECT * FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(DeviceView::from_row))
}

const LIST_TAG: &str = "devices";

/// A page of devices, newest first.
pub async fn devices(
    pool: &PgPool,
    filter: &DeviceFilter,
    page: &PageRequest,
) -> Result<Page<DeviceView>, QueryError> {
    let after = match cursor_parts(&page.after, LIST_TAG, 1)? {
        Some(parts) => Some(cursor_uuid(&parts[0])?),
        None => None,
    };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM devices WHERE true");
    if let Some(o) = filter.owner {
        q.push(" AND owner = ").push_bind(o);
    }
    if let Some(s) = filter.status {
        q.push(" AND status = ").push_bind(status_name(s));
    }
    if let Some(m) = &filter.model {
        q.push(" AND model = ").push_bind(m.clone());
    }
    if let Some(a) = after {
        q.push(" AND id < ").push_bind(a);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
    let rows: Vec<DeviceRow> = q.build_query_as().fetch_all(pool).await?;
    let views = rows.into_iter().map(DeviceView::from_row).collect();
    Ok(Page::from_rows(views, page.limit, |d: &DeviceView| {
        cursor_key(LIST_TAG, &[d.id.to_string()])
    }))
}
