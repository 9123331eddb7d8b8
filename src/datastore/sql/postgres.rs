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
}
