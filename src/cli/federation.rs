//! `cairn server federation create|show|list|update|delete|refresh`: SPIRE's verbs, flags and
//! output for federation relationships stored through the Trust Domain API.

use super::client::connect_admin;
use super::server::{Sock, code_name};
use crate::spiffe::{Bundle, SpiffeId, TrustDomain};
use crate::wire::convert::bundle_to_proto;
use crate::wire::pb::spire::api::server::trustdomain::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use clap::{Args, Subcommand};
use pt::federation_relationship::BundleEndpointProfile;
use std::path::{Path, PathBuf};

type CliResult = Result<(), String>;

/// `federation` subcommands.
#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Create dynamic federation relationships with foreign trust domains.
    Create(RelationshipArgs),
    /// Update dynamic federation relationships (fields not given are cleared, as in SPIRE).
    Update(RelationshipArgs),
    /// Show the dynamic federation relationship with one trust domain.
    Show {
        /// The trust domain.
        #[arg(long)]
        trust_domain: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// List the dynamic federation relationships.
    List {
        #[command(flatten)]
        sock: Sock,
    },
    /// Delete a dynamic federation relationship (its bundle stays).
    Delete {
        /// The trust domain.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
    /// Fetch a federated trust domain's bundle now.
    Refresh {
        /// The trust domain.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        sock: Sock,
    },
}

/// Flags of `create` and `update`.
#[derive(Debug, Args)]
pub struct RelationshipArgs {
    /// File with relationships in JSON (`-` for stdin); excludes the other relationship flags.
    #[arg(long)]
    data: Option<String>,
    /// The foreign trust domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// URL of its bundle endpoint.
    #[arg(long)]
    bundle_endpoint_url: Option<String>,
    /// https_web or https_spiffe.
    #[arg(long, default_value = "")]
    bundle_endpoint_profile: String,
    /// SPIFFE ID of the endpoint (https_spiffe).
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// The trust domain's bundle, to bootstrap https_spiffe authentication.
    #[arg(long)]
    trust_domain_bundle_path: Option<PathBuf>,
    /// pem or spiffe.
    #[arg(long, default_value = "pem")]
    trust_domain_bundle_format: String,
    #[command(flatten)]
    sock: Sock,
}

/// One relationship in a `-data` file (SPIRE's JSON shape).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataRelationship {
    trust_domain: Option<String>,
    #[serde(rename = "bundleEndpointURL")]
    bundle_endpoint_url: Option<String>,
    bundle_endpoint_profile: Option<String>,
    #[serde(rename = "endpointSPIFFEID")]
    endpoint_spiffe_id: Option<String>,
    /// The bundle itself: a JSON string of PEM, or the SPIFFE bundle document.
    trust_domain_bundle: Option<serde_json::Value>,
    trust_domain_bundle_format: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataFile {
    federation_relationships: Vec<DataRelationship>,
}

fn parse_bundle(td: &TrustDomain, data: &[u8], format: &str) -> Result<pt::Bundle, String> {
    let bundle = match format {
        "pem" => {
            let text = std::str::from_utf8(data).map_err(|_| "cannot parse bundle file: not text".to_owned())?;
            let roots = crate::spiffe::parse_pem_certs(text).map_err(|e| format!("cannot parse bundle file: {e}"))?;
            Bundle { x509_authorities: roots, ..Bundle::new(td.clone()) }
        }
        "spiffe" => Bundle::from_spiffe_json(td.clone(), data).map_err(|e| format!("cannot parse bundle file: {e}"))?,
        other => return Err(format!("invalid bundle format: {other:?}: expected pem or spiffe")),
    };
    Ok(bundle_to_proto(&bundle))
}

/// A relationship from flag or file values, checked as SPIRE's CLI checks it.
fn relationship(
    td: Option<&str>,
    url: Option<&str>,
    profile: &str,
    endpoint_id: Option<&str>,
    bundle: Option<(Vec<u8>, &str)>,
) -> Result<pt::FederationRelationship, String> {
    let td = td.filter(|s| !s.is_empty()).ok_or("trust domain is required")?;
    let url = url.filter(|s| !s.is_empty()).ok_or("bundle endpoint URL is required")?;
    // As in SPIRE, an https_spiffe relationship's bundle is read as the bundle of the endpoint
    // ID's trust domain (the server refuses it unless that is the relationship's).
    let mut bundle_td = td.to_owned();
    let profile = match profile {
        "https_web" => BundleEndpointProfile::HttpsWeb(pt::HttpsWebProfile {}),
        "https_spiffe" => {
            let id =
                endpoint_id.filter(|s| !s.is_empty()).ok_or("endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set")?;
            let id = SpiffeId::new(id).map_err(|e| format!("cannot parse bundle endpoint SPIFFE ID: {e}"))?;
            bundle_td = id.trust_domain().as_str().to_owned();
            BundleEndpointProfile::HttpsSpiffe(pt::HttpsspiffeProfile { endpoint_spiffe_id: id.to_string() })
        }
        other => return Err(format!("unknown bundle endpoint profile type: {other:?}")),
    };
    let trust_domain_bundle = match bundle {
        Some((data, format)) => {
            let parsed = TrustDomain::new(&bundle_td).map_err(|e| format!("cannot parse bundle file: trust domain {bundle_td:?}: {e}"))?;
            Some(parse_bundle(&parsed, &data, format)?)
        }
        None => None,
    };
    Ok(pt::FederationRelationship {
        trust_domain: td.to_owned(),
        bundle_endpoint_url: url.to_owned(),
        bundle_endpoint_profile: Some(profile),
        trust_domain_bundle,
    })
}

fn read_bundle_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read bundle file: {}: {e}", path.display()))
}

