//! Configuration: SPIRE-style HCL (version 1) or JSON into validated config.
//!
//! Two stages, as the style guide asks: [`hcl`] parses text into a generic tree, then
//! [`server::ServerConfig::from_tree`] walks it, collecting *every* problem with the dotted path
//! of its key (`server.ca_ttl`, `plugins.KeyManager.disk.plugin_data.keys_path`) before failing.

pub mod agent;
pub mod federation;
pub mod hcl;
pub mod server;

use hcl::{Item, Object, Value};
use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key (empty for file-level problems).
    pub path: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Parses config text: JSON when it starts with `{`, HCL otherwise. With `expand_env`, `$VAR`
/// and `${VAR}` are replaced from the environment first (SPIRE's `-expandEnv`).
///
/// # Errors
/// A syntax error, reported with its line and column.
pub fn parse_text(text: &str, expand_env: bool) -> Result<Object, ConfigErrors> {
    let text = if expand_env { hcl::expand_env(text, |k| std::env::var(k).ok()) } else { text.to_owned() };
    let parsed = if text.trim_start().starts_with('{') { hcl::parse_json(&text) } else { hcl::parse(&text) };
    parsed.map_err(|e| ConfigErrors(vec![ConfigError { path: String::new(), message: format!("syntax error: {e}") }]))
}

/// Longest part of a config value (or key) quoted in an error message.
const QUOTE_LIMIT: usize = 64;

/// Longest key path kept in an error (real paths are under 60 bytes; a key can be any size).
const PATH_LIMIT: usize = 200;

/// Longest error message kept, whatever it quotes (a backstop for messages that embed a value
/// without [`quote`], e.g. through an inner error).
const MESSAGE_LIMIT: usize = 1024;

/// Quotes a config value for an error message, cut to its first 64 characters plus its size:
/// a 5 MB value would otherwise be echoed whole into the error, the terminal and the logs.
pub(crate) fn quote(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    match s.char_indices().nth(QUOTE_LIMIT) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", s.get(..cut).unwrap_or_default(), s.len()),
    }
}

/// Cuts `text` to `limit` bytes (on a character boundary), saying how long it was.
fn bounded(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let cut = (0..=limit).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    format!("{}... ({} bytes)", text.get(..cut).unwrap_or_default(), text.len())
}

/// Walks a parsed tree, recording errors against key paths.
pub(crate) struct Walker {
    pub(crate) errors: Vec<ConfigError>,
    /// Keys accepted without changing anything, each with the reason: logged at start, so no
    /// key is taken in silence.
    pub(crate) notices: Vec<String>,
}

impl Walker {
    pub(crate) fn new() -> Self {
        Self { errors: Vec::new(), notices: Vec::new() }
    }

    /// Records that `path` was accepted and why it changes nothing in cairn.
    pub(crate) fn notice(&mut self, path: &str, why: &str) {
        self.notices.push(format!("{path}: accepted; {why}"));
    }

    /// Refuses `path` as a SPIRE key cairn does not implement.
    pub(crate) fn unsupported(&mut self, path: &str, why: &str) {
        self.err(path, format!("not supported by cairn ({why})"));
    }

    /// Reports SPIRE keys cairn lacks (refused with `unsupported`'s reason), then keys neither
    /// knows ("unknown key").
    pub(crate) fn unsupported_and_unknown_keys(
        &mut self,
        obj: &Object,
        known: &[&str],
        path: &str,
        unsupported: fn(&str) -> Option<&'static str>,
        hint: fn(&str) -> Option<&'static str>,
    ) {
        let mut accepted: Vec<&str> = known.to_vec();
        for item in &obj.items {
            if let Some(why) = unsupported(&item.key) {
                self.unsupported(&join(path, &item.key), why);
                accepted.push(item.key.as_str());
            }
        }
        self.unknown_keys(obj, &accepted, path, hint);
    }

    /// The top-level `telemetry` block: cairn has no metrics exporters yet, so each sink or
    /// setting in it is refused by name. An empty block asks for nothing and is accepted.
    pub(crate) fn telemetry(&mut self, tree: &Object) {
        if let Some(t) = self.block(tree, "telemetry", "") {
            for item in &t.items {
                self.unsupported(
                    &join("telemetry", &item.key),
                    "no metrics exporters yet (Prometheus, DogStatsd, Statsd, M3, InMem); remove the telemetry block",
                );
            }
        }
    }

