//! The `chronicle` binary: `serve`, `migrate`, `token` and `projections`.

mod audit_cli;
mod projections_cli;

/// mimalloc: the log is read and decoded into many small allocations across threads, where
/// it is markedly cheaper than the system allocator (docs/benchmarks.md, "Read side").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use api::{AppState, AuthConfig};
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand, ValueEnum};
use commands::pg::PgEventStore;
use commands::{CommandService, Role, ServiceConfig, SystemClock};
use std::sync::Arc;

/// The development secret used with `--dev`. Never use it in production.
const DEV_SECRET: &str = "chronicle-development-secret-not-for-production";

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Event-sourced backend for accounts, wallets, orders, escrow, pots and devices"
)]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chronicle",
        global = true
    )]
    database_url: String,
    /// HS256 secret for bearer tokens (required unless --dev).
    #[arg(
        long,
        env = "CHRONICLE_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    jwt_secret: Option<String>,
    /// Use a fixed development secret for tokens. Never in production.
    #[arg(long, global = true)]
    dev: bool,
    /// Required `aud` claim of tokens, if set.
    #[arg(long, env = "CHRONICLE_JWT_AUDIENCE", global = true)]
    jwt_audience: Option<String>,
    /// Required `iss` claim of tokens, if set.
    #[arg(long, env = "CHRONICLE_JWT_ISSUER", global = true)]
    jwt_issuer: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServeRole {
    Api,
    Projectors,
    Processes,
    Ingest,
}

#[derive(Subcommand)]
enum Command {
    /// Create and migrate the database, then serve.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "CHRONICLE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Which parts to run in this process.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "api,projectors,processes,ingest"
        )]
        roles: Vec<ServeRole>,
        /// NATS server URL (unset: no NATS).
        #[arg(long, env = "NATS_URL")]
        nats_url: Option<String>,
        /// Database connections in the pool.
        #[arg(long, env = "CHRONICLE_DB_POOL", default_value_t = 32)]
        db_pool: u32,
        /// Writer tasks sharing commits.
        #[arg(long, env = "CHRONICLE_WRITERS", default_value_t = 2)]
        writers: usize,
        /// Telemetry: retention, and the NATS stream, subjects and consumer.
        #[command(flatten)]
        ingest: ingest::IngestArgs,
    },
    /// Create and migrate the database, then exit.
    Migrate,
    /// Inspect, rebuild and repair the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// The log as evidence.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Print a development token signed with the configured secret.
    Token {
        /// The subject.
        #[arg(long)]
        sub: String,
        /// A role (repeatable): customer, payments, admin, auditor, arbiter.
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
        /// Lifetime, such as 1h, 30m, 3600s.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Each projector's position, lag in events and seconds, and parked events.
    Status,
    /// Rebuild read models from position 0 into shadow tables while the live ones keep
    /// serving, then swap them in atomically. An interrupted rebuild resumes.
    Rebuild {
        /// A projector's name, or `all`.
        name: String,
    },
    /// Apply parked events again (after a fix); those that fail again stay parked.
    Retry {
        /// A projector's name, or `all`.
        name: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute the hash chain of the log and report the first break; exits with status 1
    /// when the chain is broken.
    Verify,
    /// Export the log in commit order as NDJSON or CSV (to stdout or --output), with a
    /// progress bar on stderr; resumable from the cursor it prints and keeps.
    Export {
        /// Only events that occurred at or after this RFC 3339 time (default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// Only events that occurred before this RFC 3339 time (default: no bound).
        #[arg(long)]
        to: Option<String>,
        /// Only this stream type: account, wallet, order, escrow, pot or device.
        #[arg(long)]
        stream_type: Option<String>,
        /// ndjson (one JSON event per line) or csv (header row, payload as JSON text).
        #[arg(long, default_value = "ndjson")]
        format: api::audit_export::Format,
        /// Start after this cursor (`<tx>-<position>`, as printed) or log position.
        #[arg(long)]
        after: Option<String>,
        /// Write to this file (and the last cursor to `<FILE>.cursor`) instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// With --output: append after the cursor kept in `<FILE>.cursor` (a fresh export
        /// when there is none).
        #[arg(long)]
        resume: bool,
        /// Stop after this many events (resume later from the cursor).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        limit: Option<i64>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown role {s:?}: use customer, payments, admin, auditor or arbiter")
    })
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(factor)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("bad duration {s:?}"))
}

fn auth_config(cli: &Cli) -> anyhow::Result<AuthConfig> {
    let secret = match (&cli.jwt_secret, cli.dev) {
        (Some(s), _) if !s.is_empty() => s.clone(),
        (_, true) => {
            tracing::warn!(
                "--dev: tokens use a FIXED DEVELOPMENT SECRET; never run like this in production"
            );
            DEV_SECRET.to_owned()
        }
        _ => {
            anyhow::bail!("CHRONICLE_JWT_SECRET is required (or pass --dev for local development)")
        }
    };
    Ok(AuthConfig::hs256(
        secret.as_bytes(),
        cli.jwt_audience.clone(),
        cli.jwt_issuer.clone(),
    ))
}

