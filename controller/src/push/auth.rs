//! Who is calling the push server: every stream carries a bearer token
//! (`authorization: Bearer TOKEN`), and an [`Authenticator`] turns it into the one Gateway
//! the caller may read.
//!
//! ```text
//!  data plane ──Stream + bearer token──► PushService ──► Authenticator::authenticate
//!                                                          │ Kubernetes: TokenReview of a
//!                                                          │   projected ServiceAccount token
//!                                                          │   (cluster/tokens.rs)
//!                                                          │ standalone/tests: StaticTokens
//!                                                          ▼
//!                               Caller{gateway, gateway UID, expires} ──► Hello.gateway must match
//! ```
//!
//! A stream ends when its token expires; the data plane reconnects with the token its
//! kubelet renewed meanwhile, so every stream runs on a valid credential.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::Status;

/// An authenticated data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The Gateway (`namespace/name`) it may read.
    pub gateway: String,
    /// The UID of the Gateway object its credential was issued for, when known: a
    /// credential of an earlier Gateway of the same name is refused.
    pub gateway_uid: Option<String>,
    /// When the credential expires; the stream ends then.
    pub expires_at: Option<SystemTime>,
}

/// Turns a bearer token into a [`Caller`], or refuses it.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// `Err` with `UNAUTHENTICATED` for a token that proves nothing, `PERMISSION_DENIED`
    /// for a valid one that may read no Gateway, `UNAVAILABLE` when it cannot be checked
    /// now (the data plane retries).
    async fn authenticate(&self, token: &str) -> Result<Caller, Status>;
}

/// The bearer token of a request's metadata, if any.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}

/// Tokens the controller made itself, one per Gateway (standalone mode, tests): random
/// 256-bit values kept only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct StaticTokens {
    digests: Arc<Mutex<BTreeMap<[u8; 32], String>>>,
}

impl StaticTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new token that reads `gateway`; the Gateway's earlier token stops working.
    pub fn issue(&self, gateway: &str) -> String {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut digests = self.lock();
        digests.retain(|_, issued_for| issued_for != gateway);
        digests.insert(digest(&token), gateway.to_string());
        token
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 32], String>> {
        self.digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[tonic::async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, Status> {
        match self.lock().get(&digest(token)) {
            Some(gateway) => Ok(Caller { gateway: gateway.clone(), gateway_uid: None, expires_at: None }),
            None => Err(Status::unauthenticated("unknown token")),
        }
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), read without verifying the
/// signature: only for a token already verified by its issuer (TokenReview).
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tokens_read_their_gateway_only() {
        let tokens = StaticTokens::new();
        let a = tokens.issue("team-a/web");
        let b = tokens.issue("team-b/web");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(tokens.authenticate(&a).await.unwrap().gateway, "team-a/web");
        assert_eq!(tokens.authenticate(&b).await.unwrap().gateway, "team-b/web");
        let refused = tokens.authenticate("0000").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        // A new token for a Gateway (its data plane restarted) retires the old one.
        let a2 = tokens.issue("team-a/web");
        assert_eq!(tokens.authenticate(&a2).await.unwrap().gateway, "team-a/web");
        assert_eq!(tokens.authenticate(&a).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(tokens.authenticate(&b).await.is_ok());
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&metadata), Some("abc.def"));
    }

    #[test]
    fn the_expiry_of_a_jwt_is_its_exp_claim() {
        use base64::Engine;
        let encode = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!("{}.{}.sig", encode(r#"{"alg":"RS256"}"#), encode(r#"{"exp":1800000000,"sub":"x"}"#));
        let expected = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(jwt_expiry(&token), Some(expected));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry(&format!("a.{}.c", encode(r#"{"sub":"x"}"#))), None);
    }
}
