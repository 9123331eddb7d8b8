//! The PostgreSQL backend: SPIRE's connection strings (see [`super::dsn`]) and the
//! `migrations/postgres` schema. Writers that read first take `LOCK TABLE ... IN SHARE ROW
//! EXCLUSIVE MODE` ([`Dialect::POSTGRES`]), so servers sharing the database serialise there.

use super::{Backend, Dialect};
use crate::datastore::DatastoreError;
use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions, PgQueryResult};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/datastore/migrations/postgres");

impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::POSTGRES;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATIONS
    }

    async fn connect(connection_string: &str, pool: &super::ConnectSettings) -> Result<PgPool, DatastoreError> {
        let opts = super::dsn::postgres(connection_string)?;
        pool.apply(PgPoolOptions::new())
            .connect_with(opts)
            .await
            .map_err(|e| DatastoreError::Database(format!("connecting to PostgreSQL: {e}")))
    }

    async fn after_migrate(_pool: &PgPool) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn log_position(primary: &PgPool) -> Result<Option<String>, DatastoreError> {
        // The WAL write position: every transaction committed before this call has its commit
        // record below it.
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(primary)
            .await
            .map_err(|e| DatastoreError::Database(e.to_string()))?;
        Ok(Some(lsn))
    }

    async fn has_applied(replica: &PgPool, position: &str) -> Result<bool, DatastoreError> {
        // A standby has applied the primary's WAL up to its replay position. A server that is not
        // in recovery is a primary (the operator pointed ro_connection_string at the primary
        // itself, as SPIRE's own tests do): it is current by definition.
        sqlx::query_scalar(
            "SELECT CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_replay_lsn() >= CAST($1 AS pg_lsn), false) ELSE true END",
        )
        .bind(position)
        .fetch_one(replica)
        .await
        .map_err(|e| DatastoreError::Database(e.to_string()))
    }
}
