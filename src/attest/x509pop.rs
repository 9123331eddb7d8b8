//! Placeholder replaced by the x509pop implementation.
#![allow(missing_docs, clippy::missing_errors_doc, dead_code, unused_variables)]
#[derive(Debug, thiserror::Error)]
#[error("x509pop is not available")]
pub struct X509PopError;
pub fn attestation_payload(chain_der: &[Vec<u8>]) -> Vec<u8> {
    Vec::new()
}
pub fn challenge_response(private_key_pkcs8: &[u8], challenge: &[u8]) -> Result<Vec<u8>, X509PopError> {
    Err(X509PopError)
}
pub fn verify_payload(payload: &[u8], roots: &[Vec<u8>], now: i64, max_intermediates: usize) -> Result<AttestedCert, X509PopError> {
    Err(X509PopError)
}
pub struct AttestedCert;
impl AttestedCert {
    pub fn fingerprint(&self) -> String {
        String::new()
    }
    pub fn agent_path(&self, template: Option<&str>) -> Result<String, X509PopError> {
        Err(X509PopError)
    }
    pub fn selectors(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    pub fn make_challenge(&self) -> Result<(Vec<u8>, Challenge), X509PopError> {
        Err(X509PopError)
    }
}
pub struct Challenge;
impl Challenge {
    pub fn verify_response(&self, response: &[u8]) -> Result<(), X509PopError> {
        Err(X509PopError)
    }
}
