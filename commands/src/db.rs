//! Connecting to PostgreSQL: create the database when it is missing, migrate it.

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating the database");
        if let Err(e) = Postgres::create_database(url).await {
            // Another process may have created it in the meantime.
            if !Postgres::database_exists(url).await? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A pool of at most `max_connections` to `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("chronicle");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Applies the migrations, and bounds how long a session may sit idle inside a transaction
/// in this database (an idle transaction would hold back the log's read horizon).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    schemas::MIGRATOR.run(pool).await?;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let sql = format!(
        "ALTER DATABASE \"{}\" SET idle_in_transaction_session_timeout = '60s'",
        db.replace('"', "\"\"")
    );
    sqlx::query(&sql).execute(pool).await?;
    Ok(())
}
