use super::*;
use serde_json::Value;

const VECTORS: &str = include_str!("../../tests/data/agora-tokens.json");

/// Agora's rule: the *number* 0 is the empty uid; any other number is its decimal text;
/// strings are verbatim.
fn vector_uid(v: &Value) -> String {
    match v {
        Value::Number(n) if n.as_u64() == Some(0) => String::new(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

fn privileges(v: &Value) -> BTreeMap<u16, u32> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.parse::<u16>().unwrap(), v.as_u64().unwrap() as u32))
                .collect()
        })
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap()
}

#[test]
fn all_006_vectors_reproduce_byte_for_byte() {
    let all: Value = serde_json::from_str(VECTORS).unwrap();
    let vs = all["v006"].as_array().unwrap();
    assert!(vs.len() >= 8);
    for v in vs {
        let token = mint_006(
            s(v, "appId"),
            s(v, "appCertificate"),
            s(v, "channel"),
            &vector_uid(&v["uid"]),
            v["salt"].as_u64().unwrap() as u32,
            v["ts"].as_u64().unwrap() as u32,
            &privileges(&v["privileges"]),
        )
        .unwrap();
        assert_eq!(token, s(v, "token"), "vector {}", s(v, "name"));
        // and it parses back to the same fields
        let t = parse_006(&token).unwrap();
        assert_eq!(t.salt, v["salt"].as_u64().unwrap() as u32);
        assert_eq!(t.privileges, privileges(&v["privileges"]));
    }
}

fn services(v: &Value) -> Vec<(Service, BTreeMap<u16, u32>)> {
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|svc| {
            let p = privileges(&svc["privileges"]);
            let service = match svc["type"].as_u64().unwrap() {
                1 => Service::Rtc {
                    channel: s(svc, "channel").to_owned(),
                    uid: vector_uid(&svc["uid"]),
                },
                2 => Service::Rtm {
                    user_id: s(svc, "userId").to_owned(),
                },
                5 => Service::Chat {
                    user_id: s(svc, "userId").to_owned(),
                },
                t => panic!("vector uses service type {t}"),
            };
            (service, p)
        })
        .collect()
}

#[test]
fn all_007_vectors_reproduce_byte_for_byte() {
    let all: Value = serde_json::from_str(VECTORS).unwrap();
    let vs = all["v007"].as_array().unwrap();
    assert!(vs.len() >= 7);
    for v in vs {
        let svcs = services(v);
        let token = mint_007(
            s(v, "appId"),
            s(v, "appCertificate"),
            v["ts"].as_u64().unwrap() as u32,
            v["expire"].as_u64().unwrap() as u32,
            v["salt"].as_u64().unwrap() as u32,
            &svcs,
        )
        .unwrap();
        assert_eq!(token, s(v, "token"), "vector {}", s(v, "name"));
        // the decompressed payload matches too, and parsing gives the services back
        let t = parse_007(&token).unwrap();
        assert_eq!(t.services.len(), svcs.len());
        let mut raw = Packer::new();
        raw.bytes16(&t.signature).unwrap();
        raw.0.extend_from_slice(&t.signed);
        assert_eq!(
            hex::encode(&raw.0),
            s(v, "payload_hex").to_lowercase(),
            "{}",
            s(v, "name")
        );
    }
}

#[test]
fn node_compressed_007_variants_still_parse_and_verify() {
    // Node's zlib gives other bytes for the same payload; a decoder must accept them.
    let all: Value = serde_json::from_str(VECTORS).unwrap();
    for v in all["v007"].as_array().unwrap() {
        if let Some(tok) = v.get("token_nodejs").and_then(Value::as_str) {
            let a = parse_007(tok).unwrap();
            let b = parse_007(s(v, "token")).unwrap();
            assert_eq!(a, b);
        }
    }
}

const APP: &str = "970CA35de60c44645bbae8a215061b33";
const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
const NOW: u64 = 1_700_000_000;

fn issuer(v: TokenVersion) -> TokenIssuer {
    TokenIssuer::new(APP.into(), CERT.into(), v, 600)
}

