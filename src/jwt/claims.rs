//! The claims of an access token and the names the application may not set.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The `typ` header of access tokens (RFC 9068).
pub(crate) const ACCESS_TYP: &str = "at+jwt";

/// The claims of a cloakroom access token (RFC 9068 profile).
///
/// Deserialization is single-pass and rejects duplicate registered claims.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessClaims {
    /// Issuer (`Config::issuer`).
    pub iss: String,
    /// Audience (`Config::audience`).
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// The session serial the token is bound to; revocation is keyed on it.
    pub sid: u64,
    /// Unique token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expires (Unix seconds).
    pub exp: u64,
    /// Application claims given at issue time (e.g. `roles`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for AccessClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, Visitor};

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccessClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JWT claims object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AccessClaims, A::Error> {
                fn set<T, E: serde::de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
                    if slot.replace(v).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let (mut iss, mut aud, mut sub, mut jti) = (None, None, None, None);
                let (mut sid, mut iat, mut nbf, mut exp) = (None, None, None, None);
                let mut extra = BTreeMap::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*k {
                        "iss" => set(&mut iss, m.next_value::<String>()?, "iss")?,
                        "aud" => set(&mut aud, m.next_value::<String>()?, "aud")?,
                        "sub" => set(&mut sub, m.next_value::<String>()?, "sub")?,
                        "jti" => set(&mut jti, m.next_value::<String>()?, "jti")?,
                        "sid" => set(&mut sid, m.next_value::<u64>()?, "sid")?,
                        "iat" => set(&mut iat, m.next_value::<u64>()?, "iat")?,
                        "nbf" => set(&mut nbf, m.next_value::<u64>()?, "nbf")?,
                        "exp" => set(&mut exp, m.next_value::<u64>()?, "exp")?,
                        _ => {
                            let v = m.next_value::<serde_json::Value>()?;
                            if extra.insert(k.into_owned(), v).is_some() {
                                return Err(A::Error::custom("duplicate claim"));
                            }
                        }
                    }
                }
                Ok(AccessClaims {
                    iss: iss.ok_or_else(|| A::Error::missing_field("iss"))?,
                    aud: aud.ok_or_else(|| A::Error::missing_field("aud"))?,
                    sub: sub.ok_or_else(|| A::Error::missing_field("sub"))?,
                    sid: sid.ok_or_else(|| A::Error::missing_field("sid"))?,
                    jti: jti.ok_or_else(|| A::Error::missing_field("jti"))?,
                    iat: iat.ok_or_else(|| A::Error::missing_field("iat"))?,
                    nbf: nbf.ok_or_else(|| A::Error::missing_field("nbf"))?,
                    exp: exp.ok_or_else(|| A::Error::missing_field("exp"))?,
                    extra,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Claim names the application may not set.
pub(crate) const RESERVED_CLAIMS: [&str; 8] = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp"];
