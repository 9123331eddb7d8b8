//! What differs in SQL text between the databases cairn targets.
//!
//! The store writes each statement once, with `?` placeholders and without the few constructs
//! that differ; a [`Dialect`] renders them. A dialect is plain data (one choice per difference)
//! rather than a trait, so a test can take SQLite's and flip one choice (numbered placeholders,
//! no `RETURNING`) to run the whole contract suite through the other code path on SQLite.
//!
//! [`Dialect::POSTGRES`] and [`Dialect::MYSQL`] record the choices those databases need. No
//! driver for them is built in yet, so they are checked here only as text; the contract suite
//! checks them for real once their backend lands.

use std::borrow::Cow;

/// How bind parameters are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placeholders {
    /// `?` (SQLite, MySQL).
    Question,
    /// `$1`, `$2`, ... (PostgreSQL; SQLite accepts it too).
    Numbered,
}

/// How an insert that replaces an existing row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upsert {
    /// `ON CONFLICT (key) DO UPDATE SET c = excluded.c` (SQLite, PostgreSQL).
    OnConflict,
    /// `ON DUPLICATE KEY UPDATE c = VALUES(c)` (MySQL, MariaDB).
    OnDuplicateKey,
}

/// How a read-then-write transaction keeps concurrent writers of the same table out until it
/// commits (the "similar entry" check and its insert, a bundle's read-modify-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteLock {
    /// The transaction's `BEGIN` already takes the database's write lock (SQLite's
    /// `BEGIN IMMEDIATE`): writers queue behind it (for up to the busy timeout), readers do not.
    Begin,
    /// `LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE` (PostgreSQL): the mode conflicts with itself
    /// and with every write, not with plain reads.
    LockTable,
    /// `SELECT name FROM cairn_locks WHERE name = 't' FOR UPDATE` (MySQL, whose `LOCK TABLES`
    /// would end the transaction): the dialect's migrations create `cairn_locks` with a row for
    /// each table that write transactions lock (`bundles`, `registered_entries`, and, for
    /// deletes without `RETURNING`, `attested_nodes` and `join_tokens`).
    LockRow,
}

/// The SQL text choices of one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dialect {
    /// Bind parameter style.
    pub placeholders: Placeholders,
    /// Insert-or-replace syntax.
    pub upsert: Upsert,
    /// Whether `DELETE ... RETURNING` exists; without it, deletes that report what they removed
    /// select the rows and delete them in one locked transaction.
    pub delete_returning: bool,
    /// The statement that starts a read-then-write transaction.
    pub begin_write: &'static str,
    /// What else such a transaction runs first, so that concurrent writers serialise.
    pub write_lock: WriteLock,
}

// === impl Dialect ===

impl Dialect {
    /// SQLite 3.35 or later (for `RETURNING`); the bundled library is newer.
    pub const SQLITE: Self = Self {
        placeholders: Placeholders::Question,
        upsert: Upsert::OnConflict,
        delete_returning: true,
        // A plain (deferred) BEGIN reads first and only then asks for the write lock; in WAL
        // mode a second writer that read before the first committed then fails with
        // SQLITE_BUSY at once instead of waiting, so writers take the lock up front.
        begin_write: "BEGIN IMMEDIATE",
        write_lock: WriteLock::Begin,
    };

    /// PostgreSQL (no driver built in yet).
    pub const POSTGRES: Self = Self {
        placeholders: Placeholders::Numbered,
        upsert: Upsert::OnConflict,
        delete_returning: true,
        begin_write: "BEGIN",
        write_lock: WriteLock::LockTable,
    };

    /// MySQL 5.7 or later (no driver built in yet).
    pub const MYSQL: Self = Self {
        placeholders: Placeholders::Question,
        upsert: Upsert::OnDuplicateKey,
        delete_returning: false,
        begin_write: "BEGIN",
        write_lock: WriteLock::LockRow,
    };