    pub(crate) fn err(&mut self, path: &str, message: impl Into<String>) {
        // A key can be as long as a value (an unknown key of 5 MB): both are bounded.
        self.errors.push(ConfigError { path: bounded(path.to_owned(), PATH_LIMIT), message: bounded(message.into(), MESSAGE_LIMIT) });
    }

    /// The object under `key`, accepting HCL1's habit of wrapping blocks in a list.
    pub(crate) fn block<'a>(&mut self, obj: &'a Object, key: &str, path: &str) -> Option<&'a Object> {
        let mut found: Option<&'a Object> = None;
        for item in obj.get_all(key) {
            let p = join(path, key);
            match as_object(&item.value) {
                Some(o) if found.is_none() => found = Some(o),
                Some(_) => self.err(&p, format!("block given more than once (line {})", item.line)),
                None => self.err(&p, "expected a block { ... }"),
            }
        }
        found
    }

    /// Reports every key of `obj` not in `known`.
    pub(crate) fn unknown_keys(&mut self, obj: &Object, known: &[&str], path: &str, hint: impl Fn(&str) -> Option<&'static str>) {
        for item in &obj.items {
            if !known.contains(&item.key.as_str()) {
                let msg = match hint(&item.key) {
                    Some(h) => format!("unknown key (line {}): {h}", item.line),
                    None => format!("unknown key (line {})", item.line),
                };
                self.err(&join(path, &item.key), msg);
            }
        }
    }

    fn single<'a>(&mut self, obj: &'a Object, key: &str, path: &str) -> Option<&'a Item> {
        let mut it = obj.get_all(key);
        let first = it.next()?;
        if let Some(dup) = it.next() {
            self.err(&join(path, key), format!("given more than once (lines {} and {})", first.line, dup.line));
        }
        Some(first)
    }

    pub(crate) fn string(&mut self, obj: &Object, key: &str, path: &str) -> Option<String> {
        let item = self.single(obj, key, path)?;
        match &item.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.err(&join(path, key), "expected a string");
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, obj: &Object, key: &str, path: &str) -> Option<bool> {
        let item = self.single(obj, key, path)?;
        match &item.value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                self.err(&join(path, key), "expected true or false");
                None
            }
        }
    }

    /// A port: SPIRE configs write them both as numbers and as strings.
    pub(crate) fn port(&mut self, obj: &Object, key: &str, path: &str) -> Option<u16> {
        let item = self.single(obj, key, path)?;
        let n = match &item.value {
            Value::Int(n) => Some(*n),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n.and_then(|n| u16::try_from(n).ok()) {
            Some(p) => Some(p),
            None => {
                self.err(&join(path, key), "expected a port number 0-65535");
                None
            }
        }
    }

    /// A non-negative count (a number, or a string of digits as SPIRE configs sometimes write).
    pub(crate) fn count(&mut self, obj: &Object, key: &str, path: &str) -> Option<u32> {
        let item = self.single(obj, key, path)?;
        let n = match &item.value {
            Value::Int(n) => Some(*n),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n.and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.err(&join(path, key), "expected a whole number of 0 or more");
                None
            }
        }
    }

    /// A Go-style duration (`"1h30m"`, `"90s"`) or a number of seconds; returns seconds.
    pub(crate) fn duration(&mut self, obj: &Object, key: &str, path: &str) -> Option<i64> {
        let item = self.single(obj, key, path)?;
        let parsed = match &item.value {
            Value::Int(n) if *n >= 0 => Ok(*n),
            Value::String(s) => parse_duration(s).map_err(|e| e.to_string()),
            _ => Err("expected a duration such as \"1h\", \"30m\" or \"90s\"".to_owned()),
        };
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&join(path, key), e);
                None
            }
        }
    }

    pub(crate) fn strings(&mut self, obj: &Object, key: &str, path: &str) -> Option<Vec<String>> {
        let item = self.single(obj, key, path)?;
        match &item.value {
            Value::String(s) => Some(vec![s.clone()]),
            Value::List(l) => {
                let out: Option<Vec<String>> = l.iter().map(|v| if let Value::String(s) = v { Some(s.clone()) } else { None }).collect();
                if out.is_none() {
                    self.err(&join(path, key), "expected a list of strings");
                }
                out
            }
            _ => {
                self.err(&join(path, key), "expected a list of strings");
                None
            }
        }
    }
}

