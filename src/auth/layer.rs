//! The one place where calls are authenticated and authorized: a tower
//! layer in front of tonic's routes (gRPC, and gRPC-Web once translated)
//! and of the task service the REST gateway calls in process, so every
//! call is decided by its gRPC path, whichever way it came.
//!
//! It sits inside the RPC layer, so a refused call has its request id, its
//! metrics and its log line like any other. Without principals the layer
//! passes each call straight to the service: one branch, no allocation.

use std::{
    future::Ready,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::Either;
use http::{HeaderMap, Request, Response, header::AUTHORIZATION};
use tonic::Status;
use tower::{Layer, Service};
use tracing::info;

use super::{
    SecurityError,
    access::{self, Access},
    peer::PeerInfo,
    principals::{Principal, Principals, Role},
    reload::{self, Current},
};

/// The principals and the rules, shared by every connection.
#[derive(Debug)]
pub struct Authenticator {
    principals: Arc<Current<Principals>>,
    /// `auth.protect_reflection`: reflection needs a principal too.
    protect_reflection: bool,
    /// Whether clients present certificates, for the words of a refusal.
    mtls: bool,
}

/// Why a call was refused. The words say what was wrong with the call,
/// never which tokens or principals exist.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token: send the metadata (or HTTP header) `authorization: Bearer <token>`")]
    NoCredentials,
    #[error("no bearer token and no client certificate naming a principal")]
    NoCredentialsWithCertificates,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("unknown token")]
    UnknownToken,
    #[error("the client certificate's subject {subject} names no principal")]
    UnknownSubject { subject: String },
    #[error("principal {principal} lacks role {role} for {method}")]
    MissingRole {
        principal: String,
        role: Role,
        method: String,
    },
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::MissingRole { .. } => Status::permission_denied(refusal.to_string()),
            _ => Status::unauthenticated(refusal.to_string()),
        }
    }
}

impl Authenticator {
    /// Reads the principals file and follows it for changes.
    pub fn load(path: &Path, protect_reflection: bool, mtls: bool) -> Result<Self, SecurityError> {
        let bytes = std::fs::read(path).map_err(|source| SecurityError::Read {
            what: "principals file",
            path: path.to_owned(),
            source,
        })?;
        let principals = parse(&bytes).map_err(|source| SecurityError::Principals {
            path: path.to_owned(),
            source,
        })?;
        let principals = Arc::new(Current::new(principals));
        reload::follow(
            "principals file",
            vec![PathBuf::from(path)],
            vec![bytes],
            &principals,
            |files| {
                files
                    .first()
                    .map_or(Ok(Principals::default()), |bytes| parse(bytes))
                    .map_err(|error| error.to_string())
            },
        );
        Ok(Self {
            principals,
            protect_reflection,
            mtls,
        })
    }

    /// With principals already parsed, and no file behind them.
    pub fn new(principals: Principals, protect_reflection: bool, mtls: bool) -> Self {
        Self {
            principals: Arc::new(Current::new(principals)),
            protect_reflection,
            mtls,
        }
    }

    /// Decides a call to `path`: `Ok(None)` for an open service,
    /// `Ok(Some(principal))` when the caller may make it.
    pub fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let needed = match access::access(path) {
            Access::Open => return Ok(None),
            Access::Reflection if !self.protect_reflection => return Ok(None),
            Access::Reflection => None,
            Access::Role(role) => Some(role),
        };
        let principal = self.authenticate(headers, peer)?;
        if let Some(role) = needed
            && !principal.may(role)
        {
            return Err(Refusal::MissingRole {
                principal: principal.name.clone(),
                role,
                method: access::method_name(path).to_owned(),
            });
        }
        Ok(Some(principal))
    }

    /// The principal a bearer token names, or without one, the client
    /// certificate's subject.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Arc<Principal>, Refusal> {
        let principals = self.principals.get();
        if let Some(value) = headers.get(AUTHORIZATION) {
            let token = bearer_token(value.as_bytes()).ok_or(Refusal::NotBearer)?;
            return principals.by_token(token).ok_or(Refusal::UnknownToken);
        }
        match peer.and_then(|peer| peer.certificate_subject.as_deref()) {
            Some(subject) => principals
                .by_name(subject)
                .ok_or_else(|| Refusal::UnknownSubject {
                    subject: subject.to_owned(),
                }),
            None if self.mtls => Err(Refusal::NoCredentialsWithCertificates),
            None => Err(Refusal::NoCredentials),
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Principals, super::PrincipalsError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| super::PrincipalsError::Syntax("the file is not UTF-8".into()))?;
    Principals::parse(text)
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235), or
/// `None` for another scheme or an empty token.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The layer: with an authenticator, every call is decided; without, none.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    authenticator: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub fn new(authenticator: Option<Arc<Authenticator>>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Option<Arc<Authenticator>>,
}

