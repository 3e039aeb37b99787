//! ID token validation: RS256 signature against a JWKS (by `kid`), `iss`, `aud`, `nonce`, `exp`.
//! The signature is checked with `ring` (already in the tree through rustls). Error messages
//! never quote the token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Accepted clock difference between Keycloak and this machine.
const LEEWAY_SECS: i64 = 60;

fn b64(part: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("{what} is not base64url: {e}"))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(format!("{what} is not a JSON object")),
        Err(e) => Err(format!(
            "{what} is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

/// What the token must say besides a valid signature.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub nonce: &'a str,
    /// Seconds since the epoch.
    pub now: i64,
}

/// Validates `token` against `jwks` (`{"keys": [...]}`) and `expect`; returns its claims.
pub fn validate(token: &str, jwks: &Value, expect: &Expect<'_>) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, sig_b64] = parts[..] else {
        return Err("the ID token is not a compact JWS (three dot-separated parts)".into());
    };
    let header = json_object(
        &b64(header_b64, "the ID token header")?,
        "the ID token header",
    )?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(format!(
            "the ID token is signed with `{alg}`, expected RS256"
        ));
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no `keys` array")?;
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some("RSA"))
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .filter(|k| {
            k.get("alg")
                .and_then(Value::as_str)
                .is_none_or(|a| a == "RS256")
        })
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "no RS256 signing key with kid `{}` in the realm's JWKS ({} keys)",
            kid.unwrap_or("(none)"),
            keys.len()
        ));
    }
    let signed = format!("{header_b64}.{payload_b64}");
    let signature = b64(sig_b64, "the ID token signature")?;
    let mut verified = false;
    for key in candidates {
        let n = b64(
            key.get("n").and_then(Value::as_str).unwrap_or(""),
            "JWK `n`",
        )?;
        let e = b64(
            key.get("e").and_then(Value::as_str).unwrap_or(""),
            "JWK `e`",
        )?;
        let public = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
        if public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                signed.as_bytes(),
                &signature,
            )
            .is_ok()
        {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(format!(
            "the ID token's signature does not verify with key `{}` of the realm's JWKS",
            kid.unwrap_or("(none)")
        ));
    }
    let claims = json_object(
        &b64(payload_b64, "the ID token payload")?,
        "the ID token payload",
    )?;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != expect.issuer {
        return Err(format!(
            "the ID token's issuer is `{iss}`, expected `{}`",
            expect.issuer
        ));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == expect.audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(expect.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(format!(
            "the ID token's audience {} does not contain `{}`",
            claims.get("aud").unwrap_or(&Value::Null),
            expect.audience
        ));
    }
    if claims.get("nonce").and_then(Value::as_str) != Some(expect.nonce) {
        return Err("the ID token's nonce is not the one this login sent".into());
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp + LEEWAY_SECS >= expect.now => {}
        Some(exp) => {
            return Err(format!("the ID token expired {} s ago", expect.now - exp));
        }
        None => return Err("the ID token has no `exp`".into()),
    }
    Ok(Value::Object(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use serde_json::json;

    /// A 2048-bit RSA key in PKCS#1 DER, generated once for these tests with
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER | base64 -w0`.
    const TEST_KEY_DER: &str = include_str!("test_key.b64");

    fn sign(header: &Value, claims: &Value) -> (String, Value) {
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_KEY_DER.trim())
            .unwrap();
        let pair = RsaKeyPair::from_der(&der).unwrap();
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let input = format!("{h}.{p}");
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let public = pair.public();
        let comps: ring::rsa::PublicKeyComponents<Vec<u8>> = public.into();
        let jwks = json!({"keys": [
            {"kid": "other", "kty": "RSA", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kid": "k1", "kty": "RSA", "alg": "RS256", "use": "sig",
             "n": URL_SAFE_NO_PAD.encode(&comps.n), "e": URL_SAFE_NO_PAD.encode(&comps.e)},
        ]});
        (format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)), jwks)
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "http://kc/realms/dive-fra",
            audience: "dive-verify",
            nonce: "n1",
            now: 1_000,
        }
    }

    #[test]
    fn a_good_token_validates_and_each_check_bites() {
        let header = json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
        let good = json!({"iss": "http://kc/realms/dive-fra", "aud": "dive-verify",
                          "nonce": "n1", "exp": 1_100, "clearance": "SECRET"});
        let (token, jwks) = sign(&header, &good);
        let claims = validate(&token, &jwks, &expect()).unwrap();
        assert_eq!(claims["clearance"], "SECRET");

        // Tampered payload: the signature no longer matches.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut forged = good.clone();
        forged["clearance"] = json!("TOP_SECRET");
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let e = validate(&parts.join("."), &jwks, &expect()).unwrap_err();
        assert!(e.contains("signature does not verify"), "{e}");

        for (field, value, needle) in [
            ("iss", json!("http://evil/realms/dive-fra"), "issuer"),
            ("aud", json!(["account"]), "audience"),
            ("nonce", json!("n2"), "nonce"),
            ("exp", json!(900), "expired"),
        ] {
            let mut c = good.clone();
            c[field] = value;
            let (t, j) = sign(&header, &c);
            let e = validate(&t, &j, &expect()).unwrap_err();
            assert!(e.contains(needle), "{field}: {e}");
            assert!(!e.contains(&t), "the token is never quoted");
        }
        let (t, j) = sign(&json!({"alg": "RS256", "kid": "gone"}), &good);
        assert!(
            validate(&t, &j, &expect())
                .unwrap_err()
                .contains("no RS256 signing key")
        );
        let (t, j) = sign(&json!({"alg": "HS256", "kid": "k1"}), &good);
        assert!(
            validate(&t, &j, &expect())
                .unwrap_err()
                .contains("expected RS256")
        );
        assert!(validate("a.b", &j, &expect()).is_err());
    }
}