async fn prepare_database(url: &str, pool_size: u32) -> anyhow::Result<sqlx::PgPool> {
    commands::db::ensure_database(url)
        .await
        .context("cannot create the database")?;
    let pool = commands::db::connect(url, pool_size)
        .await
        .context("cannot connect to PostgreSQL")?;
    commands::db::migrate(&pool)
        .await
        .context("cannot migrate the database")?;
    Ok(pool)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Token { sub, roles, ttl } => {
            let auth = auth_config(&cli)?;
            println!("{}", auth.mint(sub, roles, *ttl)?);
        }
        Command::Migrate => {
            prepare_database(&cli.database_url, 2).await?;
            tracing::info!("database migrated");
        }
        Command::Audit { action } => {
            let pool = prepare_database(&cli.database_url, 2).await?;
            match action {
                AuditAction::Verify => {
                    if !audit_cli::verify(&pool).await? {
                        std::process::exit(1);
                    }
                }
                AuditAction::Export {
                    from,
                    to,
                    stream_type,
                    format,
                    after,
                    output,
                    resume,
                    limit,
                } => {
                    audit_cli::export(
                        &pool,
                        audit_cli::ExportArgs {
                            from: from.clone(),
                            to: to.clone(),
                            stream_type: stream_type.clone(),
                            format: *format,
                            after: after.clone(),
                            output: output.clone(),
                            resume: *resume,
                            limit: *limit,
                        },
                    )
                    .await?
                }
            }
        }
        Command::Projections { action } => {
            let pool = prepare_database(&cli.database_url, 4).await?;
            match action {
                ProjectionsAction::Status => projections_cli::status(&pool).await?,
                ProjectionsAction::Rebuild { name } => {
                    projections_cli::rebuild_cmd(&pool, name).await?
                }
                ProjectionsAction::Retry { name } => {
                    projections_cli::retry_cmd(&pool, name).await?
                }
            }
        }
        Command::Serve {
            listen,
            roles,
            nats_url,
            db_pool,
            writers,
            ingest,
        } => {
            let auth = auth_config(&cli)?;
            let pool = prepare_database(&cli.database_url, *db_pool).await?;
            if nats_url.is_none() {
                tracing::info!(
                    "NATS_URL is not set: no NATS (telemetry over HTTP only, no event fan-out)"
                );
            }
            let store = PgEventStore::new(pool.clone(), *writers);
            let service = Arc::new(CommandService::new(
                store,
                Arc::new(SystemClock),
                ServiceConfig::default(),
            ));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut workers = Vec::new();
            if roles.contains(&ServeRole::Processes) {
                let mut stopped = stopped.clone();
                let until = async move {
                    let _ = stopped.changed().await;
                };
                workers.push(tokio::spawn(commands::processes::run(
                    service.clone(),
                    pool.clone(),
                    until,
                )));
                tracing::info!("the deadline processes are running");
            }
            if roles.contains(&ServeRole::Ingest) {
                workers.push(tokio::spawn(ingest::run(
                    pool.clone(),
                    nats_url.clone(),
                    ingest.clone(),
                    stopped.clone(),
                )));
            }
            if roles.contains(&ServeRole::Projectors) {
                let spawned = projections_cli::spawn_workers(&pool, service.commits(), &stopped);
                tracing::info!(projectors = spawned.len(), "the projectors are running");
                if let Some(url) = nats_url.clone() {
                    workers.push(projections_cli::spawn_fanout(
                        pool.clone(),
                        url,
                        service.commits(),
                        stopped.clone(),
                    ));
                }
                workers.extend(spawned.into_iter().map(|h| {
                    tokio::spawn(async move {
                        if let Ok(Err(error)) = h.await {
                            tracing::error!(%error, "a projector stopped");
                        }
                    })
                }));
            }
            let shutdown = async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            };
            if roles.contains(&ServeRole::Api) {
                let state = AppState {
                    service,
                    auth: Arc::new(auth),
                    telemetry: ingest::group::GroupWriter::new(
                        pool.clone(),
                        ingest.telemetry_http_writers as usize,
                    ),
                    pool,
                };
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tracing::info!(address = %listener.local_addr()?, "chronicle is serving");
                // Answers are small and written in pieces: without TCP_NODELAY, Nagle's
                // algorithm meets the client's delayed ACK and adds tens of milliseconds.
                let listener = listener.tap_io(|tcp| {
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::warn!(%error, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(listener, api::router(state))
                    .with_graceful_shutdown(shutdown)
                    .await?;
            } else {
                shutdown.await;
            }
            for worker in workers {
                let _ = worker.await;
            }
        }
    }
    Ok(())
}