/// HCL1 may deliver a block as an object or as a one-element list of objects.
pub(crate) fn as_object(v: &Value) -> Option<&Object> {
    match v {
        Value::Object(o) => Some(o),
        Value::List(l) if l.len() == 1 => l.first().and_then(as_object),
        _ => None,
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// A duration that does not parse; the text names the input as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a Go duration.
    #[error("invalid duration {0}: expected e.g. \"24h\", \"1h30m\", \"90s\"")]
    Invalid(String),
    /// `d` used as a unit, which Go's durations do not have.
    #[error("invalid duration {0}: Go durations have no \"d\" unit; use hours (1d = 24h)")]
    Days(String),
}

/// Parses a Go duration string into whole seconds (sub-second parts round up).
///
/// # Errors
/// [`DurationError`] naming the input.
pub fn parse_duration(s: &str) -> Result<i64, DurationError> {
    let bad = || DurationError::Invalid(quote(s));
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t == "0" {
        return Ok(0);
    }
    let mut total_ms: i128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let ms_per: f64 = match unit {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => return Err(DurationError::Days(quote(s))),
            _ => return Err(bad()),
        };
        #[expect(clippy::cast_possible_truncation, reason = "bounded just below")]
        let part = (value * ms_per).round() as i128;
        total_ms = total_ms.checked_add(part).filter(|v| *v < i128::from(i64::MAX)).ok_or_else(bad)?;
        rest = tail;
    }
    i64::try_from((total_ms + 999) / 1000).map_err(|_| bad())
}

/// How logs are written (from the config file and the `-log*` flags).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// DEBUG, INFO, WARN, ERROR or TRACE.
    pub level: String,
    /// Text or JSON lines.
    pub format: server::LogFormat,
    /// `log_file`: write here instead of stderr.
    pub file: Option<std::path::PathBuf>,
    /// `log_source_location`: add the source file and line to each event.
    pub source_location: bool,
}

pub use crate::text::format_duration;

/// One `Type "name" { ... }` plugin block: its name, its path and its `plugin_data`.
pub(crate) struct PluginDecl<'a> {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) data: Option<std::borrow::Cow<'a, Object>>,
}

impl PluginDecl<'_> {
    /// `plugins.Type.name`, for errors about the plugin as a whole.
    pub(crate) fn block_path(&self) -> &str {
        self.path.strip_suffix(".plugin_data").unwrap_or(&self.path)
    }
}

/// Every `kind` plugin block under `plugins`, with SPIRE's per-plugin keys checked.
pub(crate) fn plugin_decls<'a>(w: &mut Walker, plugins: &'a Object, kind: &str) -> Vec<PluginDecl<'a>> {
    let mut out = Vec::new();
    // HCL gives one item per block; JSON may give a list of `{"name": {...}}` objects.
    let mut named_blocks: Vec<&'a Object> = Vec::new();
    for item in plugins.get_all(kind) {
        match &item.value {
            Value::List(l) if l.len() > 1 => named_blocks.extend(l.iter().filter_map(as_object)),
            v => match as_object(v) {
                Some(o) => named_blocks.push(o),
                None => w.err(&join("plugins", kind), "expected Type \"name\" { ... }"),
            },
        }
    }
    for named in named_blocks {
        for inner in &named.items {
            let path = format!("plugins.{kind}.{}", inner.key);
            let Some(body) = as_object(&inner.value) else {
                w.err(&path, "expected a block { ... }");
                continue;
            };
            w.unknown_keys(body, &["plugin_data", "plugin_cmd", "plugin_checksum", "enabled", "plugin_data_file"], &path, |_| None);
            if body.get_all("plugin_cmd").next().is_some() {
                w.err(
                    &join(&path, "plugin_cmd"),
                    "external plugin binaries are not supported by cairn; remove plugin_cmd to use the built-in plugin",
                );
            }
            if w.boolean(body, "enabled", &path) == Some(false) {
                continue;
            }
            let inline = body.get_all("plugin_data").next().map(|i| &i.value);
            let data = match (inline, body.get_all("plugin_data_file").next().map(|i| &i.value)) {
                (Some(_), Some(_)) => {
                    w.err(&path, "only one of plugin_data and plugin_data_file may be set");
                    continue;
                }
                (None, Some(file)) => {
                    let Value::String(file) = file else {
                        w.err(&join(&path, "plugin_data_file"), "expected a file path string");
                        continue;
                    };
                    match plugin_data_file(file) {
                        Ok(o) => Some(std::borrow::Cow::Owned(o)),
                        Err(e) => {
                            // The plugin's own checks would only repeat that its settings are missing.
                            w.err(&join(&path, "plugin_data_file"), e);
                            continue;
                        }
                    }
                }
                (None, None) => None,
                (Some(v), None) => {
                    let o = as_object(v);
                    if o.is_none() {
                        w.err(&join(&path, "plugin_data"), "expected a block { ... }");
                    }
                    o.map(std::borrow::Cow::Borrowed)
                }
            };
            if out.iter().any(|d: &PluginDecl<'_>| d.name == inner.key) {
                w.err(&path, format!("{kind} {} configured more than once", quote(&inner.key)));
                continue;
            }
            out.push(PluginDecl { name: inner.key.clone(), path: join(&path, "plugin_data"), data });
        }
    }
    out
}

