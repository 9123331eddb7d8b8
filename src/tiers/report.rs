//! What `cairn tiers up` and `cairn tiers status` print.

use super::topology::Topology;
use super::{CONVERGENCE_TIMEOUT, Observation, State, procs};
use crate::config::format_duration;
use std::collections::BTreeSet;
use std::time::Duration;

/// The tree, the CA chains, the JWT keys each tier sees, and whether they converged.
pub(super) fn print_up(topo: &Topology, state: &State, obs: &Observation, converged_in: Option<Duration>) {
    say!();
    print_tree(topo, state);
    say!();
    print_chains(state, obs);
    say!();
    print_keys(obs);
    say!();
    let n_views = obs.views.len();
    match converged_in {
        Some(d) => say!(
            "Converged: all {n_views} tiers ({} servers, {} agents) see all {} JWT keys, {:.1}s after the last tier was ready.",
            state.servers.len(),
            state.agents.len(),
            obs.owners.len(),
            d.as_secs_f64()
        ),
        None => {
            say!("NOT converged within {}s:", CONVERGENCE_TIMEOUT.as_secs());
            for v in &obs.views {
                match &v.kids {
                    Err(e) => say!("  {}: {e}", v.label),
                    Ok(k) => {
                        let missing: Vec<&str> = obs.owners.iter().filter(|(kid, _)| !k.contains(*kid)).map(|(_, o)| o.as_str()).collect();
                        if !missing.is_empty() {
                            say!("  {} does not see the key of {}", v.label, missing.join(", "));
                        }
                    }
                }
            }
            for (name, st) in &obs.statuses {
                if let Err(e) = st {
                    say!("  server {name}: no status yet ({e})");
                }
            }
        }
    }
}

fn print_tree(topo: &Topology, state: &State) {
    say!("Tree (trust domain {})", state.trust_domain);
    let mut lines: Vec<(String, String)> = Vec::new();
    if let Some(root) = topo.root() {
        tree_node(topo, state, &root.name, "", "", &mut lines);
    }
    let width = lines.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    for (left, right) in lines {
        let pad = width - left.chars().count();
        say!("  {left}{}  {right}", " ".repeat(pad));
    }
}

/// One server and, below it, its downstream servers and its agents.
fn tree_node(topo: &Topology, state: &State, name: &str, lead: &str, child_lead: &str, out: &mut Vec<(String, String)>) {
    let detail = match state.servers.iter().find(|s| s.name == name) {
        Some(s) => match (&s.upstream, state.agents.iter().find(|a| a.serves.as_deref() == Some(name))) {
            (Some(up), Some(a)) => format!(
                "server 127.0.0.1:{}  ca_ttl {}  CA signed by {up} (identity {} via agent {} on {up})",
                s.port,
                format_duration(s.ca_ttl),
                a.spiffe_id,
                a.name
            ),
            _ => format!("server 127.0.0.1:{}  ca_ttl {}  self-signed root", s.port, format_duration(s.ca_ttl)),
        },
        None => String::new(),
    };
    out.push((format!("{lead}{name}"), detail));
    let servers: Vec<&str> = topo.children(name).map(|s| s.name.as_str()).collect();
    let agents: Vec<&str> = topo.agents_of(name).map(|a| a.name.as_str()).collect();
    let total = servers.len() + agents.len();
    for (i, child) in servers.iter().chain(agents.iter()).enumerate() {
        let last = i + 1 == total;
        let (branch, next) = if last { ("└── ", "    ") } else { ("├── ", "│   ") };
        if i < servers.len() {
            tree_node(topo, state, child, &format!("{child_lead}{branch}"), &format!("{child_lead}{next}"), out);
        } else {
            let issued = state.agents.iter().find(|a| a.name == *child).map(|a| a.spiffe_id.clone()).unwrap_or_default();
            out.push((format!("{child_lead}{branch}{child}"), format!("agent  workload SVID {issued}")));
        }
    }
}

/// The tier names along the chain of `name`: itself, its upstream, ... up to the root.
fn ancestry<'a>(state: &'a State, name: &'a str) -> Vec<&'a str> {
    let mut out = vec![name];
    let mut cur = name;
    while let Some(up) = state.servers.iter().find(|s| s.name == cur).and_then(|s| s.upstream.as_deref()) {
        if out.contains(&up) {
            break;
        }
        out.push(up);
        cur = up;
    }
    out
}

