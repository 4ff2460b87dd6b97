//! Entry points for fuzz targets (`fuzz/fuzz_targets`). Not part of the
//! API; may change at any time.

/// Parses a session token from raw bytes.
pub fn parse_session_token(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::token::SessionToken::parse(s);
    }
}
/// Parses a refresh token from raw bytes.
pub fn parse_refresh_token(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::token::RefreshToken::parse(s);
    }
}
/// Decodes a stored session record; a record that decodes must re-encode to the same bytes.
pub fn decode_record(data: &[u8]) {
    if let Ok(r) = crate::session::Record::decode(crate::token::SessionId::from_bytes([0; 16]), data) {
        // Canonical IP text may differ from the input's; compare field by field otherwise.
        let again = crate::session::Record::decode(r.id, &r.encode());
        assert!(again.is_ok(), "re-encoding a decoded record must decode");
    }
}

/// Decodes journal input two ways: as one record's row changes (a decoded
/// list must re-encode to the same bytes), and as a whole segment (header,
/// frames, the torn-tail scan) under a fixed key. Must never panic, and the
/// scan must stay linear in the input.
pub fn decode_journal(data: &[u8]) {
    if let Ok(muts) = crate::backend::redb::mutation::decode(data) {
        let mut again = Vec::new();
        crate::backend::redb::mutation::encode(&muts, &mut again);
        assert_eq!(again, data, "row changes must re-encode to the bytes they came from");
    }
    crate::backend::redb::journal::fuzz_segment(data);
}

/// Decodes a stored session record and returns the decoder's verdict.
///
/// # Errors
/// The [`crate::session::RecordError`] of a malformed record.
pub fn decode_record_checked(data: &[u8]) -> Result<(), crate::session::RecordError> {
    crate::session::Record::decode(crate::token::SessionId::from_bytes([0; 16]), data).map(|_| ())
}

/// Verifies arbitrary bytes as an access token and as a bearer credential
/// against a fixed store (HS256 key, fixed clock).
pub fn verify_access(data: &[u8]) {
    use std::sync::OnceLock;
    static STORE: OnceLock<Option<crate::store::Store>> = OnceLock::new();
    let store = STORE.get_or_init(|| {
        let keys = crate::jwt::Keyring::new();
        keys.add_hs256("fuzz", &[7; 32]).ok()?;
        let cfg = crate::config::Config::builder()
            .keyring(keys)
            .sweep_interval(None)
            .clock(crate::clock::ManualClock::fixed())
            .build()
            .ok()?;
        crate::store::Store::in_memory(cfg).ok()
    });
    if let (Some(store), Ok(s)) = (store, std::str::from_utf8(data)) {
        let _ = store.verify_access(s);
        let _ = store.authenticate(s);
    }
}
