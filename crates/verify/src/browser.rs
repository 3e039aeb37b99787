//! The scripted browser of [`brokered_login`].

use crate::html::{self, Form};
use crate::jwt::{self, Expect};
use crate::{Endpoint, Side, VerifyError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dive_tls::Trust;
use rand::RngCore;
use reqwest::{Method, Response, StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The public client every dive realm has for scripted logins.
pub const CLIENT_ID: &str = "dive-verify";
/// Its redirect URI; never requested, the flow stops at the redirect to it.
pub const CALLBACK_URI: &str = "http://127.0.0.1/dive-verify/callback";
/// Timeout of every HTTP request.
/// Whole-request limit: a login's requests make Keycloak hash a password and call its partner,
/// which takes seconds on a busy two-core machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting is quick when the Keycloak is up at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects and pages followed before giving up.
const MAX_HOPS: u32 = 25;
/// Intermediate forms (review profile, …) submitted before giving up.
const MAX_INTERMEDIATE_FORMS: u32 = 3;

/// A successful brokered login.
#[derive(Debug, Clone)]
pub struct LoginResult {
    /// The validated ID token's claims.
    pub claims: Value,
    /// From the first request to the validated ID token.
    pub latency: Duration,
    /// HTTP requests made.
    pub requests: u32,
    /// Titles of intermediate pages that were submitted (e.g. first-broker-login's review
    /// profile); empty when the flow went straight through.
    pub intermediate_pages: Vec<String>,
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A URL for errors and logs: scheme, host, port and path, never the query (codes, states).
fn shown(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

/// What a Keycloak path is, for errors.
fn step(url: &Url) -> String {
    let p = url.path();
    if p.ends_with("/protocol/openid-connect/auth") {
        "authorization endpoint".into()
    } else if p.ends_with("/protocol/openid-connect/token") {
        "token endpoint".into()
    } else if p.ends_with("/protocol/openid-connect/certs") {
        "JWKS endpoint".into()
    } else if p.contains("/broker/") && p.ends_with("/endpoint") {
        "broker endpoint".into()
    } else if p.contains("/broker/") && p.ends_with("/login") {
        "broker login".into()
    } else if p.contains("/login-actions/first-broker-login") {
        "first broker login".into()
    } else if p.contains("/login-actions/post-broker-login") {
        "post broker login".into()
    } else if p.contains("/login-actions/authenticate") {
        "login form".into()
    } else if p.contains("/login-actions/") {
        format!("login action {}", p.rsplit('/').next().unwrap_or(""))
    } else {
        format!("path {p}")
    }
}

/// Keycloak's explanation in an OAuth or admin error body, never the body of a token answer.
fn oauth_message(body: &str) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(body) {
        let text = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        return match (
            text("error"),
            text("error_description"),
            text("errorMessage"),
        ) {
            (Some(e), Some(d), _) => format!("{e}: {d}"),
            (Some(e), None, _) => e.to_string(),
            (None, Some(d), _) | (None, None, Some(d)) => d.to_string(),
            _ => String::new(),
        };
    }
    // An HTML error page: what it tells the user.
    html::feedback(body)
        .or_else(|| html::title(body))
        .unwrap_or_default()
}

struct Browser<'a> {
    http: reqwest::Client,
    home: &'a Endpoint,
    target: &'a Endpoint,
    home_url: Url,
    target_url: Url,
    requests: u32,
}

impl<'a> Browser<'a> {
    fn new(
        trust: &Trust,
        home: &'a Endpoint,
        target: &'a Endpoint,
    ) -> Result<Browser<'a>, VerifyError> {
        let parse = |e: &Endpoint| {
            Url::parse(&e.url).map_err(|err| {
                VerifyError::Setup(format!("keycloak {} URL `{}`: {err}", e.code, e.url))
            })
        };
        let http = trust
            .client(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("dive-verify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| VerifyError::Setup(format!("cannot build an HTTP client: {e}")))?;
        Ok(Browser {
            http,
            home_url: parse(home)?,
            target_url: parse(target)?,
            home,
            target,
            requests: 0,
        })
    }

    /// Which side `url` is on: by origin, or by realm when both share a Keycloak; the target
    /// when it is neither.
    fn side_of(&self, url: &Url) -> (Side, &'a Endpoint) {
        let same = |a: &Url, b: &Url| {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        };
        let home_realm = format!("/realms/{}/", self.home.realm());
        let is_home = same(url, &self.home_url)
            && (!same(url, &self.target_url) || url.path().starts_with(&home_realm));
        if is_home {
            (Side::Home, self.home)
        } else {
            (Side::Target, self.target)
        }
    }

    fn flow(&self, url: &Url, message: impl Into<String>) -> VerifyError {
        let (side, ep) = self.side_of(url);
        VerifyError::Flow {
            side,
            code: ep.code.clone(),
            message: message.into(),
        }
    }

    async fn send(
        &mut self,
        method: Method,
        url: &Url,
        form: Option<&[(String, String)]>,
    ) -> Result<Response, VerifyError> {
        self.requests += 1;
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(f) = form {
            req = req.form(f);
        }
        tracing::debug!(%method, url = %shown(url), "verify: request");
        dive_tls::send(req).await.map_err(|e| {
            let (side, ep) = self.side_of(url);
            VerifyError::Unreachable {
                side,
                code: ep.code.clone(),
                url: ep.url.clone(),
                message: transport_message(&e),
                timed_out: e.is_timeout(),
            }
        })
    }

    async fn body(&self, url: &Url, resp: Response) -> Result<String, VerifyError> {
        resp.text().await.map_err(|e| {
            self.flow(
                url,
                format!(
                    "reading the answer of the {}: {}",
                    step(url),
                    transport_message(&e)
                ),
            )
        })
    }

    async fn status_error(&self, url: &Url, resp: Response) -> VerifyError {
        let status = resp.status().as_u16();
        let body = Zeroizing::new(resp.text().await.unwrap_or_default());
        let (side, ep) = self.side_of(url);
        let step = step(url);
        let mut message = oauth_message(&body);
        // Keycloak says no more at the broker endpoint when redeeming the home's code failed.
        if side == Side::Target && step == "broker endpoint" && status == 502 {
            message.push_str(&format!(
                " ({} could not redeem the code at {}: does `{}`'s client secret match client \
                 `federation-{}` in {}?)",
                self.target.code,
                self.home.code,
                self.home.idp_alias(),
                self.target.lower(),
                self.home.realm()
            ));
        }
        VerifyError::Status {
            side,
            code: ep.code.clone(),
            status,
            step,
            message,
        }
    }
}

/// The cause chain of a transport error, without reqwest's URL preamble (it may hold a query).
fn transport_message(e: &reqwest::Error) -> String {
    if let Some(problem) = dive_tls::certificate_problem(e) {
        return format!("{}: {problem}", dive_tls::CERTIFICATE_REFUSED);
    }
    if e.is_timeout() {
        return format!("timed out after {} s", REQUEST_TIMEOUT.as_secs());
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let text = parts.last().cloned().unwrap_or_else(|| "no answer".into());
    // "Connection refused (os error 111)" → "connection refused"
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().collect::<String>() + chars.as_str(),
        None => text,
    }
}

/// Logs `username` of `home` in at `target` through `target`'s identity provider
/// `<home>-idp`, as a browser would, and returns the validated ID token's claims. See the
/// module documentation for the steps.
pub async fn brokered_login(
    trust: &Trust,
    home: &Endpoint,
    target: &Endpoint,
    username: &str,
    password: &str,
) -> Result<LoginResult, VerifyError> {
    let started = Instant::now();
    let mut b = Browser::new(trust, home, target)?;
    let verifier = Zeroizing::new(random_b64(32));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let nonce = random_b64(16);
    let realm = target.realm();
    let mut auth = Url::parse(&format!(
        "{}/realms/{realm}/protocol/openid-connect/auth",
        target.url
    ))
    .map_err(|e| VerifyError::Setup(format!("target {} URL: {e}", target.code)))?;
    auth.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", CALLBACK_URI)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("kc_idp_hint", &home.idp_alias());

    let mut url = auth;
    let mut method = Method::GET;
    let mut form: Option<Vec<(String, String)>> = None;
    let mut posted_credentials = false;
    let mut intermediate = Vec::new();
    let mut seen_home = false;
    let callback = loop {
        if b.requests >= MAX_HOPS {
            return Err(b.flow(
                &url,
                format!(
                    "no redirect to the callback after {MAX_HOPS} requests (last: {})",
                    shown(&url)
                ),
            ));
        }
        let resp = b.send(method.clone(), &url, form.as_deref()).await?;
        let from = url.clone();
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    b.flow(
                        &from,
                        format!("{status} without a Location at the {}", step(&from)),
                    )
                })?;
            let next = from.join(location).map_err(|e| {
                b.flow(&from, format!("bad redirect from the {}: {e}", step(&from)))
            })?;
            if next.as_str().starts_with(CALLBACK_URI) {
                break next;
            }
            if b.side_of(&next).0 == Side::Home {
                seen_home = true;
            }
            url = next;
            method = Method::GET;
            form = None;
            continue;
        }
        if status != StatusCode::OK {
            return Err(b.status_error(&from, resp).await);
        }
        let page = Zeroizing::new(b.body(&from, resp).await?);
        let forms = html::forms(&page);
        let title = html::title(&page).unwrap_or_else(|| "(untitled)".into());
        let (side, _) = b.side_of(&from);
        if let Some(login) = forms
            .iter()
            .find(|f| f.id.as_deref() == Some("kc-form-login"))
        {
            if side == Side::Target {
                return Err(b.flow(
                    &from,
                    format!(
                        "showed its own login form (\"{title}\") instead of redirecting to {}'s \
                         identity provider `{}`: is the provider missing or disabled?",
                        home.code,
                        home.idp_alias()
                    ),
                ));
            }
            if posted_credentials {
                let why = html::feedback(&page).unwrap_or_else(|| title.clone());
                return Err(b.flow(&from, format!("refused the login of {username}: {why}")));
            }
            let action = action_url(&b, &from, login)?;
            let mut fields: Vec<(String, String)> = login
                .fields
                .iter()
                .filter(|(n, _)| n != "username" && n != "password")
                .cloned()
                .collect();
            fields.push(("username".into(), username.into()));
            fields.push(("password".into(), password.into()));
            posted_credentials = true;
            url = action;
            method = Method::POST;
            form = Some(fields);
            continue;
        }
        // Another page with a form: submit it as it is filled in (review profile, …).
        if let Some(f) = forms.iter().find(|f| f.action.is_some())
            && posted_credentials
            && (intermediate.len() as u32) < MAX_INTERMEDIATE_FORMS
        {
            tracing::debug!(page = %title, "verify: submitting an intermediate page");
            intermediate.push(title.clone());
            let mut fields = f.fields.clone();
            if let Some(button) = f.buttons.first() {
                fields.push(button.clone());
            }
            url = action_url(&b, &from, f)?;
            method = if f.method.as_deref() == Some("get") {
                Method::GET
            } else {
                Method::POST
            };
            form = (method == Method::POST).then_some(fields);
            continue;
        }
        let why = html::feedback(&page)
            .filter(|m| *m != title)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let whose = if seen_home || side == Side::Home {
            String::new()
        } else {
            format!(" before reaching {}'s login form", home.code)
        };
        return Err(b.flow(
            &from,
            format!(
                "stopped at a page the verifier cannot get past: \"{title}\"{why} (at the {}{whose})",
                step(&from)
            ),
        ));
    };

    // The callback: state and code, or the error the target sent back.
    let mut code = None;
    let mut got_state = None;
    let mut error = None;
    let mut error_description = None;
    for (k, v) in callback.query_pairs() {
        match k.as_ref() {
            "code" => code = Some(Zeroizing::new(v.into_owned())),
            "state" => got_state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => error_description = Some(v.into_owned()),
            _ => {}
        }
    }
    let target_err = |message: String| VerifyError::Flow {
        side: Side::Target,
        code: target.code.clone(),
        message,
    };
    if got_state.as_deref() != Some(state.as_str()) {
        return Err(target_err(
            "redirected to the callback with a state this login did not send".into(),
        ));
    }
    if let Some(e) = error {
        let d = error_description
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(target_err(format!(
            "redirected to the callback with error {e}{d}"
        )));
    }
    let code =
        code.ok_or_else(|| target_err("redirected to the callback without a code".into()))?;

    // Code exchange.
    let token_url = Url::parse(&format!(
        "{}/realms/{realm}/protocol/openid-connect/token",
        target.url
    ))
    .map_err(|e| VerifyError::Setup(format!("target {} URL: {e}", target.code)))?;
    let exchange = vec![
        ("grant_type".to_string(), "authorization_code".to_string()),
        ("code".to_string(), code.to_string()),
        ("redirect_uri".to_string(), CALLBACK_URI.to_string()),
        ("client_id".to_string(), CLIENT_ID.to_string()),
        ("code_verifier".to_string(), verifier.to_string()),
    ];
    let resp = b.send(Method::POST, &token_url, Some(&exchange)).await?;
    drop(exchange);
    if !resp.status().is_success() {
        return Err(b.status_error(&token_url, resp).await);
    }
    let body = Zeroizing::new(b.body(&token_url, resp).await?);
    let id_token = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(o)) => o
            .get("id_token")
            .and_then(Value::as_str)
            .map(|t| Zeroizing::new(t.to_string()))
            .ok_or_else(|| target_err("the token endpoint's answer has no id_token".into()))?,
        _ => {
            return Err(target_err(
                "the token endpoint's answer is not a JSON object".into(),
            ));
        }
    };

    // Validation against the realm's keys.
    let jwks_url = Url::parse(&format!(
        "{}/realms/{realm}/protocol/openid-connect/certs",
        target.url
    ))
    .map_err(|e| VerifyError::Setup(format!("target {} URL: {e}", target.code)))?;
    let resp = b.send(Method::GET, &jwks_url, None).await?;
    if !resp.status().is_success() {
        return Err(b.status_error(&jwks_url, resp).await);
    }
    let jwks: Value = serde_json::from_str(&b.body(&jwks_url, resp).await?)
        .map_err(|_| target_err("the JWKS endpoint's answer is not JSON".into()))?;
    let issuer = target.issuer();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = jwt::validate(
        &id_token,
        &jwks,
        &Expect {
            issuer: &issuer,
            audience: CLIENT_ID,
            nonce: &nonce,
            now,
        },
    )
    .map_err(target_err)?;
    Ok(LoginResult {
        claims,
        latency: started.elapsed(),
        requests: b.requests,
        intermediate_pages: intermediate,
    })
}

