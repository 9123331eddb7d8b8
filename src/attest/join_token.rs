//! Join tokens: the agent sends a one-time token; the server consumes it (single use, deleted
//! before the expiry check, as SPIRE does) and names the agent after it.

use super::{AgentAttestor, AttestError, ChallengeChannel, NodeIdentity, ServerAttestor};
use crate::spiffe::{SpiffeId, TrustDomain};
use std::sync::Arc;

/// The method's wire name.
pub const KIND: &str = "join_token";

/// Where the server's join tokens live (the datastore, through an adapter in the API).
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// Deletes `token` and returns its expiry (unix seconds), if it existed.
    ///
    /// # Errors
    /// The store failed.
    async fn take(&self, token: &str) -> Result<Option<i64>, AttestError>;
}

/// The agent side: the configured token, if any.
pub struct JoinTokenAgent {
    token: Option<zeroize::Zeroizing<String>>,
}

impl JoinTokenAgent {
    /// An attestor with `token` (`None`: the agent relies on a stored SVID).
    #[must_use]
    pub fn new(token: Option<String>) -> Self {
        Self { token: token.map(zeroize::Zeroizing::new) }
    }
}

impl AgentAttestor for JoinTokenAgent {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn payload(&self) -> Result<Vec<u8>, AttestError> {
        self.token.as_ref().map(|t| t.as_bytes().to_vec()).ok_or_else(|| {
            AttestError::InvalidArgument(
                "no stored agent SVID and no join_token configured: generate one with `cairn server token generate` and set agent.join_token"
                    .into(),
            )
        })
    }

    fn respond(&self, _challenge: &[u8]) -> Result<Vec<u8>, AttestError> {
        Err(AttestError::InvalidArgument("server sent a challenge to a join_token agent".into()))
    }

    fn can_reattest(&self) -> bool {
        false
    }
}

/// The server side.
pub struct JoinTokenServer {
    trust_domain: TrustDomain,
    tokens: Arc<dyn TokenStore>,
}

impl std::fmt::Debug for JoinTokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenServer").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl JoinTokenServer {
    /// Checks tokens against `tokens`.
    #[must_use]
    pub fn new(trust_domain: TrustDomain, tokens: Arc<dyn TokenStore>) -> Self {
        Self { trust_domain, tokens }
    }
}

#[async_trait::async_trait]
impl ServerAttestor for JoinTokenServer {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn attest(&self, payload: &[u8], _channel: &mut dyn ChallengeChannel, now: i64) -> Result<NodeIdentity, AttestError> {
        let token = std::str::from_utf8(payload).map_err(|_| AttestError::InvalidArgument("join token is not text".into()))?;
        let expires_at =
            self.tokens.take(token).await?.ok_or_else(|| {
                AttestError::InvalidArgument("failed to attest: join token does not exist or has already been used".into())
            })?;
        if expires_at < now {
            return Err(AttestError::InvalidArgument("failed to attest: join token expired".into()));
        }
        let agent_id = SpiffeId::from_segments(&self.trust_domain, &["spire", "agent", "join_token", token])
            .map_err(|e| AttestError::InvalidArgument(format!("failed to attest: token cannot form an agent ID: {e}")))?;
        Ok(NodeIdentity { agent_id, selectors: vec![], can_reattest: false })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    struct Tokens(Mutex<HashMap<String, i64>>);

    #[async_trait::async_trait]
    impl TokenStore for Tokens {
        async fn take(&self, token: &str) -> Result<Option<i64>, AttestError> {
            Ok(self.0.lock().unwrap().remove(token))
        }
    }

    struct NoChallenges;

    #[async_trait::async_trait]
    impl ChallengeChannel for NoChallenges {
        async fn challenge(&mut self, _c: Vec<u8>) -> Result<Vec<u8>, AttestError> {
            Err(AttestError::InvalidArgument("no challenges here".into()))
        }
    }

    #[tokio::test]
    async fn a_token_attests_once_and_not_after_expiry() {
        let td = TrustDomain::new("example.org").unwrap();
        let tokens = Arc::new(Tokens(Mutex::new(HashMap::from([("t1".to_owned(), 100), ("t2".to_owned(), 10)]))));
        let server = JoinTokenServer::new(td, tokens);
        let agent = JoinTokenAgent::new(Some("t1".into()));
        let id = server.attest(&agent.payload().unwrap(), &mut NoChallenges, 50).await.unwrap();
        assert_eq!(id.agent_id.as_str(), "spiffe://example.org/spire/agent/join_token/t1");
        assert!(!id.can_reattest && id.selectors.is_empty());
        let again = server.attest(b"t1", &mut NoChallenges, 50).await.unwrap_err();
        assert!(again.to_string().contains("does not exist or has already been used"), "{again}");
        let expired = server.attest(b"t2", &mut NoChallenges, 50).await.unwrap_err();
        assert_eq!(expired.to_string(), "failed to attest: join token expired");
        assert!(server.attest(&[0xff], &mut NoChallenges, 50).await.is_err());
        assert!(JoinTokenAgent::new(None).payload().is_err());
        assert!(agent.respond(b"c").is_err());
    }
}
