//! SPIRE's connection strings, read as SPIRE's drivers read them, so a SPIRE `server.conf`
//! works unchanged: PostgreSQL's keyword/value form (`dbname=spire user=spire host=db
//! sslmode=disable`, libpq's) besides its URL, and the Go MySQL driver's DSN
//! (`user:pass@tcp(host:3306)/spire?parseTime=true`) besides a `mysql://` URL.
//!
//! Errors name the offending part but never echo a password.

use super::MysqlTls;
use crate::datastore::DatastoreError;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::str::FromStr;

fn cfg(msg: impl Into<String>) -> DatastoreError {
    DatastoreError::Config(format!("connection_string: {}", msg.into()))
}

/// libpq's keyword/value pairs: whitespace-separated `key=value`, a value optionally in single
/// quotes with `\'` and `\\` escapes.
fn keyword_pairs(s: &str) -> Result<Vec<(String, String)>, DatastoreError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(cfg(format!("expected key=value, found {key:?} without a value")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(cfg(format!("unterminated quoted value for {key:?}"))),
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

/// PostgreSQL options from a URL (`postgres://...`) or libpq keyword/value pairs.
///
/// # Errors
/// Malformed text, an unknown keyword, a bad port or sslmode.
pub fn postgres(s: &str) -> Result<PgConnectOptions, DatastoreError> {
    let t = s.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return PgConnectOptions::from_str(t).map_err(|e| cfg(format!("not a usable PostgreSQL URL: {}", redact(&e.to_string()))));
    }
    let mut o = PgConnectOptions::new();
    for (k, v) in keyword_pairs(t)? {
        o = match k.as_str() {
            "host" | "hostaddr" if v.starts_with('/') => o.socket(v),
            "host" | "hostaddr" => o.host(&v),
            "port" => o.port(v.parse().map_err(|_| cfg(format!("port {v:?} is not a number")))?),
            "dbname" => o.database(&v),
            "user" => o.username(&v),
            "password" => o.password(&v),
            "sslmode" => o.ssl_mode(PgSslMode::from_str(&v).map_err(|_| cfg(format!("unknown sslmode {v:?}")))?),
            "sslrootcert" => o.ssl_root_cert(v),
            "sslcert" => o.ssl_client_cert(v),
            "sslkey" => o.ssl_client_key(v),
            "application_name" => o.application_name(&v),
            // Pool timeouts bound connecting; libpq's own knob is accepted for compatibility.
            "connect_timeout" => o,
            other => return Err(cfg(format!("unsupported keyword {other:?}"))),
        };
    }
    Ok(o)
}

/// MySQL options from a URL (`mysql://...`) or a Go MySQL driver DSN
/// (`[user[:password]@][tcp[(host[:port])]|unix(path)]/dbname[?params]`), with SPIRE's TLS
/// files. The Go driver's `tls` parameter is honoured: `true` verifies the server's certificate
/// and name, `skip-verify` encrypts without verifying, `preferred` tries TLS, `false` turns it
/// off, and any other value names SPIRE's custom TLS configuration (the files), which verifies.
/// The TLS files alone also mean "verify".
///
/// # Errors
/// Malformed text, an unknown protocol or parameter, a bad port, a custom `tls` name without
/// TLS files.
pub fn mysql(s: &str, tls: &MysqlTls) -> Result<MySqlConnectOptions, DatastoreError> {
    let t = s.trim();
    let with_files = |mut o: MySqlConnectOptions| {
        if let Some(ca) = &tls.root_ca {
            o = o.ssl_ca(ca);
        }
        if let (Some(c), Some(k)) = (&tls.client_cert, &tls.client_key) {
            o = o.ssl_client_cert(c).ssl_client_key(k);
        }
        o
    };
    let files = tls.root_ca.is_some() || tls.client_cert.is_some();
    if t.starts_with("mysql://") || t.starts_with("mariadb://") {
        let url = t.replacen("mariadb://", "mysql://", 1);
        let o = MySqlConnectOptions::from_str(&url).map_err(|e| cfg(format!("not a usable MySQL URL: {}", redact(&e.to_string()))))?;
        return Ok(if files { with_files(o).ssl_mode(MySqlSslMode::VerifyIdentity) } else { o });
    }
    // The database name starts after the last '/' that precedes any '?'.
    let (main, params) = t.split_once('?').unwrap_or((t, ""));
    let slash = main.rfind('/').ok_or_else(|| cfg("expected user:password@tcp(host:port)/dbname"))?;
    let (before, dbname) = (&main[..slash], &main[slash + 1..]);
    // Credentials end at the last '@' (a password may contain '@').
    let (creds, address) = match before.rfind('@') {
        Some(at) => (Some(&before[..at]), &before[at + 1..]),
        None => (None, before),
    };
    let mut o = MySqlConnectOptions::new();
    if let Some(creds) = creds {
        let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
        o = o.username(user);
        if !password.is_empty() {
            o = o.password(password);
        }
    }
    if !address.is_empty() {
        let (proto, addr) = match address.split_once('(') {
            Some((p, rest)) => (p, rest.strip_suffix(')').ok_or_else(|| cfg(format!("unbalanced parentheses in {address:?}")))?),
            None => (address, ""),
        };
        o = match proto {
            "tcp" if addr.is_empty() => o,
            "tcp" => match addr.rsplit_once(':') {
                Some((host, port)) => o.host(host).port(port.parse().map_err(|_| cfg(format!("port {port:?} is not a number")))?),
                None => o.host(addr),
            },
            "unix" => o.socket(addr),
            other => return Err(cfg(format!("unsupported protocol {other:?} (tcp or unix)"))),
        };
    }
    if !dbname.is_empty() {
        o = o.database(dbname);
    }
    // Without a `tls` parameter: verified TLS when SPIRE's files are given, otherwise sqlx's
    // default (TLS when the server offers it, unverified).
    if files {
        o = o.ssl_mode(MySqlSslMode::VerifyIdentity);
    }
    o = with_files(o);
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        o = match k {
            "charset" => o.charset(v.split(',').next().unwrap_or(v)),
            "collation" => o.collation(v),
            // Go-driver settings with no meaning here (cairn reads times as integers, and the
            // pool bounds connecting).
            "parseTime" | "loc" | "timeout" | "readTimeout" | "writeTimeout" | "autocommit" | "maxAllowedPacket" => o,
            "tls" => match v {
                "true" => o.ssl_mode(MySqlSslMode::VerifyIdentity),
                "skip-verify" => o.ssl_mode(MySqlSslMode::Required),
                "preferred" => o.ssl_mode(MySqlSslMode::Preferred),
                "false" => o.ssl_mode(MySqlSslMode::Disabled),
                _ if files => o.ssl_mode(MySqlSslMode::VerifyIdentity),
                other => {
                    return Err(cfg(format!(
                        "tls={other:?} names a TLS configuration: set root_ca_path (and client_cert_path, client_key_path) in plugin_data"
                    )));
                }
            },
            other => return Err(cfg(format!("unsupported parameter {other:?}"))),
        };
    }
    Ok(o)
}

