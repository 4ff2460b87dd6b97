//! Sealed row encodings shared by both backends: the row-authentication tag
//! ([`mac`]: keyed blake3 under a key derived from the server key, over the
//! table, the row key and the value) and the codecs of the rows it seals
//! ([`rows`]: sessions, refresh families, revocations, not-before cut-offs,
//! user-revocation markers). redb stores them as table values, Redis as hash
//! fields; a row copied to another table or key, or written under another
//! server key, fails.

pub(crate) mod mac;
pub(crate) mod rows;