/// A plugin's settings from `plugin_data_file`: HCL (or JSON) in a file of its own, read as
/// SPIRE reads it, relative to the working directory. Errors are worded as SPIRE's, with Go's
/// text for the system error, since operators' checks grep for them.
fn plugin_data_file(file: &str) -> Result<Object, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("failed to read plugin configuration: open {file}: {}", go_errno_text(&e)))?;
    let tree = parse_text(&text, false).map_err(|e| format!("failed to parse plugin configuration {file}: {e}"))?;
    Ok(tree)
}

/// An I/O error as Go prints a system error: the C library's text, lower case, no code.
pub(crate) fn go_errno_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().collect::<String>() + chars.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [("24h", 86_400), ("1h30m", 5_400), ("90s", 90), ("0", 0), ("1.5h", 5_400), ("500ms", 1), ("5m", 300)] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for s in ["", "h", "10", "1x", "-1h", "1d"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(format_duration(5_400), "1h30m");
        assert_eq!(format_duration(600), "10m");
    }

    #[test]
    fn huge_values_and_keys_are_not_echoed_whole() {
        const BIG: usize = 5 * 1024 * 1024;
        let big = "x".repeat(BIG);
        let text = format!(
            "server {{\n trust_domain = \"{big}\"\n log_level = \"{big}\"\n ca_ttl = \"{big}\"\n {big} = 1\n}}\nplugins {{\n NodeAttestor \"{big}\" {{ plugin_data {{}} }}\n}}\n"
        );
        let tree = parse_text(&text, false).unwrap();
        let errors = server::ServerConfig::from_tree(&tree, &server::ServerOverrides::default()).unwrap_err();
        let shown = errors.to_string();
        for key in ["server.trust_domain", "server.log_level", "server.ca_ttl", "NodeAttestor"] {
            let line = shown.lines().find(|l| l.starts_with(key) || l.contains(key)).unwrap_or_else(|| panic!("no error for {key}"));
            assert!(line.len() < 400, "{key}: {} bytes", line.len());
            assert!(line.contains(&format!("({BIG} bytes)")), "{key}: size not given: {line}");
        }
        // The unknown key is named by a path as long as the key: bounded too.
        assert!(
            errors.0.iter().all(|e| e.path.len() < PATH_LIMIT + 50 && e.message.len() < MESSAGE_LIMIT + 50),
            "an error kept a huge value"
        );
        assert!(shown.len() < 20 * 1024, "whole report is {} bytes", shown.len());
    }

    #[test]
    fn quote_keeps_short_values_and_cuts_on_characters() {
        assert_eq!(quote("debug"), "\"debug\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.starts_with(&format!("{:?}", "é".repeat(64))), "{q}");
        assert!(q.ends_with("... (200 bytes)"), "{q}");
    }
}
