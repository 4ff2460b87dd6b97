//! [`Store`]: the facade. Every public operation starts here and delegates to the
//! token parser, the session table (cache, revocation state and backend), the
//! refresh policy and the keyring.

mod access;
mod handle;
mod maintenance;
mod open;
mod revoke;
mod serials;
mod sessions;
mod tokens;

pub use access::{Principal, Source};
pub use handle::{Issued, Scope, Store};
#[cfg_attr(
    not(any(feature = "actix", feature = "tower-sessions", feature = "tower-sessions-015")),
    allow(unused_imports)
)]
pub(crate) use sessions::Creation;
pub use tokens::TokenPair;