fn print_chains(state: &State, obs: &Observation) {
    say!("CA chains (status.json ca_chain: the tier's own CA first, then the CAs above it; the self-signed root travels in the bundle)");
    for s in &state.servers {
        say!("  {}", s.name);
        match obs.statuses.get(&s.name) {
            Some(Ok(st)) if !st.ca_chain.is_empty() => {
                let names = ancestry(state, &s.name);
                for (i, cert) in st.ca_chain.iter().enumerate() {
                    let who = names.get(i).map_or_else(|| "?".to_owned(), |n| format!("[{n}]"));
                    say!("    {who:<14} {cert}");
                }
            }
            Some(Ok(_)) => say!("    (no active CA yet)"),
            Some(Err(e)) => say!("    (no status: {e})"),
            None => say!("    (no status)"),
        }
    }
}

/// `root, region-a (+1 other)` for a set of kids.
fn owners_of(kids: &BTreeSet<String>, obs: &Observation) -> String {
    let names: Vec<&str> = obs.order.iter().filter(|k| kids.contains(*k)).filter_map(|k| obs.owners.get(k).map(String::as_str)).collect();
    let others = kids.iter().filter(|k| !obs.owners.contains_key(*k)).count();
    let mut out = names.join(", ");
    if others > 0 {
        out.push_str(&format!("{}+{others} retired or unknown", if out.is_empty() { "" } else { " " }));
    }
    if out.is_empty() { "none".to_owned() } else { out }
}

