//! The bad-token table: every malformed input is refused with the exact error,
//! before any lookup (the cache-miss counter does not move).

use std::time::Duration;

use cloakroom::{Config, Error, InputError, Malformed, ManualClock, NewSession, REFRESH_PREFIX, Store};

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

/// A store with a known server key, so a test can compute the keyed tag.
fn keyed_store(key: &[u8; 32]) -> Store {
    let cfg = Config::builder().server_key(key).clock(ManualClock::fixed()).build().unwrap();
    super::common::open_as_is(cfg)
}

/// The tag of src/token.rs: SipHash-1-3 over id ‖ secret under the
/// first 16 bytes of a key derived from the server key, folded to 4 bytes.
fn tag(server_key: &[u8; 32], raw: &[u8]) -> [u8; 4] {
    let key = blake3::derive_key("cloakroom 2026 session token tag v1", server_key);
    let h = siphasher::sip::SipHasher13::new_with_key(key[..16].try_into().unwrap()).hash(&raw[..48]);
    ((h ^ (h >> 32)) as u32).to_le_bytes()
}

#[test]
fn a_token_from_another_server_key_is_refused_before_any_lookup() {
    let s = keyed_store(&[1; 32]);
    s.create(NewSession::new("u")).unwrap();
    // Well formed, issued by a store with another server key (or forged without it).
    let never = keyed_store(&[2; 32]).create(NewSession::new("u")).unwrap().token.to_string();
    let before = s.stats();
    assert!(matches!(s.validate(&never), Err(Error::Malformed(Malformed::BadChecksum))));
    assert!(matches!(s.rotate(&never), Err(Error::Malformed(Malformed::BadChecksum))));
    let after = s.stats();
    assert_eq!(
        (after.cache_hits, after.cache_misses),
        (before.cache_hits, before.cache_misses),
        "it reached the cache"
    );
}

#[test]
fn well_formed_and_tagged_but_unknown_is_not_found() {
    // Same server key, another store: the tag checks out, the lookup finds nothing.
    let s = keyed_store(&[1; 32]);
    let never = keyed_store(&[1; 32]).create(NewSession::new("u")).unwrap().token.to_string();
    assert!(matches!(s.validate(&never), Err(Error::NotFound)));
}

/// Rebuilds a token with the same id, another secret and a valid tag (the
/// test knows the server key): it passes the tag check, so only the
/// constant-time secret comparison stops it.
fn forge_secret(server_key: &[u8; 32], good: &str) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = e.decode(&good[4..]).unwrap();
    raw[16..48].iter_mut().for_each(|b| *b ^= 0xff);
    let t = tag(server_key, &raw);
    raw[48..].copy_from_slice(&t);
    format!("crs_{}", e.encode(raw))
}

#[test]
fn right_id_wrong_secret_is_not_found() {
    let s = keyed_store(&[1; 32]);
    let good = s.create(NewSession::new("u")).unwrap().token.to_string();
    assert_eq!(forge_secret(&[1; 32], &forge_secret(&[1; 32], &good)), good, "the test's tag is the store's");
    let forged = forge_secret(&[1; 32], &good);
    assert!(cloakroom::SessionToken::parse(&forged).is_ok(), "forgery must pass the format check");
    assert!(matches!(s.validate(&forged), Err(Error::NotFound)));
    assert!(matches!(s.rotate(&forged), Err(Error::NotFound)));
    s.validate(&good).unwrap();
}

/// What a bad input must produce.
#[derive(Debug)]
enum Want {
    Tok(Malformed),
    Jwt(cloakroom::JwtError),
    Input,
}

