//! A key held in process memory (used by the `memory` and `disk` managers).

use super::{Key, KeyManagerError, KeyType};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use zeroize::Zeroizing;

/// An in-memory private key. Two parsed forms of the same PKCS#8 are kept: rcgen's (DER ECDSA
/// signatures, for certificates) and aws-lc's fixed-signature pair (for JWS), so neither path
/// converts signatures on the hot path.
pub(crate) struct LocalKey {
    id: String,
    key_type: KeyType,
    cert_signer: rcgen::KeyPair,
    jws_signer: JwsSigner,
    pkcs8: Zeroizing<Vec<u8>>,
}

/// The key in the form that signs JWSs: ECDSA as fixed-width `r || s`, RSA as RS256.
enum JwsSigner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for LocalKey {
    // Never print key material: only what identifies the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey").field("id", &self.id).field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

impl LocalKey {
    pub(crate) fn generate(id: &str, key_type: KeyType) -> Result<Self, KeyManagerError> {
        let pair = key_type.generate_key_pair()?;
        let pkcs8 = Zeroizing::new(pair.serialize_der());
        Self::from_pkcs8(id, key_type, &pkcs8)
    }

    pub(crate) fn from_pkcs8(id: &str, key_type: KeyType, pkcs8: &[u8]) -> Result<Self, KeyManagerError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let cert_signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, key_type.rcgen_alg())
            .map_err(|e| KeyManagerError::Crypto(format!("key {id}: {e}")))?;
        let bad = |e: &dyn std::fmt::Display| KeyManagerError::Crypto(format!("key {id}: {e}"));
        let jws_signer = match key_type {
            KeyType::EcP256 => JwsSigner::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(|e| bad(&e))?),
            KeyType::EcP384 => JwsSigner::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8).map_err(|e| bad(&e))?),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| bad(&e))?;
                // A stored key must be the size its type says (a swapped key file is refused).
                let want = if key_type == KeyType::Rsa2048 { 2048 } else { 4096 };
                if pair.public_modulus_len() * 8 != want {
                    return Err(bad(&format!("is {} bits, not {}", pair.public_modulus_len() * 8, key_type.as_str())));
                }
                JwsSigner::Rsa(pair)
            }
        };
        Ok(Self { id: id.to_owned(), key_type, cert_signer, jws_signer, pkcs8: Zeroizing::new(pkcs8.to_vec()) })
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl LocalKey {
    /// A key from a PEM private key file: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
    /// PKCS#1 (`RSA PRIVATE KEY`), normalised to PKCS#8; the type is read from the key.
    pub(crate) fn from_pem(id: &str, text: &str) -> Result<Self, KeyManagerError> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let bad = |what: String| KeyManagerError::Crypto(format!("cannot load private key: {what}"));
        let block = pem::parse(text).map_err(|e| bad(e.to_string()))?;
        let der = Zeroizing::new(block.contents().to_vec());
        let pkcs8: Zeroizing<Vec<u8>> = match block.tag() {
            "PRIVATE KEY" => der,
            "EC PRIVATE KEY" => {
                let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .or_else(|_| EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, &der))
                    .map_err(|e| bad(format!("EC key: {e}")))?;
                Zeroizing::new(pair.to_pkcs8v1().map_err(|e| bad(format!("EC key: {e}")))?.as_ref().to_vec())
            }
            "RSA PRIVATE KEY" => {
                let pair = RsaKeyPair::from_der(&der).map_err(|e| bad(format!("RSA key: {e}")))?;
                let doc: Pkcs8V1Der<'static> = pair.as_der().map_err(|e| bad(format!("RSA key: {e}")))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            other => return Err(bad(format!("a PEM block {other:?} is not a private key"))),
        };
        let key_type = if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).is_ok() {
            KeyType::EcP256
        } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8).is_ok() {
            KeyType::EcP384
        } else {
            match RsaKeyPair::from_pkcs8(&pkcs8).map(|k| k.public_modulus_len() * 8) {
                Ok(2048) => KeyType::Rsa2048,
                Ok(4096) => KeyType::Rsa4096,
                Ok(bits) => return Err(bad(format!("RSA {bits} bits (supported: 2048, 4096)"))),
                Err(_) => return Err(bad("unsupported key type (supported: EC P-256, EC P-384, RSA 2048/4096)".into())),
            }
        };
        Self::from_pkcs8(id, key_type, &pkcs8)
    }
}

impl rcgen::PublicKeyData for LocalKey {
    fn der_bytes(&self) -> &[u8] {
        self.cert_signer.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.cert_signer.algorithm()
    }
}

impl rcgen::SigningKey for LocalKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.cert_signer.sign(msg)
    }
}

impl Key for LocalKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        match &self.jws_signer {
            JwsSigner::Ec(k) => {
                let sig = k.sign(&SystemRandom::new(), msg).map_err(|e| KeyManagerError::Crypto(e.to_string()))?;
                Ok(sig.as_ref().to_vec())
            }
            JwsSigner::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig).map_err(|e| KeyManagerError::Crypto(e.to_string()))?;
                Ok(sig)
            }
        }
    }
}