fn print_keys(obs: &Observation) {
    say!("JWT signing keys (kid -> the tier that signs with it)");
    let w = obs.owners.values().map(String::len).max().unwrap_or(0);
    for kid in &obs.order {
        say!("  {:<w$}  {kid}", obs.owners.get(kid).map_or("?", String::as_str));
    }
    say!("Seen by (servers: status.json jwt_key_ids; agents: Workload API FetchJWTBundles)");
    let w = obs.views.iter().map(|v| v.label.len()).max().unwrap_or(0);
    let total = obs.owners.len();
    for v in &obs.views {
        match &v.kids {
            Ok(k) => {
                let seen = obs.owners.keys().filter(|o| k.contains(*o)).count();
                say!("  {:<w$}  {seen}/{total}  {}", v.label, owners_of(k, obs));
            }
            Err(e) => say!("  {:<w$}  ?    {e}", v.label),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// status

fn utc(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
        }
        Err(_) => unix.to_string(),
    }
}

/// `in 3h59m` or `12s ago`.
fn rel(unix: i64, now: i64) -> String {
    if unix >= now { format!("in {}", format_duration(unix - now)) } else { format!("{} ago", format_duration(now - unix)) }
}

fn pid_text(pid: Option<u32>, marker: &std::path::Path) -> String {
    match pid {
        None => "not running".to_owned(),
        Some(p) if procs::is_ours(p, &marker.display().to_string()) => format!("pid {p} running"),
        Some(p) => format!("pid {p} NOT running"),
    }
}

pub(super) fn print_status(state: &State, obs: &Observation) {
    let now = crate::now_unix();
    let mode = match state.supervisor_pid {
        Some(p) if procs::is_ours(p, "tiers") => format!("in the foreground (cairn tiers up, pid {p})"),
        _ if state.detached => "detached".to_owned(),
        _ => "stopped".to_owned(),
    };
    say!(
        "Demo in {}: trust domain {}, topology {}\nstarted {} ({}), {mode}",
        state.data_dir.display(),
        state.trust_domain,
        state.topology.display(),
        utc(state.started_at),
        rel(state.started_at, now)
    );
    for s in &state.servers {
        say!();
        say!("server {}  127.0.0.1:{}  {}  (log {})", s.name, s.port, pid_text(s.pid, &s.config), s.log.display());
        let st = match obs.statuses.get(&s.name) {
            Some(Ok(st)) => st,
            Some(Err(e)) => {
                say!("  no status: {e}");
                continue;
            }
            None => continue,
        };
        let slot_line = |kind: &str, role: &str| -> String {
            match st.slots.iter().find(|x| x.kind == kind && x.role == role) {
                Some(x) => format!("slot {}  {}  until {} ({})", x.slot, x.id, utc(x.not_after), rel(x.not_after, now)),
                None if role == "next" => "none (prepared when half of the active one's life is left)".to_owned(),
                None => "none".to_owned(),
            }
        };
        match st.slots.iter().find(|x| x.kind == "x509" && x.role == "current") {
            Some(x) => say!("  CA expires      {} ({})", utc(x.not_after), rel(x.not_after, now)),
            None => say!("  CA expires      (no active CA)"),
        }
        match st.effective_ca_ttl {
            Some(eff) if st.ca_ttl > 0 => say!(
                "  CA lifetime     configured {}, effective {}{}",
                format_duration(st.ca_ttl),
                format_duration(eff),
                if eff + (st.ca_ttl / 100).clamp(1, 60) < st.ca_ttl { " (capped at the upstream CA's expiry)" } else { "" }
            ),
            _ => {}
        }
        say!("  X.509 active    {}", slot_line("x509", "current"));
        say!("  X.509 prepared  {}", slot_line("x509", "next"));
        say!("  JWT active      {}", slot_line("jwt", "current"));
        say!("  JWT prepared    {}", slot_line("jwt", "next"));
        // The previous authorities and taint: what compromise response acts on, and whether
        // this tier has taken in a taint or revocation from above.
        let old = |s: &super::probe::AuthorityStates, tainted: &[String]| match &s.old {
            Some(o) if tainted.contains(&o.authority_id) => format!("{} (tainted)", o.authority_id),
            Some(o) => o.authority_id.clone(),
            None => "none".to_owned(),
        };
        say!("  X.509 old       {}", old(&st.x509_authorities, &st.tainted_x509));
        say!("  JWT old         {}", old(&st.jwt_authorities, &st.tainted_jwt));
        if !st.tainted_x509.is_empty() || !st.tainted_jwt.is_empty() {
            say!("  tainted         X.509 {:?}; JWT {:?}", st.tainted_x509, st.tainted_jwt);
        }
        let kids: BTreeSet<String> = st.jwt_key_ids.iter().cloned().collect();
        say!(
            "  bundle          sequence {}; {} X.509 root{}; {} JWT keys: {}",
            st.bundle_sequence,
            st.x509_roots,
            if st.x509_roots == 1 { "" } else { "s" },
            kids.len(),
            owners_of(&kids, obs)
        );
        match (&s.upstream, &st.upstream) {
            (None, _) => say!("  upstream        none: the self-signed root"),
            (Some(up), None) => say!("  upstream sync   {up}: nothing recorded yet"),
            (Some(up), Some(u)) => {
                let last = if u.last_sync == 0 { "never synced".to_owned() } else { format!("last sync {}", rel(u.last_sync, now)) };
                let mode = if u.mode.is_empty() { "?" } else { u.mode.as_str() };
                let err = u.last_error.as_deref().unwrap_or("none");
                say!("  upstream sync   {up}: {last} by {mode}; upstream bundle sequence {}; last error: {err}", u.upstream_sequence);
            }
        }
        for f in &st.federation {
            let last =
                if f.last_refresh == 0 { "never refreshed".to_owned() } else { format!("last refresh {}", rel(f.last_refresh, now)) };
            let err = f.last_error.as_deref().unwrap_or("none");
            say!("  federates with  {} ({}): {last}; bundle sequence {}; last error: {err}", f.trust_domain, f.profile, f.sequence);
        }
        let age = now - st.updated_at;
        if age > 5 {
            say!("  status.json     written {} ago: the server is not updating it (stopped?)", format_duration(age));
        }
    }
    say!();
    say!("agents");
    let w = state.agents.iter().map(|a| a.name.len()).max().unwrap_or(0);
    let ws = state.agents.iter().map(|a| a.server.len()).max().unwrap_or(0);
    for a in &state.agents {
        let keys = match obs.views.iter().find(|v| v.label == format!("agent {}", a.name)).map(|v| &v.kids) {
            Some(Ok(k)) => format!("JWT keys: {}", owners_of(k, obs)),
            Some(Err(e)) => format!("JWT keys: ? ({e})"),
            None => String::new(),
        };
        say!("  {:<w$}  on {:<ws$}  {}  {keys}", a.name, a.server, pid_text(a.pid, &a.config));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(utc(1_714_564_805), "2024-05-01 12:00:05 UTC");
        assert_eq!(rel(100, 40), "in 1m");
        assert_eq!(rel(40, 100), "1m ago");
        assert_eq!(rel(5, 5), "in 0s");
    }
}
