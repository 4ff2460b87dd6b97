//! Token formats: generate, encode, parse. No I/O here: this is the fuzz surface.
//!
//! Session token: `crs_` + base64url(id 16 B ‖ secret 32 B ‖ tag 4 B), 74 chars.
//! Refresh token: `crr_` + base64url(id 16 B ‖ generation 8 B ‖ key id 4 B ‖ MAC 32 B), 84 chars.
//!
//! The tag is SipHash-1-3 (a keyed PRF built for short inputs; the 128-bit key is
//! derived from the server key) over id ‖ secret, folded to 4 bytes. The store that issued a token checks
//! it before any lookup, so a typo, a truncated copy or a token forged without
//! the server key is refused in one hash, never reaching the cache, the index or
//! the disk. It is a filter, not the security boundary: the secret (compared as
//! a blake3 hash) and the refresh MAC are.
//!
//! Tokens issued before the tag (cloakroom 0.1 up to the keyed-tag change)
//! carried an unkeyed checksum in the same 4 bytes ([`TagState::Legacy`]). A
//! store accepts those only for sessions that existed when its file was first
//! opened by a tagging version, and only until the last of them expires.
//!
//! | file | what it holds |
//! |---|---|
//! | `layout.rs` | the byte layout (prefixes, lengths), strict base64url framing shared by every opaque token, a refresh counter's family ‖ generation bits |
//! | `secret.rs` | the OS CSPRNG, a session secret and its stored hash |
//! | `id.rs` | [`SessionId`] and the hasher of maps keyed by it |
//! | `tag.rs` | the keyed tag of session tokens and the legacy checksum |
//! | `session_token.rs` | [`SessionToken`]: generate, parse, display |
//! | `refresh_token.rs` | [`RefreshToken`]: parse, display, the bytes its MAC covers |
//!
//! Dependencies point one way: the token files use `tag`, `id`, `secret` and
//! `layout`; `tag` uses `id` and `secret`; `id` uses `secret` and `layout`.

mod id;
mod layout;
mod refresh_token;
mod secret;
mod session_token;
mod tag;

pub(crate) use id::IdHash;
pub use id::SessionId;
pub use layout::{REFRESH_PREFIX, REFRESH_TOKEN_LEN, SESSION_PREFIX, SESSION_TOKEN_LEN};
pub(crate) use layout::{looks_like_jwt, pack, unpack};
pub use refresh_token::RefreshToken;
pub(crate) use secret::{SecretHash, os_random};
pub use session_token::SessionToken;
pub(crate) use tag::{TagKey, TagState};