/// One table across every parser: session tokens (`validate`), refresh tokens
/// (`refresh`), access tokens (`verify_access`), bearer credentials
/// (`authenticate`), stored records, and application input. Format failures
/// must not reach the cache or the disk: both counters stay still.
#[test]
fn bad_input_table_across_all_parsers() {
    use cloakroom::{JwtError as J, RecordError as R};
    use std::sync::atomic::Ordering;

    let mut b = cloakroom::Config::builder();
    b.sweep_interval(None);
    let (s, backend) = super::support::faulty_backend::faulty_store(b.build().unwrap());
    let good = s.create(NewSession::new("u")).unwrap().token.to_string();
    let pair = s.issue_tokens(&good).unwrap();
    let refresh = pair.refresh.to_string();
    let jwt = pair.access.clone();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = |j: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j)
    };
    let with_header = |h: &str| format!("{}.{}.{}", b64(h), parts[1], parts[2]);
    let with_claims = |c: &str| format!("{}.{}.{}", parts[0], b64(c), parts[2]);
    let rbody = &refresh[4..];

    use Malformed as M;
    use Want::*;
    let tokens: Vec<(&str, String, Want)> = vec![
        // session tokens
        ("validate", String::new(), Tok(M::Empty)),
        ("validate", "\n".into(), Tok(M::Empty)),
        ("validate", format!("{good}x"), Tok(M::TooLong)),
        ("validate", good[..73].into(), Tok(M::WrongLength)),
        ("validate", format!("crs_{}", "é".repeat(35)), Tok(M::BadEncoding)), // 74 bytes, not base64
        ("validate", format!("{}*{}", &good[..30], &good[31..]), Tok(M::BadEncoding)),
        ("validate", format!("crs_{}", "A".repeat(70)), Tok(M::BadChecksum)),
        ("validate", refresh.clone(), Tok(M::WrongKind)),
        ("validate", jwt.clone(), Tok(M::WrongKind)),
        ("validate", format!("xrs_{}", &good[4..]), Tok(M::WrongPrefix)),
        // refresh tokens
        ("refresh", String::new(), Tok(M::Empty)),
        ("refresh", "   ".into(), Tok(M::Empty)),
        ("refresh", "crr_".into(), Tok(M::WrongLength)),
        ("refresh", good.clone(), Tok(M::WrongKind)),
        ("refresh", jwt.clone(), Tok(M::WrongKind)),
        ("refresh", format!("{refresh}A"), Tok(M::TooLong)),
        ("refresh", "r".repeat(100_000), Tok(M::TooLong)),
        ("refresh", format!("crr_{}=", &rbody[..79]), Tok(M::BadEncoding)),
        ("refresh", format!("crr_{}!", &rbody[..79]), Tok(M::BadEncoding)),
        ("refresh", format!("CRR_{rbody}"), Tok(M::WrongPrefix)),
        // access tokens
        ("verify", String::new(), Jwt(J::Malformed)),
        ("verify", "x".repeat(5000), Jwt(J::Malformed)),
        ("verify", format!("{}.{}", parts[0], parts[1]), Jwt(J::Malformed)),
        ("verify", format!("{jwt}.{}", parts[2]), Jwt(J::Malformed)),
        ("verify", format!("{}.{}.{}", parts[0], parts[1], "sig=="), Jwt(J::Malformed)),
        ("verify", with_header("not json"), Jwt(J::Malformed)),
        ("verify", with_header("[1,2]"), Jwt(J::Malformed)),
        ("verify", with_header(r#"{"alg":"HS256","alg":"none","typ":"at+jwt","kid":"x"}"#), Jwt(J::Malformed)),
        ("verify", with_header(r#"{"alg":"HS256","kid":"x"}"#), Jwt(J::Header("typ must be at+jwt"))),
        ("verify", with_header(r#"{"alg":"HS256","typ":"at+jwt"}"#), Jwt(J::Header("kid missing"))),
        ("verify", with_header(r#"{"alg":"HS256","typ":"at+jwt","kid":"nope"}"#), Jwt(J::Header("unknown kid"))),
        (
            "verify",
            with_header(r#"{"alg":"HS256","typ":"at+jwt","kid":"x","crit":["b64"]}"#),
            Jwt(J::Header("crit is not supported")),
        ),
        (
            "verify",
            with_header(r#"{"alg":"RSA-OAEP","enc":"A256GCM","typ":"at+jwt","kid":"x"}"#),
            Jwt(J::Header("JWE is not accepted")),
        ),
        ("verify", with_claims(r#"{"sub":"u"}"#), Jwt(J::Signature)),
        ("verify", format!("{}.{}.{}", parts[0], parts[1], b64("forged signature bytes, 32 long!")), Jwt(J::Signature)),
        // bearer credentials
        ("auth", "Bearer ".into(), Tok(M::Empty)),
        ("auth", "Basic dTpw".into(), Tok(M::WrongPrefix)),
        ("auth", format!("Bearer {refresh}"), Tok(M::WrongKind)),
        ("auth", format!("Bearer {}", "a".repeat(5000)), Tok(M::TooLong)),
        ("auth", "\u{202e}crs_".into(), Tok(M::WrongPrefix)),
    ];
    // The kid in the hand-made headers must exist for the later checks to be reached.
    let kid = jsonwebtoken::decode_header(&jwt).unwrap().kid.unwrap();
    let reads_before = backend.db.reads.load(Ordering::SeqCst);
    let st = s.stats();
    let mut n = 0;
    for (what, input, want) in &tokens {
        let input = if *what == "verify" {
            // Re-point the hand-made headers at the real kid (kept "x" above for brevity).
            let mut p = input.splitn(2, '.');
            let (h, rest) = (p.next().unwrap(), p.next().unwrap_or(""));
            use base64::Engine as _;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            match e.decode(h).ok().and_then(|j| String::from_utf8(j).ok()) {
                Some(j) if j.contains(r#""kid":"x""#) => {
                    format!("{}.{rest}", e.encode(j.replace(r#""kid":"x""#, &format!(r#""kid":"{kid}""#))))
                }
                _ => input.clone(),
            }
        } else {
            input.clone()
        };
        let got = match *what {
            "validate" => s.validate(&input).err(),
            "refresh" => s.refresh(&input).err(),
            "verify" => s.verify_access(&input).err(),
            "auth" => s.authenticate(&input).err(),
            _ => unreachable!(),
        };
        let ok = match (&got, want) {
            (Some(Error::Malformed(g)), Tok(w)) => g == w,
            (Some(Error::Jwt(g)), Jwt(w)) => g == w,
            _ => false,
        };
        assert!(ok, "{what} {:?}: want {want:?}, got {got:?}", &input[..input.len().min(60)]);
        n += 1;
    }
    let after = s.stats();
    assert_eq!(backend.db.reads.load(Ordering::SeqCst), reads_before, "a malformed input reached the disk");
    assert_eq!(
        (after.cache_hits, after.cache_misses),
        (st.cache_hits, st.cache_misses),
        "a malformed input reached the cache"
    );

    // Stored records.
    let mut rec = vec![1u8];
    rec.extend_from_slice(&[0; 8 + 32 + 40]);
    let text = |v: &mut Vec<u8>, t: &[u8]| {
        v.extend_from_slice(&(t.len() as u16).to_le_bytes());
        v.extend_from_slice(t);
    };
    let mut good_rec = rec.clone();
    for t in [&b"alice"[..], b"", b"", b""] {
        text(&mut good_rec, t);
    }
    good_rec.extend_from_slice(&0u32.to_le_bytes());
    assert!(cloakroom::fuzzing::decode_record_checked(&good_rec).is_ok());
    let mut trailing = good_rec.clone();
    trailing.push(0);
    let mut newer = good_rec.clone();
    newer[0] = 9;
    let mut bad_utf8 = rec.clone();
    text(&mut bad_utf8, &[0xff, 0xfe]);
    let mut empty_user = rec.clone();
    text(&mut empty_user, b"");
    let mut bad_ip = rec.clone();
    text(&mut bad_ip, b"alice");
    text(&mut bad_ip, b"999.1.1.1");
    let mut huge_len = good_rec[..good_rec.len() - 4].to_vec();
    huge_len.extend_from_slice(&u32::MAX.to_le_bytes());
    let records: Vec<(Vec<u8>, R)> = vec![
        (Vec::new(), R::Truncated),
        (good_rec[..good_rec.len() - 1].to_vec(), R::Truncated),
        (trailing, R::Trailing),
        (newer, R::UnknownFormat(9)),
        (bad_utf8, R::BadText),
        (empty_user, R::BadUser),
        (bad_ip, R::BadText),
        (huge_len, R::Truncated),
    ];
    for (bytes, want) in &records {
        assert_eq!(cloakroom::fuzzing::decode_record_checked(bytes), Err(*want));
        n += 1;
    }

    // Application input: user ids and metadata.
    let inputs: Vec<(NewSession, Want)> = vec![
        (NewSession::new(""), Input),
        (NewSession::new("x".repeat(257)), Input),
        (NewSession::new("é".repeat(129)), Input), // 258 bytes
        (NewSession::new("u").meta(cloakroom::Meta { label: Some("l".repeat(257)), ..Default::default() }), Input),
    ];
    for (new, _) in inputs {
        assert!(matches!(s.create(new), Err(Error::Input(_))));
        n += 1;
    }
    assert!(n >= 40, "{n} cases");
}

/// A per-session idle timeout not longer than the touch granularity is refused.
#[test]
fn idle_timeout_below_the_touch_granularity_is_refused() {
    let (s, _clock) = store(); // touch granularity 1 min
    let r = s.create(NewSession::new("bob").idle_timeout(Duration::from_secs(30)));
    assert!(matches!(r, Err(Error::Input(InputError::IdleBelowGranularity { granularity_ms: 60_000 }))), "{r:?}");
    s.create(NewSession::new("bob").idle_timeout(Duration::from_secs(61))).unwrap();
}

/// `Revoked` is answered only to the holder of the revoked secret; a token
/// with the same id and any other secret reads `NotFound` (no oracle on ids).
#[test]
fn a_revoked_id_without_its_secret_reads_not_found() {
    let (s, _clock) = store();
    let first = s.create(NewSession::new("carol")).unwrap().token.to_string();
    let second = s.rotate(&first).unwrap().token.to_string(); // same id, new secret
    s.revoke(s.validate(&second).unwrap().id()).unwrap();
    assert!(matches!(s.validate(&second), Err(Error::Revoked)), "the holder learns it was revoked");
    assert!(matches!(s.validate(&first), Err(Error::NotFound)), "another secret learns nothing");
}