/// The relationships `a` names: from `-data`, or from the flags.
fn relationships(a: &RelationshipArgs) -> Result<Vec<pt::FederationRelationship>, String> {
    let Some(data) = &a.data else {
        let bundle =
            a.trust_domain_bundle_path.as_deref().map(read_bundle_file).transpose()?.map(|d| (d, a.trust_domain_bundle_format.as_str()));
        return Ok(vec![relationship(
            a.trust_domain.as_deref(),
            a.bundle_endpoint_url.as_deref(),
            &a.bundle_endpoint_profile,
            a.endpoint_spiffe_id.as_deref(),
            bundle,
        )?]);
    };
    if a.trust_domain.is_some()
        || a.bundle_endpoint_url.is_some()
        || a.endpoint_spiffe_id.is_some()
        || a.trust_domain_bundle_path.is_some()
        || !a.bundle_endpoint_profile.is_empty()
    {
        return Err("cannot use other flags to specify relationship fields when 'data' flag is set".into());
    }
    let text = if data == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map_err(|e| format!("cannot read stdin: {e}"))?;
        v
    } else {
        std::fs::read(data).map_err(|e| format!("cannot read {data}: {e}"))?
    };
    let file: DataFile = serde_json::from_slice(&text).map_err(|e| format!("failed to parse JSON: {e}"))?;
    file.federation_relationships
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let format = r.trust_domain_bundle_format.as_deref().unwrap_or("pem");
            let bundle = match &r.trust_domain_bundle {
                None => None,
                Some(serde_json::Value::String(pem)) if format == "pem" => Some((pem.clone().into_bytes(), format)),
                Some(doc) if format == "spiffe" => Some((doc.to_string().into_bytes(), format)),
                Some(_) if format == "pem" => {
                    return Err(format!("could not parse item {i}: cannot parse bundle raw message: a PEM bundle must be a JSON string"));
                }
                Some(_) => {
                    return Err(format!(
                        "could not parse item {i}: cannot parse bundle raw message: bundle format {format:?} is unsupported"
                    ));
                }
            };
            relationship(
                r.trust_domain.as_deref(),
                r.bundle_endpoint_url.as_deref(),
                r.bundle_endpoint_profile.as_deref().unwrap_or(""),
                r.endpoint_spiffe_id.as_deref(),
                bundle,
            )
            .map_err(|e| format!("could not parse item {i}: {e}"))
        })
        .collect()
}