    /// `text` with its `?` placeholders in this dialect's style. Question marks inside quoted
    /// literals or identifiers are left alone.
    #[must_use]
    pub fn sql<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.placeholders {
            Placeholders::Question => Cow::Borrowed(text),
            Placeholders::Numbered => {
                let mut out = String::with_capacity(text.len() + 16);
                let mut n = 0;
                let mut quote: Option<char> = None;
                for c in text.chars() {
                    match (quote, c) {
                        (None, '?') => {
                            n += 1;
                            out.push('$');
                            out.push_str(&n.to_string());
                            continue;
                        }
                        (None, '\'' | '"' | '`') => quote = Some(c),
                        (Some(q), c) if c == q => quote = None,
                        _ => {}
                    }
                    out.push(c);
                }
                Cow::Owned(out)
            }
        }
    }

    /// `INSERT INTO table (columns) VALUES (?, ...)` that, when a row with the same `key`
    /// exists, replaces its other columns instead. `key` must be a primary key or unique index
    /// (MySQL's form applies to any unique key of the table, so the tables upserted here have one).
    /// The text still has `?` placeholders: pass it through [`Dialect::sql`].
    #[must_use]
    pub fn upsert(&self, table: &str, key: &str, columns: &[&str]) -> String {
        let marks = vec!["?"; columns.len()].join(", ");
        let updated = columns.iter().filter(|c| **c != key);
        let set: Vec<String> = match self.upsert {
            Upsert::OnConflict => updated.map(|c| format!("{c} = excluded.{c}")).collect(),
            Upsert::OnDuplicateKey => updated.map(|c| format!("{c} = VALUES({c})")).collect(),
        };
        let columns = columns.join(", ");
        let set = set.join(", ");
        match self.upsert {
            Upsert::OnConflict => format!("INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {set}"),
            Upsert::OnDuplicateKey => format!("INSERT INTO {table} ({columns}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {set}"),
        }
    }

    /// The statement a read-then-write transaction on `table` runs right after
    /// [`Dialect::begin_write`], if any.
    #[must_use]
    pub fn lock_statement(&self, table: &str) -> Option<String> {
        match self.write_lock {
            WriteLock::Begin => None,
            WriteLock::LockTable => Some(format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")),
            WriteLock::LockRow => Some(format!("SELECT name FROM cairn_locks WHERE name = '{table}' FOR UPDATE")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_only_where_the_dialect_wants_them() {
        let text = "UPDATE t SET a = ?, b = '?' WHERE c = ? AND \"d?\" = ?";
        assert!(matches!(Dialect::SQLITE.sql(text), Cow::Borrowed(t) if t == text));
        assert!(matches!(Dialect::MYSQL.sql(text), Cow::Borrowed(_)));
        assert_eq!(Dialect::POSTGRES.sql(text), "UPDATE t SET a = $1, b = '?' WHERE c = $2 AND \"d?\" = $3");
        assert_eq!(Dialect::POSTGRES.sql("SELECT 1"), "SELECT 1");
        let many = ["?"; 12].join(",");
        assert!(Dialect::POSTGRES.sql(&many).ends_with("$11,$12"));
    }

    #[test]
    fn upsert_text_per_dialect() {
        let cols = ["server_key", "data", "updated_at"];
        assert_eq!(
            Dialect::SQLITE.upsert("ca_journals", "server_key", &cols),
            "INSERT INTO ca_journals (server_key, data, updated_at) VALUES (?, ?, ?) ON CONFLICT (server_key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
        );
        assert_eq!(
            Dialect::POSTGRES.sql(&Dialect::POSTGRES.upsert("ca_journals", "server_key", &cols)),
            "INSERT INTO ca_journals (server_key, data, updated_at) VALUES ($1, $2, $3) ON CONFLICT (server_key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
        );
        assert_eq!(
            Dialect::MYSQL.upsert("ca_journals", "server_key", &cols),
            "INSERT INTO ca_journals (server_key, data, updated_at) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE data = VALUES(data), updated_at = VALUES(updated_at)"
        );
    }

    #[test]
    fn write_locks_per_dialect() {
        assert_eq!(Dialect::SQLITE.lock_statement("bundles"), None, "BEGIN IMMEDIATE is the lock");
        assert_eq!(Dialect::SQLITE.begin_write, "BEGIN IMMEDIATE");
        assert_eq!(Dialect::POSTGRES.lock_statement("bundles").as_deref(), Some("LOCK TABLE bundles IN SHARE ROW EXCLUSIVE MODE"));
        assert_eq!(
            Dialect::MYSQL.lock_statement("registered_entries").as_deref(),
            Some("SELECT name FROM cairn_locks WHERE name = 'registered_entries' FOR UPDATE")
        );
    }
}