impl<S, RequestBody> Service<Request<RequestBody>> for AuthService<S>
where
    S: Service<Request<RequestBody>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let Some(authenticator) = &self.authenticator else {
            return Either::Left(self.inner.call(request));
        };
        let decision = authenticator.authorize(
            request.uri().path(),
            request.headers(),
            request.extensions().get::<PeerInfo>(),
        );
        match decision {
            Ok(None) => Either::Left(self.inner.call(request)),
            Ok(Some(principal)) => {
                if access::audited(request.uri().path()) {
                    audit(&request, &principal);
                }
                request.extensions_mut().insert(principal);
                Either::Left(self.inner.call(request))
            }
            Err(refusal) => {
                Either::Right(std::future::ready(Ok(Status::from(refusal).into_http())))
            }
        }
    }
}

/// The audit line of a call that creates, cancels or deletes: who, as
/// which tenant, which RPC; the request id ties it to the call's own line
/// (and the task it names, at debug).
fn audit<B>(request: &Request<B>, principal: &Principal) {
    let request_id = request
        .headers()
        .get(crate::server::rpc_layer::REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    info!(
        principal = %principal.name,
        tenant = %principal.tenant,
        method = access::method_name(request.uri().path()),
        request_id,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::auth::token_sha256_hex;

    fn authenticator(protect_reflection: bool) -> Authenticator {
        let text = format!(
            "principals:\n  - name: alice\n    token_sha256: {}\n    roles: [read]\n\
             \x20 - name: spiffe://example/worker\n    roles: [work]\n",
            token_sha256_hex("alice-token")
        );
        Authenticator::new(
            Principals::parse(&text).expect("valid"),
            protect_reflection,
            false,
        )
    }

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    const GET: &str = "/taskprocessor.v1.TaskService/GetTask";
    const CREATE: &str = "/taskprocessor.v1.TaskService/CreateTask";

    #[test]
    fn tokens_roles_and_open_services() {
        let auth = authenticator(false);
        let alice = auth
            .authorize(GET, &with_authorization("Bearer alice-token"), None)
            .expect("allowed")
            .expect("a principal");
        assert_eq!(alice.name, "alice");
        assert!(
            auth.authorize(GET, &with_authorization("bearer  alice-token "), None)
                .is_ok(),
            "the scheme in any case"
        );
        assert_eq!(
            auth.authorize(CREATE, &with_authorization("Bearer alice-token"), None),
            Err(Refusal::MissingRole {
                principal: "alice".into(),
                role: Role::Write,
                method: "CreateTask".into()
            })
        );
        assert_eq!(
            auth.authorize(GET, &HeaderMap::new(), None),
            Err(Refusal::NoCredentials)
        );
        assert_eq!(
            auth.authorize(GET, &with_authorization("Bearer nope"), None),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(
            auth.authorize(GET, &with_authorization("Basic YTpi"), None),
            Err(Refusal::NotBearer)
        );
        assert_eq!(
            auth.authorize(GET, &with_authorization("Bearer "), None),
            Err(Refusal::NotBearer)
        );
        assert_eq!(
            auth.authorize("/grpc.health.v1.Health/Check", &HeaderMap::new(), None),
            Ok(None)
        );
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(
            auth.authorize(reflection, &HeaderMap::new(), None),
            Ok(None)
        );
        let protected = authenticator(true);
        assert_eq!(
            protected.authorize(reflection, &HeaderMap::new(), None),
            Err(Refusal::NoCredentials)
        );
        assert!(
            protected
                .authorize(reflection, &with_authorization("Bearer alice-token"), None)
                .is_ok()
        );
    }

    #[test]
    fn a_certificate_subject_names_a_principal() {
        let auth = authenticator(false);
        let peer = |subject: &str| PeerInfo {
            certificate_subject: Some(Arc::from(subject)),
            ..PeerInfo::default()
        };
        let worker_call = "/taskprocessor.v1.WorkerService/Anything";
        let worker = auth
            .authorize(
                worker_call,
                &HeaderMap::new(),
                Some(&peer("spiffe://example/worker")),
            )
            .expect("allowed")
            .expect("a principal");
        assert_eq!(worker.name, "spiffe://example/worker");
        assert_eq!(
            auth.authorize(GET, &HeaderMap::new(), Some(&peer("mallory"))),
            Err(Refusal::UnknownSubject {
                subject: "mallory".into()
            })
        );
        assert!(matches!(
            auth.authorize(
                GET,
                &HeaderMap::new(),
                Some(&peer("spiffe://example/worker"))
            ),
            Err(Refusal::MissingRole { .. })
        ));
    }

    #[test]
    fn refusals_become_the_contract_codes() {
        assert_eq!(
            Status::from(Refusal::UnknownToken).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Status::from(Refusal::NoCredentials).code(),
            tonic::Code::Unauthenticated
        );
        let missing = Refusal::MissingRole {
            principal: "alice".into(),
            role: Role::Write,
            method: "CreateTask".into(),
        };
        assert_eq!(
            missing.to_string(),
            "principal alice lacks role write for CreateTask"
        );
        assert_eq!(Status::from(missing).code(), tonic::Code::PermissionDenied);
    }
}
