//! [`Web`]: the web layer's state (the store and the cookie and CSRF
//! settings) that handlers and the middleware share, and the helper that runs
//! a blocking store call off the runtime's worker threads.

use std::sync::Arc;

use super::config::WebConfig;
use super::csrf;
use super::error::WebError;
use crate::error::Error;
use crate::store::Store;

/// The web layer's state: the store, the cookie and CSRF settings, and the
/// CSRF key. Cheap to clone (shared); use it as (part of) the router state.
#[derive(Clone)]
pub struct Web {
    inner: Arc<WebInner>,
}

struct WebInner {
    store: Store,
    config: WebConfig,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Web {
    /// Wraps a store with web settings.
    ///
    /// # Errors
    /// [`Error::Config`] for cookie settings a browser would drop or that
    /// weaken the defaults without [`WebConfig::insecure_dev_mode_plain_http`].
    pub fn new(store: Store, config: WebConfig) -> Result<Web, Error> {
        config.check()?;
        Ok(Web { inner: Arc::new(WebInner { store, config }) })
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &WebConfig {
        &self.inner.config
    }

    /// The CSRF token of a session as it is now (what [`Auth::csrf_token`](super::Auth::csrf_token)
    /// returns for it): bound to its id and serial, so it changes when the
    /// session is rotated.
    #[must_use]
    pub fn csrf_token(&self, session: &crate::session::Session) -> String {
        csrf::token(self.inner.store.csrf_key(), &session.id(), session.serial())
    }
}

/// Runs a blocking store call on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, WebError> {
    crate::blocking::run(f).await.map_err(WebError::from)
}