/// SPIRE's field block.
fn block(fr: &pt::FederationRelationship) -> String {
    let mut s = format!("Trust domain              : {}\nBundle endpoint URL       : {}\n", fr.trust_domain, fr.bundle_endpoint_url);
    match &fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => s.push_str("Bundle endpoint profile   : https_web\n"),
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => {
            s.push_str("Bundle endpoint profile   : https_spiffe\n");
            s.push_str(&format!("Endpoint SPIFFE ID        : {}\n", p.endpoint_spiffe_id));
        }
        None => {}
    }
    s
}

/// protojson of a relationship (proto field names; the bundle left out when absent).
fn relationship_json(fr: &pt::FederationRelationship) -> serde_json::Value {
    let mut v = serde_json::json!({"trust_domain": fr.trust_domain, "bundle_endpoint_url": fr.bundle_endpoint_url});
    match &fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => v["https_web"] = serde_json::json!({}),
        Some(BundleEndpointProfile::HttpsSpiffe(p)) => v["https_spiffe"] = serde_json::json!({"endpoint_spiffe_id": p.endpoint_spiffe_id}),
        None => {}
    }
    if let Some(b) = &fr.trust_domain_bundle {
        use base64::Engine as _;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        v["trust_domain_bundle"] = serde_json::json!({
            "trust_domain": b.trust_domain,
            "x509_authorities": b.x509_authorities.iter().map(|a| serde_json::json!({"asn1": b64(&a.asn1)})).collect::<Vec<_>>(),
            "jwt_authorities": b.jwt_authorities.iter().map(|k| serde_json::json!({"public_key": b64(&k.public_key), "key_id": k.key_id, "expires_at": k.expires_at.to_string()})).collect::<Vec<_>>(),
            "refresh_hint": b.refresh_hint.to_string(),
            "sequence_number": b.sequence_number.to_string(),
        });
    }
    v
}

fn status_json(st: Option<&pt::Status>) -> serde_json::Value {
    st.map_or(serde_json::json!({}), |s| serde_json::json!({"code": s.code, "message": s.message}))
}

fn rpc_err(e: &tonic::Status) -> String {
    format!("rpc error: code = {} desc = {}", code_name(e.code()), e.message())
}

async fn client(sock: &Sock) -> Result<pb::trust_domain_client::TrustDomainClient<tonic::transport::Channel>, String> {
    Ok(pb::trust_domain_client::TrustDomainClient::new(connect_admin(&sock.path()?).await?))
}

/// Prints batch results as SPIRE does: successes on stdout, failures (with the relationship
/// as requested) on stderr, then an error if any failed.
fn print_batch(
    verb: &str,
    sent: &[pt::FederationRelationship],
    results: &[(Option<pt::Status>, Option<pt::FederationRelationship>)],
) -> CliResult {
    let mut failed = 0;
    for (status, fr) in results {
        if status.as_ref().is_none_or(|s| s.code == 0)
            && let Some(fr) = fr
        {
            outln!();
            out!("{}", block(fr));
        }
    }
    for (i, (status, _)) in results.iter().enumerate() {
        let Some(st) = status.as_ref().filter(|s| s.code != 0) else { continue };
        failed += 1;
        outln!();
        eprintln!(
            "Failed to {verb} the following federation relationship (code: {}, msg: {:?}):",
            code_name(tonic::Code::from_i32(st.code)),
            st.message
        );
        if let Some(fr) = sent.get(i) {
            eprint!("{}", block(fr));
        }
    }
    if failed > 0 {
        return Err(format!("failed to {verb} one or more federation relationships"));
    }
    Ok(())
}