fn action_url(b: &Browser<'_>, page: &Url, form: &Form) -> Result<Url, VerifyError> {
    let action = form.action.as_deref().unwrap_or("");
    if action.is_empty() {
        return Ok(page.clone());
    }
    page.join(action).map_err(|e| {
        b.flow(
            page,
            format!(
                "form `{}` has an unusable action: {e}",
                form.id.as_deref().unwrap_or("?")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_errors_have_no_query() {
        let u = Url::parse(
            "http://127.0.0.1:9/realms/dive-fra/broker/usa-idp/endpoint?code=SECRET&state=s",
        )
        .unwrap();
        assert_eq!(
            shown(&u),
            "http://127.0.0.1:9/realms/dive-fra/broker/usa-idp/endpoint"
        );
        assert_eq!(step(&u), "broker endpoint");
    }

    /// A CA of its own: what these tests reach is nothing or refused before TLS.
    fn trust() -> Trust {
        dive_tls::Authority::generate("test").unwrap().trust()
    }

    #[test]
    fn the_side_is_told_by_origin_or_by_realm() {
        let (usa, fra) = (
            Endpoint::new("USA", "http://127.0.0.1:1"),
            Endpoint::new("FRA", "http://127.0.0.1:2"),
        );
        let b = Browser::new(&trust(), &usa, &fra).unwrap();
        let side = |u: &str| b.side_of(&Url::parse(u).unwrap()).0;
        assert_eq!(side("http://127.0.0.1:1/realms/dive-usa/x"), Side::Home);
        assert_eq!(side("http://127.0.0.1:2/realms/dive-fra/x"), Side::Target);
        assert_eq!(side("http://elsewhere/"), Side::Target);
        // Both realms on one Keycloak.
        let shared = Endpoint::new("FRA", "http://127.0.0.1:1");
        let b = Browser::new(&trust(), &usa, &shared).unwrap();
        let side = |u: &str| b.side_of(&Url::parse(u).unwrap()).0;
        assert_eq!(side("http://127.0.0.1:1/realms/dive-usa/x"), Side::Home);
        assert_eq!(side("http://127.0.0.1:1/realms/dive-fra/x"), Side::Target);
    }

    #[test]
    fn oauth_errors_are_summarised() {
        assert_eq!(
            oauth_message(r#"{"error":"invalid_grant","error_description":"Code not valid"}"#),
            "invalid_grant: Code not valid"
        );
        assert_eq!(oauth_message("<html><title>Error</title></html>"), "Error");
    }

    #[tokio::test]
    async fn an_unreachable_home_or_target_is_named() {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let target = Endpoint::new("FRA", &format!("https://127.0.0.1:{port}"));
        let home = Endpoint::new("USA", "https://127.0.0.1:1");
        let e = brokered_login(&trust(), &home, &target, "u", "hunter2-password")
            .await
            .unwrap_err();
        let text = e.to_string();
        assert_eq!(
            text,
            format!(
                "target keycloak FRA (https://127.0.0.1:{port}) unreachable: connection refused"
            )
        );
        assert!(!text.contains("hunter2"));
    }
}
