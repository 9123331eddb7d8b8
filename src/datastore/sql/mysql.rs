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

    async fn log_position(primary: &MySqlPool) -> Result<Option<String>, DatastoreError> {
        let version: String = scalar(primary, "SELECT CAST(VERSION() AS CHAR)").await?;
        if version.contains("MariaDB") {
            // Empty when the binary log is off: such a server has no replicas to be behind.
            let pos: String = scalar(primary, "SELECT CAST(@@gtid_binlog_pos AS CHAR)").await?;
            Ok((!pos.is_empty()).then(|| format!("{MARIADB}{pos}")))
        } else {
            // MySQL: empty unless gtid_mode is on.
            let set: String = scalar(primary, "SELECT CAST(@@global.gtid_executed AS CHAR)").await?;
            Ok((!set.trim().is_empty()).then(|| format!("{MYSQL}{set}")))
        }
    }

    async fn has_applied(replica: &MySqlPool, position: &str) -> Result<bool, DatastoreError> {
        if let Some(pos) = position.strip_prefix(MARIADB) {
            // gtid_current_pos is what the server applied, as a replica or as the primary.
            let current: String = scalar(replica, "SELECT CAST(@@gtid_current_pos AS CHAR)").await?;
            Ok(mariadb_gtid_covers(&current, pos))
        } else if let Some(set) = position.strip_prefix(MYSQL) {
            let ok: i64 = sqlx::query_scalar("SELECT GTID_SUBSET(?, @@global.gtid_executed) + 0")
                .bind(set)
                .fetch_one(replica)
                .await
                .map_err(|e| DatastoreError::Database(e.to_string()))?;
            Ok(ok == 1)
        } else {
            Ok(false)
        }
    }
}

/// Tags on [`Backend::log_position`]'s answer: the two servers spell positions differently.
const MARIADB: &str = "mariadb:";
const MYSQL: &str = "mysql:";

async fn scalar(pool: &MySqlPool, sql: &str) -> Result<String, DatastoreError> {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .fetch_one(pool)
        .await
        .map(Option::unwrap_or_default)
        .map_err(|e| DatastoreError::Database(e.to_string()))
}

/// Whether MariaDB GTID position `have` (`domain-server-seq`, comma separated) reaches `want`
/// in every replication domain `want` names. Sequence numbers grow within a domain whichever
/// server wrote them, so the server part is not compared.
fn mariadb_gtid_covers(have: &str, want: &str) -> bool {
    let parse = |s: &str| -> Option<Vec<(u32, u64)>> {
        s.split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| {
                let mut it = g.split('-');
                let domain = it.next()?.parse().ok()?;
                let _server: u32 = it.next()?.parse().ok()?;
                let seq = it.next()?.parse().ok()?;
                it.next().is_none().then_some((domain, seq))
            })
            .collect()
    };
    let (Some(have), Some(want)) = (parse(have), parse(want)) else { return false };
    want.iter().all(|(d, n)| have.iter().any(|(hd, hn)| hd == d && hn >= n))
}

#[cfg(test)]
mod tests {
    use super::mariadb_gtid_covers;

    #[test]
    fn gtid_positions_compare_per_domain() {
        assert!(mariadb_gtid_covers("0-1-42", "0-1-42"));
        assert!(mariadb_gtid_covers("0-1-43", "0-1-42"));
        assert!(!mariadb_gtid_covers("0-1-41", "0-1-42"));
        assert!(mariadb_gtid_covers("0-2-50,1-1-7", "1-1-7,0-1-42"));
        assert!(!mariadb_gtid_covers("0-2-50", "1-1-7,0-1-42"), "a domain the replica never saw");
        assert!(!mariadb_gtid_covers("", "0-1-1"));
        assert!(!mariadb_gtid_covers("0-1-x", "0-1-1"), "unreadable positions prove nothing");
        assert!(!mariadb_gtid_covers("0-1-5", "0-1"));
    }
}
