//! The bad-token table: every malformed input is refused with the exact error,
//! before any lookup (the cache-miss counter does not move).

use cloakroom::{Error, Malformed, NewSession, REFRESH_PREFIX};

use super::common::store;

fn flip_last(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let l = b.len() - 1;
    b[l] = if b[l] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[test]
fn bad_session_tokens_are_refused_before_any_lookup() {
    let (s, _) = store();
    let good = s.create(NewSession::new("u")).unwrap().token.to_string();
    let body = &good[4..];
    use Malformed::*;
    let cases: Vec<(String, Malformed)> = vec![
        (String::new(), Empty),
        (" ".into(), Empty),
        ("\t\r\n ".into(), Empty),
        ("crs".into(), WrongPrefix),
        ("crs_".into(), WrongLength),
        (format!("CRS_{body}"), WrongPrefix),
        (format!("crx_{body}"), WrongPrefix),
        (format!(" {good}"), WrongPrefix),
        (body.to_string(), WrongPrefix),
        (format!("{good} "), TooLong),
        (format!("{good}\n"), TooLong),
        (format!("{good}A"), TooLong),
        (format!("{good}=="), TooLong),
        (good[..good.len() - 1].to_string(), WrongLength),
        (good[..40].to_string(), WrongLength),
        ("x".repeat(1 << 20), TooLong),
        (format!("crs_{}", "A".repeat(4096)), TooLong),
        (format!("crs_{}=", &body[..69]), BadEncoding),
        (format!("crs_{}+", &body[..69]), BadEncoding),
        (format!("crs_{}/", &body[..69]), BadEncoding),
        (format!("crs_{}.", &body[..69]), BadEncoding),
        (format!("crs_{}\u{e9}", &body[..68]), BadEncoding),
        (format!("crs_{}\0", &body[..69]), BadEncoding),
        (format!("crs_{}{}", &body[..68], "_B"), BadEncoding), // non-canonical tail: trailing bits set
        (flip_last(&good[..good.len() - 2]) + &good[good.len() - 2..], BadChecksum),
        (format!("crs_{}", "A".repeat(70)), BadChecksum),
        (format!("{REFRESH_PREFIX}{}", "A".repeat(80)), WrongKind),
        ("eyJhbGciOiJIUzI1NiJ9.e30.sig".into(), WrongKind),
        ("Bearer ".to_string() + &good, WrongPrefix),
        ("crs_\u{1F600}".into(), WrongLength),
    ];
    assert!(cases.len() >= 25);
    let misses_before = s.stats().cache_misses;
    let hits_before = s.stats().cache_hits;
    for (input, want) in &cases {
        match s.validate(input) {
            Err(Error::Malformed(got)) => {
                assert_eq!(got, *want, "input {:?}", &input[..input.len().min(80)])
            }
            other => panic!("input {:?}: expected Malformed({want:?}), got {other:?}", &input[..input.len().min(80)]),
        }
    }
    let st = s.stats();
    assert_eq!((st.cache_misses, st.cache_hits), (misses_before, hits_before), "a malformed token reached the cache");
    s.validate(&good).unwrap();
}

#[test]
fn well_formed_but_unknown_or_wrong_secret_is_not_found() {
    let (s, _) = store();
    s.create(NewSession::new("u")).unwrap();
    // A well-formed token this store never issued (from another store).
    let (other, _) = store();
    let never = other.create(NewSession::new("u")).unwrap().token.to_string();
    assert!(matches!(s.validate(&never), Err(Error::NotFound)));
}

/// Rebuilds a token with the same id, another secret and a valid checksum: it
/// passes the format check, so only the constant-time secret comparison stops it.
fn forge_secret(good: &str) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = e.decode(&good[4..]).unwrap();
    raw[16..48].iter_mut().for_each(|b| *b ^= 0xff);
    // The checksum of src/token.rs: multiply-xorshift over 8-byte words.
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = u64::from(u32::from_le_bytes(*b"crs_")) ^ 48u64.wrapping_mul(K);
    for c in raw[..48].chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        h ^= h >> 29;
    }
    h ^= h >> 32;
    raw[48..].copy_from_slice(&(h as u32).to_le_bytes());
    format!("crs_{}", e.encode(raw))
}

#[test]
fn right_id_wrong_secret_is_not_found() {
    let (s, _) = store();
    let good = s.create(NewSession::new("u")).unwrap().token.to_string();
    let forged = forge_secret(&good);
    assert!(cloakroom::SessionToken::parse(&forged).is_ok(), "forgery must pass the format check");
    assert!(matches!(s.validate(&forged), Err(Error::NotFound)));
    assert!(matches!(s.rotate(&forged), Err(Error::NotFound)));
    s.validate(&good).unwrap();
}