/// The results of a create or update: protojson-shaped with `-output json`, else SPIRE's text.
fn report(verb: &str, sock: &Sock, sent: &[pt::FederationRelationship], results: Vec<BatchResult>) -> CliResult {
    if sock.output == "json" {
        let results: Vec<_> = results
            .iter()
            .map(|(st, fr)| serde_json::json!({"status": status_json(st.as_ref()), "federation_relationship": fr.as_ref().map(relationship_json)}))
            .collect();
        outln!("{}", serde_json::json!({ "results": results }));
        return Ok(());
    }
    print_batch(verb, sent, &results)
}

/// One result of a batch: its status and the relationship it answered.
type BatchResult = (Option<pt::Status>, Option<pt::FederationRelationship>);

/// Runs one `federation` subcommand.
///
/// # Errors
/// A message for the operator.
pub async fn run(cmd: FederationCommand) -> CliResult {
    match cmd {
        FederationCommand::Create(a) => {
            let sent = relationships(&a)?;
            let resp = client(&a.sock)
                .await?
                .batch_create_federation_relationship(pb::BatchCreateFederationRelationshipRequest {
                    federation_relationships: sent.clone(),
                    output_mask: None,
                })
                .await
                .map_err(|e| format!("request failed: {}", rpc_err(&e)))?
                .into_inner();
            let results = resp.results.into_iter().map(|r| (r.status, r.federation_relationship)).collect();
            report("create", &a.sock, &sent, results)
        }
        FederationCommand::Update(a) => {
            let sent = relationships(&a)?;
            let resp = client(&a.sock)
                .await?
                .batch_update_federation_relationship(pb::BatchUpdateFederationRelationshipRequest {
                    federation_relationships: sent.clone(),
                    input_mask: None,
                    output_mask: None,
                })
                .await
                .map_err(|e| format!("request failed: {}", rpc_err(&e)))?
                .into_inner();
            let results = resp.results.into_iter().map(|r| (r.status, r.federation_relationship)).collect();
            report("update", &a.sock, &sent, results)
        }
        FederationCommand::Show { trust_domain, sock } => {
            let td = trust_domain.filter(|t| !t.is_empty()).ok_or("a trust domain name is required")?;
            let fr = client(&sock)
                .await?
                .get_federation_relationship(pb::GetFederationRelationshipRequest { trust_domain: td.clone(), output_mask: None })
                .await
                .map_err(|e| format!("error showing federation relationship: {}", rpc_err(&e)))?
                .into_inner();
            if sock.output == "json" {
                outln!("{}", relationship_json(&fr));
            } else {
                outln!("Found a federation relationship with trust domain {td}:");
                outln!();
                out!("{}", block(&fr));
            }
            Ok(())
        }
        FederationCommand::List { sock } => {
            let mut c = client(&sock).await?;
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let resp = c
                    .list_federation_relationships(pb::ListFederationRelationshipsRequest { output_mask: None, page_size: 0, page_token })
                    .await
                    .map_err(|e| format!("error listing federation relationship: {}", rpc_err(&e)))?
                    .into_inner();
                all.extend(resp.federation_relationships);
                if resp.next_page_token.is_empty() {
                    break;
                }
                page_token = resp.next_page_token;
            }
            if sock.output == "json" {
                outln!(
                    "{}",
                    serde_json::json!({"federation_relationships": all.iter().map(relationship_json).collect::<Vec<_>>(), "next_page_token": ""})
                );
                return Ok(());
            }
            outln!("Found {} federation relationship{}", all.len(), if all.len() == 1 { "" } else { "s" });
            for fr in &all {
                outln!();
                out!("{}", block(fr));
            }
            Ok(())
        }
        FederationCommand::Delete { id, sock } => {
            let td = id.filter(|t| !t.is_empty()).ok_or("id is required")?;
            let resp = client(&sock)
                .await?
                .batch_delete_federation_relationship(pb::BatchDeleteFederationRelationshipRequest { trust_domains: vec![td.clone()] })
                .await
                .map_err(|e| format!("request failed: {}", rpc_err(&e)))?
                .into_inner();
            let st = resp.results.first().and_then(|r| r.status.clone());
            if sock.output == "json" {
                outln!("{}", serde_json::json!({"results": [{"status": status_json(st.as_ref()), "trust_domain": td}]}));
            }
            match st {
                Some(st) if st.code != 0 => Err(format!("failed to delete federation relationship {td:?}: {}", st.message)),
                _ => {
                    if sock.output != "json" {
                        outln!("federation relationship deleted.");
                    }
                    Ok(())
                }
            }
        }
        FederationCommand::Refresh { id, sock } => {
            let td = id.filter(|t| !t.is_empty()).ok_or("id is required")?;
            match client(&sock).await?.refresh_bundle(pb::RefreshBundleRequest { trust_domain: td.clone() }).await {
                Ok(_) => {
                    if sock.output == "json" {
                        outln!("{}", serde_json::json!({"code": 0, "message": "OK"}));
                    } else {
                        outln!("Bundle refreshed");
                    }
                    Ok(())
                }
                Err(e) if e.code() == tonic::Code::NotFound => Err(format!("there is no federation relationship with trust domain {td:?}")),
                Err(e) => Err(format!("failed to refresh bundle: {}", rpc_err(&e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_as_spire_checks_them() {
        let err = |td: Option<&str>, url: Option<&str>, p: &str, id: Option<&str>| relationship(td, url, p, id, None).unwrap_err();
        assert_eq!(err(None, Some("https://a"), "https_web", None), "trust domain is required");
        assert_eq!(err(Some("a.test"), None, "https_web", None), "bundle endpoint URL is required");
        assert_eq!(
            err(Some("a.test"), Some("https://a"), "https_spiffe", None),
            "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
        );
        assert!(
            err(Some("a.test"), Some("https://a"), "https_spiffe", Some("not-an-id")).starts_with("cannot parse bundle endpoint SPIFFE ID")
        );
        assert_eq!(err(Some("a.test"), Some("https://a"), "ftp", None), "unknown bundle endpoint profile type: \"ftp\"");
        let fr = relationship(Some("a.test"), Some("https://a:8443"), "https_spiffe", Some("spiffe://a.test/spire/server"), None).unwrap();
        assert_eq!(
            block(&fr),
            "Trust domain              : a.test\nBundle endpoint URL       : https://a:8443\nBundle endpoint profile   : https_spiffe\nEndpoint SPIFFE ID        : spiffe://a.test/spire/server\n"
        );
    }

    #[test]
    fn data_files_use_spires_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rels.json");
        std::fs::write(
            &path,
            r#"{"federationRelationships":[
                {"trustDomain":"a.test","bundleEndpointURL":"https://a","bundleEndpointProfile":"https_web"},
                {"trustDomain":"b.test","bundleEndpointURL":"https://b","bundleEndpointProfile":"https_spiffe","endpointSPIFFEID":"spiffe://b.test/spire/server"}
            ]}"#,
        )
        .unwrap();
        let args = |data: Option<String>, td: Option<String>| RelationshipArgs {
            data,
            trust_domain: td,
            bundle_endpoint_url: None,
            bundle_endpoint_profile: String::new(),
            endpoint_spiffe_id: None,
            trust_domain_bundle_path: None,
            trust_domain_bundle_format: "pem".into(),
            sock: Sock { socket_path: PathBuf::new(), output: "pretty".into(), instance: None },
        };
        let got = relationships(&args(Some(path.display().to_string()), None)).unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            matches!(got[1].bundle_endpoint_profile, Some(BundleEndpointProfile::HttpsSpiffe(ref p)) if p.endpoint_spiffe_id == "spiffe://b.test/spire/server")
        );
        assert_eq!(
            relationships(&args(Some(path.display().to_string()), Some("c.test".into()))).unwrap_err(),
            "cannot use other flags to specify relationship fields when 'data' flag is set"
        );
    }
}
