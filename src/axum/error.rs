//! The web layer's error, as an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Why a request was refused. Converts into a response with a clear body;
/// never includes a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// No valid credential (missing, malformed, unknown, expired, revoked):
    /// 401, or a 303 redirect to the login page for page navigations.
    #[error("authentication required")]
    Unauthenticated {
        /// Where a page navigation is sent (see [`super::Unauthenticated`]).
        redirect: Option<String>,
    },
    /// A session cookie and a bearer credential name different sessions: 401.
    #[error("the session cookie and the bearer credential disagree")]
    CredentialsDisagree,
    /// The CSRF checks refused the request (403); the reason is the body.
    #[error("CSRF check failed: {0}")]
    Csrf(&'static str),
    /// The resource belongs to another user (403).
    #[error("forbidden")]
    Forbidden,
    /// A credential header (`Cookie`, `Authorization`) is too large (431).
    #[error("credential header too large")]
    HeaderTooLarge,
    /// A form body is too large to look for its CSRF field (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// The store's write queue is full (503, retry).
    #[error("busy, retry")]
    Busy,
    /// A refresh token was replayed; the session is revoked (401).
    #[error("refresh token reuse detected; signed out")]
    ReuseDetected,
    /// Bad input from the application (400), e.g. an invalid user id.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The store failed (500); the request had no effect for durable writes.
    #[error("internal error: {0}")]
    Store(Error),
    /// The web layer is misconfigured (500). (A store call whose blocking-pool
    /// task failed is a `Store` error of kind `Io`, also 500.)
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<Error> for WebError {
    fn from(e: Error) -> Self {
        match e {
            Error::Malformed(_) | Error::NotFound | Error::Expired | Error::Revoked | Error::Jwt(_) => {
                WebError::Unauthenticated { redirect: None }
            }
            Error::ReuseDetected => WebError::ReuseDetected,
            Error::Busy => WebError::Busy,
            Error::Input(i) => WebError::BadRequest(i.to_string()),
            other => WebError::Store(other),
        }
    }
}

impl WebError {
    /// Did the store refuse the presented credential itself (so the client
    /// should drop it), as opposed to failing to answer (busy, storage, closed)?
    pub(crate) fn refuses_credential(&self) -> bool {
        matches!(self, WebError::Unauthenticated { .. } | WebError::ReuseDetected)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::Unauthenticated { redirect: Some(to) } => {
                let mut r = StatusCode::SEE_OTHER.into_response();
                if let Ok(v) = HeaderValue::from_str(to) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                return r;
            }
            WebError::Unauthenticated { redirect: None } | WebError::CredentialsDisagree | WebError::ReuseDetected => {
                StatusCode::UNAUTHORIZED
            }
            WebError::Csrf(_) | WebError::Forbidden => StatusCode::FORBIDDEN,
            WebError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            WebError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Store(_) | WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = (status, self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}
