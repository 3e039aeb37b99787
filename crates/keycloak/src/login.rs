//! A scripted login for checks: a password grant on a public client, returning the ID token's
//! claims. The signature is not checked here (the federation verifier validates against the
//! realm's JWKS); this is for reading what a realm puts into its tokens.

use crate::admin::{Grant, KeycloakError, http_client, json_error, password_grant};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dive_tls::Trust;
use serde_json::Value;

/// Logs `username` in to `realm` through the public client `client_id` (password grant, scope
/// `openid`) and returns the claims of the ID token it gets.
pub async fn login_claims(
    trust: &Trust,
    base_url: &str,
    realm: &str,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<Value, KeycloakError> {
    let base = base_url.trim().trim_end_matches('/');
    let target = format!("keycloak {base}");
    let http = http_client(trust)?;
    let grant = Grant {
        realm,
        client_id,
        username,
        password,
        scope: Some("openid"),
    };
    let tokens = password_grant(&http, &target, base, &grant).await?;
    let id_token = tokens.id_token.ok_or_else(|| KeycloakError::Invalid {
        target: target.clone(),
        message: format!("the token response for {username} via {client_id} has no ID token"),
    })?;
    decode_jwt_claims(&id_token).map_err(|message| KeycloakError::Invalid {
        target,
        message: format!("the ID token of {username}: {message}"),
    })
}

/// The payload of a compact JWS, decoded (no signature check). Errors never quote the token.
pub fn decode_jwt_claims(jwt: &str) -> Result<Value, String> {
    let mut parts = jwt.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(p), Some(_), None) => p,
        _ => return Err("not a JWT (expected three dot-separated parts)".into()),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("payload is not base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(e) => Err(format!("payload: {}", json_error(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_are_decoded_from_the_payload() {
        let claims = json!({"sub": "1", "acpCOI": ["NATO", "FVEY"], "clearance": "SECRET?>"});
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(decode_jwt_claims(&jwt).unwrap(), claims);
        assert!(decode_jwt_claims("a.b").is_err());
        assert!(decode_jwt_claims("a.!!!.c").is_err());
        let not_object = URL_SAFE_NO_PAD.encode("[1]");
        assert!(decode_jwt_claims(&format!("a.{not_object}.c")).is_err());
    }
}
