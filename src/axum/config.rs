//! Settings of the web layer: cookies, CSRF origins, what an unauthenticated
//! request gets.

use axum_extra::extract::cookie::{Cookie, SameSite};

use crate::error::Error;

/// The attributes of one cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// Cookie name. A `__Host-` name requires `secure`, `path = "/"` and no
    /// domain; a `__Secure-` name requires `secure` (the browser enforces both).
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute; `None` (the default) makes a host-only cookie.
    pub domain: Option<String>,
    /// `Secure` attribute (sent over HTTPS only).
    pub secure: bool,
    /// `HttpOnly` attribute (invisible to page scripts).
    pub http_only: bool,
    /// `SameSite` attribute.
    pub same_site: SameSite,
}

impl CookieSettings {
    fn new(name: &str, path: &str) -> Self {
        Self {
            name: name.to_owned(),
            path: path.to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
        }
    }

    /// A cookie with these attributes, living until `expires` (`now` from the store's clock).
    pub(crate) fn build(
        &self,
        value: String,
        expires: std::time::SystemTime,
        now: std::time::SystemTime,
    ) -> Cookie<'static> {
        let max_age = expires.duration_since(now).unwrap_or_default();
        let mut c = Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .max_age(cookie_duration(max_age))
            .build();
        if let Some(d) = &self.domain {
            c.set_domain(d.clone());
        }
        c
    }

    /// The cookie that deletes this one (same name, path and domain; expired).
    pub(crate) fn removal(&self) -> Cookie<'static> {
        let mut c = Cookie::build((self.name.clone(), ""))
            .path(self.path.clone())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site)
            .max_age(cookie_duration(std::time::Duration::ZERO))
            .build();
        if let Some(d) = &self.domain {
            c.set_domain(d.clone());
        }
        c
    }

    fn check(&self, what: &str, insecure_dev: bool) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::Config(format!("{what} cookie {:?}: {why}", self.name)));
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return bad("the name must be non-empty ASCII letters, digits, '-', '_' or '.'");
        }
        if !self.path.starts_with('/') {
            return bad("the path must start with '/'");
        }
        if self.name.starts_with("__Host-") && (!self.secure || self.path != "/" || self.domain.is_some()) {
            return bad("a __Host- cookie must be Secure, have Path=/ and no Domain, or browsers drop it");
        }
        if self.name.starts_with("__Secure-") && !self.secure {
            return bad("a __Secure- cookie must be Secure, or browsers drop it");
        }
        if !insecure_dev && (!self.secure || !self.http_only) {
            return bad("Secure and HttpOnly may only be switched off with WebConfig::insecure_dev_mode_plain_http()");
        }
        if self.same_site == SameSite::None && !self.secure {
            return bad("SameSite=None requires Secure");
        }
        Ok(())
    }
}

fn cookie_duration(d: std::time::Duration) -> cookie::time::Duration {
    cookie::time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a request without a valid credential gets from the [`crate::axum::Auth`] extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    /// 401 with a `WWW-Authenticate: Bearer` header (APIs). The default.
    Status,
    /// A page navigation (a `GET`/`HEAD` whose `Accept` includes `text/html`)
    /// is redirected (303) to this path; anything else gets 401.
    RedirectPages(String),
}

/// The web layer's settings. Start from `WebConfig::default()` (production:
/// HTTPS cookies) and change what you need.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub(crate) session: CookieSettings,
    pub(crate) refresh: CookieSettings,
    pub(crate) unauthenticated: Unauthenticated,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) insecure_dev: bool,
    pub(crate) max_form_bytes: usize,
    pub(crate) max_credential_header_bytes: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            session: CookieSettings::new("__Host-session", "/"),
            refresh: CookieSettings::new("__Secure-refresh", "/auth/refresh"),
            unauthenticated: Unauthenticated::Status,
            allowed_origins: Vec::new(),
            insecure_dev: false,
            max_form_bytes: 64 * 1024,
            max_credential_header_bytes: 8 * 1024,
        }
    }
}

impl WebConfig {
    /// Plain-HTTP development: cookies without `Secure` (and so without the
    /// `__Host-`/`__Secure-` prefixes: `session`, `refresh`). Never in
    /// production: anyone on the network path can read the cookies.
    #[must_use]
    pub fn insecure_dev_mode_plain_http(mut self) -> Self {
        self.insecure_dev = true;
        for (c, name) in [(&mut self.session, "session"), (&mut self.refresh, "refresh")] {
            c.secure = false;
            if c.name.starts_with("__Host-") || c.name.starts_with("__Secure-") {
                c.name = name.to_owned();
            }
        }
        self
    }

    /// The session cookie's attributes.
    #[must_use]
    pub fn session_cookie(mut self, settings: CookieSettings) -> Self {
        self.session = settings;
        self
    }

    /// The refresh cookie's attributes (its path should be the refresh endpoint's).
    #[must_use]
    pub fn refresh_cookie(mut self, settings: CookieSettings) -> Self {
        self.refresh = settings;
        self
    }

    /// The current session cookie settings (to change one attribute).
    #[must_use]
    pub fn session_cookie_settings(&self) -> &CookieSettings {
        &self.session
    }

    /// The current refresh cookie settings.
    #[must_use]
    pub fn refresh_cookie_settings(&self) -> &CookieSettings {
        &self.refresh
    }

    /// What a request without a valid credential gets.
    #[must_use]
    pub fn unauthenticated(mut self, u: Unauthenticated) -> Self {
        self.unauthenticated = u;
        self
    }

    /// Allows unsafe requests whose `Origin` is `origin` (e.g.
    /// `https://app.example.com`). With none configured, the `Origin` must be
    /// the request's own `Host` (over `https`, or `http` in insecure dev mode).
    #[must_use]
    pub fn allowed_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Largest form body read to find a `csrf_token` field (default 64 KiB);
    /// a larger form without the header token is refused with 413.
    #[must_use]
    pub fn max_form_bytes(mut self, n: usize) -> Self {
        self.max_form_bytes = n;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        self.session.check("session", self.insecure_dev)?;
        self.refresh.check("refresh", self.insecure_dev)?;
        if self.session.name == self.refresh.name {
            return Err(Error::Config("the session and refresh cookies need different names".into()));
        }
        if let Unauthenticated::RedirectPages(p) = &self.unauthenticated
            && (!p.starts_with('/') || p.starts_with("//"))
        {
            return Err(Error::Config(format!("redirect target {p:?} must be a local path")));
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("https://") || (self.insecure_dev && o.starts_with("http://"))) || o.ends_with('/') {
                return Err(Error::Config(format!(
                    "allowed origin {o:?} must be scheme://host[:port] over https (http only in insecure dev mode)"
                )));
            }
        }
        Ok(())
    }
}
