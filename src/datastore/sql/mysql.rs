//! The MySQL / MariaDB backend: SPIRE's Go-driver DSNs (see [`super::dsn`]) and the
//! `migrations/mysql` schema. Writers that read first lock a row of `cairn_locks`
//! ([`Dialect::MYSQL`]), since `LOCK TABLES` would end their transaction.

use super::{Backend, Dialect};
use crate::datastore::DatastoreError;
use sqlx::MySql;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlQueryResult};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/datastore/migrations/mysql");

impl Backend for MySql {
    const DIALECT: Dialect = Dialect::MYSQL;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATIONS
    }

    async fn connect(connection_string: &str, pool: &super::ConnectSettings) -> Result<MySqlPool, DatastoreError> {
        let opts = super::dsn::mysql(connection_string, &pool.mysql_tls)?;
        pool.apply(MySqlPoolOptions::new())
            .connect_with(opts)
            .await
            .map_err(|e| DatastoreError::Database(format!("connecting to MySQL: {e}")))
    }

    async fn after_migrate(_pool: &MySqlPool) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}
