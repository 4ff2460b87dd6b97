//! CSRF defence for cookie-authenticated unsafe requests: a session-bound
//! synchronizer token, and the `Origin` / `Sec-Fetch-Site` checks.

use axum::http::{HeaderMap, Method, header};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::config::WebConfig;
use crate::token::SessionId;

/// The header that carries the token (for `fetch` / XHR callers).
pub(crate) const HEADER: &str = "x-csrf-token";
/// The form field that carries the token (for HTML forms).
pub(crate) const FIELD: &str = "csrf_token";

/// Methods that change state and so need the checks.
pub(crate) fn is_unsafe(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The session's token: base64url of a keyed blake3 hash of its id and its
/// current serial. `Store::rotate` keeps the id but changes the serial, so a
/// rotation (privilege change) retires the token along with the old session
/// token: whoever knew the token before (a session-fixation attacker) no
/// longer has a valid one.
pub(crate) fn token(key: &[u8; 32], session: &SessionId, serial: u64) -> String {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"csrf v2\0");
    h.update(session.as_bytes());
    h.update(&serial.to_le_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize().as_bytes())
}

/// Does `presented` equal the session's token? Constant time in the token bytes.
pub(crate) fn matches(key: &[u8; 32], session: &SessionId, serial: u64, presented: &str) -> bool {
    let expected = token(key, session, serial);
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Does the `x-csrf-token` header hold the session's token? `None` without the header.
pub(crate) fn header_matches(key: &[u8; 32], session: &SessionId, serial: u64, headers: &HeaderMap) -> Option<bool> {
    let t = headers.get(HEADER)?;
    Some(t.to_str().is_ok_and(|t| matches(key, session, serial, t)))
}

/// Why a request was refused (the 403 body says it).
pub(crate) fn origin_problem(headers: &HeaderMap, config: &WebConfig) -> Option<&'static str> {
    if headers.get_all("sec-fetch-site").iter().count() > 1 || headers.get_all(header::ORIGIN).iter().count() > 1 {
        return Some("repeated Origin or Sec-Fetch-Site header");
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: typed into the address bar or a bookmark; never a cross-site form.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some("cross-site request refused (Sec-Fetch-Site)");
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else { return Some("unreadable Origin header") };
    if config.allowed_origins.is_empty() {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return Some("Origin sent without a Host header");
        };
        let scheme = if config.insecure_dev { "http://" } else { "https://" };
        if origin.strip_prefix(scheme) == Some(host) {
            return None;
        }
    } else if config.allowed_origins.iter().any(|o| o == origin) {
        return None;
    }
    Some("cross-origin request refused (Origin)")
}

/// The `csrf_token` field of an urlencoded form body, if present.
pub(crate) fn form_field(body: &[u8]) -> Option<String> {
    form_urlencoded_pairs(body).find(|(k, _)| k == FIELD).map(|(_, v)| v)
}

/// Minimal `application/x-www-form-urlencoded` decoding (`+` and `%XX`).
fn form_urlencoded_pairs(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    body.split(|&b| b == b'&').filter(|p| !p.is_empty()).map(|pair| {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let k = decode(kv.next().unwrap_or_default());
        let v = decode(kv.next().unwrap_or_default());
        (k, v)
    })
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_session_its_serial_and_the_key() {
        let (a, b) = (SessionId::from_bytes([1; 16]), SessionId::from_bytes([2; 16]));
        let t = token(&[7; 32], &a, 5);
        assert!(matches(&[7; 32], &a, 5, &t));
        assert!(!matches(&[7; 32], &b, 5, &t));
        assert!(!matches(&[7; 32], &a, 6, &t), "a rotated session (new serial) has a new token");
        assert!(!matches(&[8; 32], &a, 5, &t));
        assert!(!matches(&[7; 32], &a, 5, &t[1..]));
        assert!(!matches(&[7; 32], &a, 5, ""));
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(form_field(b"a=1&csrf_token=x%2By+z&b=2").as_deref(), Some("x+y z"));
        assert_eq!(form_field(b"csrf_token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(form_field(b"a=1"), None);
        assert_eq!(form_field(b"csrf_token").as_deref(), Some(""));
    }

    #[test]
    fn origins() {
        let c = WebConfig::default();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "app.example".parse().unwrap());
        assert_eq!(origin_problem(&h, &c), None, "no Origin, no Sec-Fetch-Site: the token decides");
        h.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert_eq!(origin_problem(&h, &c), None);
        h.insert(header::ORIGIN, "http://app.example".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some(), "http origin for an https app");
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert_eq!(origin_problem(&h, &c), None);
        let c = WebConfig::default().allowed_origin("https://spa.example");
        h.insert(header::ORIGIN, "https://spa.example".parse().unwrap());
        assert_eq!(origin_problem(&h, &c), None);
        h.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some(), "the listed origins replace the Host rule");
        h.append(header::ORIGIN, "https://spa.example".parse().unwrap());
        assert!(origin_problem(&h, &c).is_some(), "two Origin headers");
    }
}
