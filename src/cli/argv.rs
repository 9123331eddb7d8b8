//! SPIRE's flag spelling (`-spiffeID x`, `-selector=unix:uid:0`) rewritten to clap's
//! (`--spiffe-id x`), so both spellings work.

/// Flags whose camel case does not split mechanically.
const SPECIAL: &[(&str, &str)] = &[
    ("x509SVIDTTL", "x509-svid-ttl"),
    ("jwtSVIDTTL", "jwt-svid-ttl"),
    ("storeSVID", "store-svid"),
    ("disableX509SVIDPrefetch", "disable-x509-svid-prefetch"),
    ("spiffeID", "spiffe-id"),
    ("parentID", "parent-id"),
    ("entryID", "entry-id"),
    ("authorityID", "authority-id"),
    ("endpointSpiffeID", "endpoint-spiffe-id"),
    ("bundleEndpointURL", "bundle-endpoint-url"),
    ("disableSDSAPI", "disable-sds-api"),
];

fn camel_to_kebab(name: &str) -> String {
    if let Some((_, k)) = SPECIAL.iter().find(|(c, _)| *c == name) {
        return (*k).to_owned();
    }
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars.get(i - 1).is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            let prev_upper = i > 0 && chars.get(i - 1).is_some_and(char::is_ascii_uppercase);
            if prev_lower || (prev_upper && next_lower) {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// Rewrites one argument list. Single-dash words of two or more letters become `--kebab`;
/// everything else (values, `-h`, negative numbers, `--long`) passes through.
#[must_use]
pub fn normalize(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_double_dash = false;
    for a in args {
        if after_double_dash {
            out.push(a);
            continue;
        }
        if a == "--" {
            after_double_dash = true;
            out.push(a);
            continue;
        }
        let rewritten = a.strip_prefix('-').filter(|rest| !rest.starts_with('-')).and_then(|rest| {
            let (name, value) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let first_alpha = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
            (name.len() >= 2 && first_alpha && name.chars().all(|c| c.is_ascii_alphanumeric())).then(|| match value {
                Some(v) => format!("--{}={v}", camel_to_kebab(name)),
                None => format!("--{}", camel_to_kebab(name)),
            })
        });
        out.push(rewritten.unwrap_or(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_spelling_becomes_clap_spelling() {
        let cases = [
            ("-spiffeID", "--spiffe-id"),
            ("-parentID", "--parent-id"),
            ("-socketPath", "--socket-path"),
            ("-x509SVIDTTL", "--x509-svid-ttl"),
            ("-jwtSVIDTTL", "--jwt-svid-ttl"),
            ("-federatesWith", "--federates-with"),
            ("-expandEnv", "--expand-env"),
            ("-config", "--config"),
            ("-selector=unix:uid:0", "--selector=unix:uid:0"),
            ("-trustDomain", "--trust-domain"),
            ("-dns", "--dns"),
            ("--spiffe-id", "--spiffe-id"),
            ("-h", "-h"),
            ("-5", "-5"),
            ("unix:uid:-1", "unix:uid:-1"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(vec![input.to_owned()]), vec![want.to_owned()], "{input}");
        }
        assert_eq!(normalize(vec!["--".into(), "-spiffeID".into()]), vec!["--".to_owned(), "-spiffeID".to_owned()]);
    }
}
