//! Access tokens: the [`Keyring`], [`AccessClaims`], issue and verify.
//! The only module that names `jsonwebtoken`.
//!
//! Verification order (RFC 8725): length cap → compact JWS shape with strict,
//! canonical base64url → header (`typ` = `at+jwt`, no `crit`, no `enc`, a `kid`
//! that exactly names a live key, `alg` equal to that key's one algorithm) →
//! signature → claims (iss, aud, sub, sid, jti, iat, nbf, exp) → time with
//! leeway. Header-embedded keys (`jwk`, `jku`, `x5u`, `x5c`) are never used:
//! the key always comes from the keyring.
//!
//! | file | what it holds |
//! |---|---|
//! | `claims.rs` | [`AccessClaims`] and its single-pass decoder, the reserved claim names, the `typ` header |
//! | `keyring.rs` | [`Keyring`]: keys, their algorithms and states, rotation (promote, retire, prune), JWKS export, signing |
//! | `persist.rs` | the key file: [`Keyring::save`] and [`Keyring::load`] |
//! | `verify.rs` | verification: compact shape, header, signature, claims, time ([`Keyring::verify_signature`] and the store's path) |
//!
//! Dependencies point one way: `verify` and `persist` use `keyring` and
//! `claims`; `keyring` uses `claims`; `claims` uses nothing here.

mod claims;
mod keyring;
mod persist;
mod verify;

pub use claims::AccessClaims;
pub(crate) use claims::RESERVED_CLAIMS;
pub use keyring::{Algorithm, KeyInfo, KeyState, Keyring};
pub(crate) use verify::Policy;