/// An error text with anything after `:` up to `@` in a URL removed (sqlx errors may quote it).
fn redact(s: &str) -> String {
    match (s.find("://"), s.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://<redacted>{}", &s[..a], &s[b..]),
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_postgres_strings() {
        let o = postgres("dbname=spire user=spire password='p w\\'d' host=db.example port=6543 sslmode=disable").unwrap();
        assert_eq!((o.get_host(), o.get_port(), o.get_username(), o.get_database()), ("db.example", 6543, "spire", Some("spire")));
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable));
        let o = postgres("postgres://u:p@127.0.0.1:15432/spire?sslmode=disable").unwrap();
        assert_eq!((o.get_host(), o.get_port()), ("127.0.0.1", 15432));
        for (bad, says) in [
            ("dbname", "without a value"),
            ("port=x", "not a number"),
            ("sslmode=maybe", "sslmode"),
            ("frob=1", "frob"),
            ("password='x", "unterminated"),
        ] {
            let e = postgres(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn spire_mysql_strings() {
        let none = MysqlTls::default();
        let o = mysql("spire:p@ss@tcp(db.example:3307)/spire?parseTime=true&charset=utf8mb4", &none).unwrap();
        assert_eq!((o.get_host(), o.get_port(), o.get_username(), o.get_database()), ("db.example", 3307, "spire", Some("spire")));
        let o = mysql("root@unix(/run/mysqld.sock)/cairn", &none).unwrap();
        assert_eq!(o.get_socket().map(|p| p.display().to_string()), Some("/run/mysqld.sock".into()));
        let o = mysql("mysql://u:p@127.0.0.1:13306/spire", &none).unwrap();
        assert_eq!(o.get_port(), 13306);
        for (bad, says) in [
            ("u:p@tcp(h:x)/d", "not a number"),
            ("u@udp(h)/d", "protocol"),
            ("u@tcp(h)/d?frob=1", "frob"),
            ("u@tcp(h)/d?tls=custom", "root_ca_path"),
            ("nodb", "dbname"),
        ] {
            let e = mysql(bad, &none).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(!mysql("u:secret@tcp(h:x)/d", &none).unwrap_err().to_string().contains("secret"));
        // The Go driver's tls values, and SPIRE's files meaning "verify".
        for (v, mode) in [
            ("true", MySqlSslMode::VerifyIdentity),
            ("skip-verify", MySqlSslMode::Required),
            ("preferred", MySqlSslMode::Preferred),
            ("false", MySqlSslMode::Disabled),
        ] {
            let got = mysql(&format!("u@tcp(h)/d?tls={v}"), &none).unwrap().get_ssl_mode();
            assert_eq!(format!("{got:?}"), format!("{mode:?}"), "tls={v}");
        }
        let files = MysqlTls { root_ca: Some("/ca.pem".into()), ..MysqlTls::default() };
        for dsn in ["u@tcp(h)/d", "u@tcp(h)/d?tls=custom"] {
            assert!(matches!(mysql(dsn, &files).unwrap().get_ssl_mode(), MySqlSslMode::VerifyIdentity), "{dsn}");
        }
    }
}
