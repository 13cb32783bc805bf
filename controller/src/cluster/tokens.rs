//! Data planes in a cluster authenticate with a projected ServiceAccount token (audience
//! [`PUSH_AUDIENCE`], bound to their pod, renewed by the kubelet). The push server asks
//! the API server whether the token is valid (TokenReview), then reads the token's
//! ServiceAccount: the one Sluice made for a Gateway, owned by that Gateway object. So the
//! controller writes no credentials anywhere, and a token stops working when its pod or
//! its ServiceAccount goes (a Gateway deleted and created again gets a new
//! ServiceAccount, whose UID the old tokens do not carry).
//!
//! ```text
//!  bearer token ──TokenReview(audience sluice.dev/push)──► user system:serviceaccount:NS:SA,
//!                                                          uid = the SA's UID, pod-bound
//!     GET ServiceAccount NS/SA ──► same UID, managed by Sluice, owned by Gateway NS/NAME (UID)
//!                                ──► Caller{NS/NAME, Gateway UID, token expiry}
//! ```

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::Status;

use crate::push::auth::{Authenticator, Caller, jwt_expiry};

/// The audience of the tokens data planes present to the push server (a token for any
/// other audience, e.g. the API server's, is refused).
pub const PUSH_AUDIENCE: &str = "sluice.dev/push";

/// The claim that shows a token is bound to a pod (the API server checks that the pod
/// still exists).
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Longer bearer tokens are refused without asking the API server.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Checks push tokens with the API server.
pub struct TokenReviewer {
    client: Client,
}

impl TokenReviewer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// The ServiceAccount (namespace, name, UID) a successful review names.
#[derive(Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    pub uid: String,
}

/// What a TokenReview's status says of a push token.
pub fn reviewed(status: &TokenReviewStatus) -> Result<Reviewed, Status> {
    if status.authenticated != Some(true) {
        let why = status.error.clone().unwrap_or_else(|| "not authenticated".into());
        return Err(Status::unauthenticated(format!("the token was refused: {why}")));
    }
    if !status.audiences.iter().flatten().any(|a| a == PUSH_AUDIENCE) {
        return Err(Status::unauthenticated(format!("the token is not for audience {PUSH_AUDIENCE}")));
    }
    let user = status.user.as_ref().ok_or_else(|| Status::unauthenticated("the review names no user"))?;
    let username = user.username.as_deref().unwrap_or_default();
    let Some((namespace, service_account)) =
        username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'))
    else {
        return Err(Status::permission_denied(format!("{username} is not a ServiceAccount")));
    };
    let bound = user.extra.as_ref().and_then(|extra| extra.get(POD_NAME_EXTRA)).is_some_and(|v| !v.is_empty());
    if !bound {
        return Err(Status::permission_denied("the token is not bound to a pod"));
    }
    let uid = user.uid.clone().filter(|uid| !uid.is_empty()).ok_or_else(|| Status::unauthenticated("no UID"))?;
    Ok(Reviewed { namespace: namespace.into(), service_account: service_account.into(), uid })
}

/// The Gateway (`namespace/name`, UID) whose data planes run as `account`, if `account`
/// is the reviewed ServiceAccount and one Sluice made for a Gateway.
pub fn gateway_of(account: &ServiceAccount, reviewed: &Reviewed) -> Result<(String, String), Status> {
    let meta = &account.metadata;
    if meta.uid.as_deref() != Some(reviewed.uid.as_str()) {
        return Err(Status::permission_denied("the token's ServiceAccount was replaced"));
    }
    let ours = meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).is_some_and(|v| v == "sluice");
    let owner = meta.owner_references.iter().flatten().find(|r| {
        r.kind == "Gateway" && r.api_version.starts_with("gateway.networking.k8s.io/") && r.controller == Some(true)
    });
    match owner {
        Some(owner) if ours => Ok((format!("{}/{}", reviewed.namespace, owner.name), owner.uid.clone())),
        _ => Err(Status::permission_denied(format!(
            "ServiceAccount {}/{} is not a Sluice data plane's",
            reviewed.namespace, reviewed.service_account
        ))),
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, Status> {
        // Only what could be a ServiceAccount token costs the API server a review.
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(Status::unauthenticated("the token is not a ServiceAccount token"));
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![PUSH_AUDIENCE.to_string()]) },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("cannot review the token now: {e}")))?;
        let reviewed = reviewed(&answer.status.unwrap_or_default())?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &reviewed.namespace);
        let account = accounts
            .get_opt(&reviewed.service_account)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the token's ServiceAccount now: {e}")))?
            .ok_or_else(|| Status::permission_denied("the token's ServiceAccount is gone"))?;
        let (gateway, gateway_uid) = gateway_of(&account, &reviewed)?;
        Ok(Caller { gateway, gateway_uid: Some(gateway_uid), expires_at: jwt_expiry(token) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn status(username: &str, audience: &str, pod_bound: bool) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![audience.into()]),
            user: Some(UserInfo {
                username: Some(username.into()),
                uid: Some("sa-uid".into()),
                extra: pod_bound.then(|| [(POD_NAME_EXTRA.to_string(), vec!["web-abc".to_string()])].into()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_review_must_name_a_pod_bound_service_account_token_for_the_push_audience() {
        let ok = reviewed(&status("system:serviceaccount:team-a:web-sluice", PUSH_AUDIENCE, true)).unwrap();
        assert_eq!(
            ok,
            Reviewed { namespace: "team-a".into(), service_account: "web-sluice".into(), uid: "sa-uid".into() }
        );
        let code = |s: TokenReviewStatus| reviewed(&s).unwrap_err().code();
        assert_eq!(
            code(status("system:serviceaccount:team-a:web", "https://kubernetes.default.svc", true)),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(status("system:serviceaccount:team-a:web", PUSH_AUDIENCE, false)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code(status("alice", PUSH_AUDIENCE, true)), tonic::Code::PermissionDenied);
        let refused =
            TokenReviewStatus { authenticated: Some(false), error: Some("expired".into()), ..Default::default() };
        assert!(reviewed(&refused).unwrap_err().message().contains("expired"));
    }

    fn account(uid: &str, managed: bool, owner: Option<(&str, &str)>) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some("web-sluice".into()),
                namespace: Some("team-a".into()),
                uid: Some(uid.into()),
                labels: managed.then(|| [("app.kubernetes.io/managed-by".to_string(), "sluice".to_string())].into()),
                owner_references: owner.map(|(name, uid)| {
                    vec![OwnerReference {
                        api_version: "gateway.networking.k8s.io/v1".into(),
                        kind: "Gateway".into(),
                        name: name.into(),
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_service_account_names_the_gateway_that_owns_it() {
        let reviewed =
            Reviewed { namespace: "team-a".into(), service_account: "web-sluice".into(), uid: "sa-uid".into() };
        let gateway = gateway_of(&account("sa-uid", true, Some(("web", "gw-uid"))), &reviewed).unwrap();
        assert_eq!(gateway, ("team-a/web".to_string(), "gw-uid".to_string()));
        // Replaced since the token was issued, not Sluice's, or owned by no Gateway.
        for refused in [
            account("other-uid", true, Some(("web", "gw-uid"))),
            account("sa-uid", false, Some(("web", "gw-uid"))),
            account("sa-uid", true, None),
        ] {
            assert_eq!(gateway_of(&refused, &reviewed).unwrap_err().code(), tonic::Code::PermissionDenied);
        }
    }
}