#[test]
fn minted_tokens_verify_and_every_wrong_field_is_named() {
    for v in [TokenVersion::V006, TokenVersion::V007] {
        let iss = issuer(v);
        let tok = iss.mint("ch_abc", "1234", NOW).unwrap();
        let ok = iss.verify(&tok, "ch_abc", "1234", NOW + 10).unwrap();
        assert_eq!(ok.join_expires_at, Some(NOW + 600));
        assert_eq!(
            iss.verify(&tok, "ch_other", "1234", NOW),
            Err(TokenError::WrongChannel)
        );
        assert_eq!(
            iss.verify(&tok, "ch_abc", "999", NOW),
            Err(TokenError::WrongUid)
        );
        assert_eq!(
            iss.verify(&tok, "ch_abc", "1234", NOW + 601),
            Err(TokenError::Expired)
        );
        let other_cert = TokenIssuer::new(APP.into(), "0".repeat(32), v, 600);
        assert_eq!(
            other_cert.verify(&tok, "ch_abc", "1234", NOW),
            Err(TokenError::BadSignature)
        );
        let other_app = TokenIssuer::new("a".repeat(32), CERT.into(), v, 600);
        let e = other_app.verify(&tok, "ch_abc", "1234", NOW).unwrap_err();
        // 006 carries the App ID in clear; 007 signs it, so a foreign App ID with our
        // certificate is a signature mismatch or a wrong App ID, never a pass.
        assert!(
            matches!(e, TokenError::WrongAppId | TokenError::BadSignature),
            "{e:?}"
        );
        assert!(matches!(
            iss.verify("garbage", "ch_abc", "1234", NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            iss.verify(&tok[..tok.len() - 8], "ch_abc", "1234", NOW),
            Err(TokenError::Malformed(_))
        ));
    }
}

#[test]
fn mint_for_gives_its_own_lifetime_beyond_the_outer_one() {
    for v in [TokenVersion::V006, TokenVersion::V007] {
        let iss = issuer(v);
        // A robot's token: two days, longer than the 24 h outer lifetime.
        let tok = iss.mint_for("ch_abc", "robot", NOW, 172_800).unwrap();
        let ok = iss.verify(&tok, "ch_abc", "robot", NOW + 172_000).unwrap();
        assert_eq!(ok.join_expires_at, Some(NOW + 172_800));
        assert_eq!(
            iss.verify(&tok, "ch_abc", "robot", NOW + 172_801),
            Err(TokenError::Expired)
        );
        // mint is mint_for with the configured lifetime.
        let short = iss.mint("ch_abc", "1234", NOW).unwrap();
        let ok = iss.verify(&short, "ch_abc", "1234", NOW).unwrap();
        assert_eq!(ok.join_expires_at, Some(NOW + 600));
    }
}

#[test]
fn token_without_join_privilege_is_refused() {
    let publish_only = BTreeMap::from([(2u16, 0u32)]);
    let t6 = mint_006(APP, CERT, "c", "u", 1, (NOW + 100) as u32, &publish_only).unwrap();
    assert_eq!(
        verify(&t6, APP, CERT, "c", "u", NOW),
        Err(TokenError::NoJoinPrivilege)
    );
    let svc = Service::Rtc {
        channel: "c".into(),
        uid: "u".into(),
    };
    let t7 = mint_007(APP, CERT, NOW as u32, 600, 1, &[(svc, publish_only)]).unwrap();
    assert_eq!(
        verify(&t7, APP, CERT, "c", "u", NOW),
        Err(TokenError::NoJoinPrivilege)
    );
    let rtm = Service::Rtm {
        user_id: "u".into(),
    };
    let t7 = mint_007(
        APP,
        CERT,
        NOW as u32,
        600,
        1,
        &[(rtm, BTreeMap::from([(1, 600)]))],
    )
    .unwrap();
    assert_eq!(
        verify(&t7, APP, CERT, "c", "u", NOW),
        Err(TokenError::NoJoinPrivilege)
    );
}

#[test]
fn outer_expiry_and_never_expiring_privilege() {
    let never = BTreeMap::from([(PRIVILEGE_JOIN, 0u32)]);
    let t = mint_006(APP, CERT, "c", "u", 1, (NOW + 100) as u32, &never).unwrap();
    assert_eq!(
        verify(&t, APP, CERT, "c", "u", NOW)
            .unwrap()
            .join_expires_at,
        None
    );
    assert_eq!(
        verify(&t, APP, CERT, "c", "u", NOW + 101),
        Err(TokenError::Expired)
    );
}

#[test]
fn tampered_006_fails_signature() {
    let iss = issuer(TokenVersion::V006);
    let tok = iss.mint("ch_abc", "1234", NOW).unwrap();
    let mut t = parse_006(&tok).unwrap();
    t.privileges.insert(PRIVILEGE_JOIN, u32::MAX);
    let m = message006(t.salt, t.ts, &t.privileges).unwrap();
    let mut content = Packer::new();
    content
        .bytes16(&t.signature)
        .unwrap()
        .u32(t.crc_channel)
        .u32(t.crc_uid)
        .bytes16(&m)
        .unwrap();
    let forged = format!("006{APP}{}", B64.encode(content.0));
    assert_eq!(
        iss.verify(&forged, "ch_abc", "1234", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn invalid_007_credentials() {
    let svc = Service::Rtc {
        channel: "c".into(),
        uid: "u".into(),
    };
    assert_eq!(
        mint_007("short", CERT, 1, 1, 1, &[(svc, BTreeMap::new())]),
        Err(TokenError::InvalidCredentials)
    );
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(s in "\\PC{0,300}") {
        let _ = parse_006(&s);
        let _ = parse_007(&s);
        let _ = verify(&s, APP, CERT, "c", "u", NOW);
    }

    #[test]
    fn parsers_never_panic_on_prefixed_base64(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let t6 = format!("006{APP}{}", B64.encode(&b));
        let _ = parse_006(&t6);
        let t7 = format!("007{}", B64.encode(&b));
        let _ = parse_007(&t7);
    }

    #[test]
    fn mint_verify_roundtrip(channel in "[a-zA-Z0-9_]{1,64}", uid in "[ -~]{1,40}", salt in 1u32..) {
        let p = BTreeMap::from([(PRIVILEGE_JOIN, (NOW + 600) as u32)]);
        let t = mint_006(APP, CERT, &channel, &uid, salt, (NOW + 86400) as u32, &p).unwrap();
        proptest::prop_assert!(verify(&t, APP, CERT, &channel, &uid, NOW).is_ok());
        let svc = Service::Rtc { channel: channel.clone(), uid: uid.clone() };
        let t = mint_007(APP, CERT, NOW as u32, 86400, salt, &[(svc, BTreeMap::from([(PRIVILEGE_JOIN, 600)]))]).unwrap();
        proptest::prop_assert!(verify(&t, APP, CERT, &channel, &uid, NOW).is_ok());
    }
}
