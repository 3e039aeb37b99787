//! A small Keycloak admin API client: a password grant for `admin-cli` on realm `master`, a token
//! that is fetched again before it expires (and once more on a 401), and typed calls for what
//! the `keycloak.*` phases do.
//!
//! Errors keep Keycloak's HTTP status and its own message (`errorMessage`, `error_description`,
//! `error`), e.g. `keycloak FRA: POST /admin/realms/dive-fra/clients: 409 Conflict: Client
//! dive-verify already exists`, and say whether a retry can help. Passwords and tokens never
//! appear in errors, logs or `Debug` output.

use crate::types::{ClientRep, ClientScopeRep, ProtocolMapperRep, RealmRep, UserRep};
use dive_error::Classify;
use dive_tls::Trust;
use reqwest::{Method, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// A token is fetched again when less than this is left of its lifetime.
const TOKEN_MARGIN: Duration = Duration::from_secs(15);
/// Whole-request timeout of admin calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest piece of a non-JSON error body quoted in an error.
const MAX_BODY_QUOTE: usize = 200;

/// What went wrong talking to Keycloak. Never holds a password or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeycloakError {
    /// Keycloak answered with an error status; `message` is its own explanation.
    #[error("{target}: {method} {path}: {status}{}", detail(.message))]
    Status {
        target: String,
        method: String,
        path: String,
        status: StatusCode,
        message: String,
        /// The server's `Retry-After` (seconds form), when it sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, DNS, timeout.
    #[error("{target}: {method} {path}: {message}")]
    Transport {
        target: String,
        method: String,
        path: String,
        message: String,
        timeout: bool,
    },
    /// An answer that is not what the admin API documents.
    #[error("{target}: {method} {path}: unexpected answer: {message}")]
    Protocol {
        target: String,
        method: String,
        path: String,
        message: String,
    },
    /// The server's certificate was refused (another CA, a name it is not valid for, expired):
    /// waiting will not fix it.
    #[error(
        "{target}: {method} {path}: {}: {message}",
        dive_tls::CERTIFICATE_REFUSED
    )]
    Certificate {
        target: String,
        method: String,
        path: String,
        message: String,
    },
    /// [`wait_for_admin_token`] ran out of time.
    #[error("{target}: no admin token after {:.1}s (last error: {last})", .waited.as_secs_f32())]
    NotReady {
        target: String,
        waited: Duration,
        last: String,
    },
    /// Keycloak accepted a change but does not show it (e.g. attributes dropped by the user
    /// profile), or something else a retry will not fix.
    #[error("{target}: {message}")]
    Invalid { target: String, message: String },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl KeycloakError {
    /// The HTTP status Keycloak answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            KeycloakError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Keycloak's own message (empty when it gave none or did not answer).
    pub fn message(&self) -> &str {
        match self {
            KeycloakError::Status { message, .. } => message,
            _ => "",
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// Keycloak refused a login's credentials (401, or 400 `invalid_grant`).
    pub fn is_refused_credentials(&self) -> bool {
        match self.status() {
            Some(StatusCode::UNAUTHORIZED) => true,
            Some(StatusCode::BAD_REQUEST) => self.message().contains("invalid_grant"),
            _ => false,
        }
    }
}

impl dive_error::Classify for KeycloakError {
    /// Whether trying again later can help: no answer, 5xx, 408 and 429 yes; other 4xx no (a 409
    /// is "already there" for callers that create things).
    fn is_retryable(&self) -> bool {
        match self {
            KeycloakError::Transport { .. } | KeycloakError::NotReady { .. } => true,
            KeycloakError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            KeycloakError::Protocol { .. }
            | KeycloakError::Invalid { .. }
            | KeycloakError::Certificate { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            KeycloakError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Keycloak's explanation in an error body: `errorMessage` (admin API), else
/// `error_description` / `error` (OAuth endpoints), else the start of the text.
pub(crate) fn error_message(body: &str) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(body) {
        let text = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let mut msg = match (
            text("errorMessage"),
            text("error_description"),
            text("error"),
        ) {
            (Some(m), _, _) => m.to_string(),
            (None, Some(d), Some(e)) if d != e => format!("{d} ({e})"),
            (None, Some(d), _) => d.to_string(),
            (None, None, Some(e)) => e.to_string(),
            (None, None, None) => return quote(body),
        };
        if let Some(field) = text("field") {
            msg.push_str(&format!(" (field {field})"));
        }
        return msg;
    }
    quote(body)
}

fn quote(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > MAX_BODY_QUOTE {
        let cut: String = flat.chars().take(MAX_BODY_QUOTE).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// The error's cause chain, without reqwest's "error sending request for url (...)" preamble
/// repeated (the method and path are already in the message).
fn transport_error(target: &str, method: &Method, path: &str, e: &reqwest::Error) -> KeycloakError {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    let message = if e.is_timeout() {
        "timed out".to_string()
    } else if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    if let Some(problem) = dive_tls::certificate_problem(e) {
        return KeycloakError::Certificate {
            target: target.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            message: problem,
        };
    }
    KeycloakError::Transport {
        target: target.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        message,
        timeout: e.is_timeout(),
    }
}

/// A write on its way: unless the server answered it (or it never left, a refused connection),
/// it is recorded as of unknown outcome when dropped — after a transport error, and also when
/// the caller gave up on it (a phase timeout or cancel drops the request mid-flight).
struct InFlight<'a> {
    base: &'a str,
    settled: bool,
}

impl<'a> InFlight<'a> {
    fn new(base: &'a str) -> Self {
        InFlight {
            base,
            settled: false,
        }
    }

    fn settled(&mut self) {
        self.settled = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            crate::settle::record(self.base);
        }
    }
}

/// Turns a non-2xx answer into an error carrying Keycloak's message.
async fn status_error(target: &str, method: &Method, path: &str, resp: Response) -> KeycloakError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    KeycloakError::Status {
        target: target.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        status,
        message: error_message(&body),
        retry_after,
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client for Keycloak's HTTPS endpoints that trusts the dive CA and nothing else.
pub(crate) fn http_client(trust: &Trust) -> Result<reqwest::Client, KeycloakError> {
    trust
        .client(reqwest::Client::builder())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| KeycloakError::Invalid {
            target: "keycloak".into(),
            message: format!("cannot build an HTTP client: {e}"),
        })
}

/// A token endpoint's answer; tokens are zeroed when dropped and never printed.
pub(crate) struct Tokens {
    pub access_token: Zeroizing<String>,
    pub id_token: Option<Zeroizing<String>>,
    pub expires_in: Duration,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A serde_json error without the text it choked on (a body may hold a token or a secret).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    format!(
        "malformed JSON ({:?} error at line {}, column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// A resource-owner password grant: who logs in where.
pub(crate) struct Grant<'a> {
    pub realm: &'a str,
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub scope: Option<&'a str>,
}

/// A resource-owner password grant at `grant.realm`'s token endpoint.
pub(crate) async fn password_grant(
    http: &reqwest::Client,
    target: &str,
    base: &str,
    grant: &Grant<'_>,
) -> Result<Tokens, KeycloakError> {
    let Grant {
        realm,
        client_id,
        username,
        password,
        scope,
    } = *grant;
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        id_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let path = format!("/realms/{}/protocol/openid-connect/token", enc(realm));
    let mut form = vec![
        ("grant_type", "password"),
        ("client_id", client_id),
        ("username", username),
        ("password", password),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let method = Method::POST;
    let resp = dive_tls::send(http.post(format!("{base}{path}")).form(&form))
        .await
        .map_err(|e| transport_error(target, &method, &path, &e))?;
    if !resp.status().is_success() {
        return Err(status_error(target, &method, &path, resp).await);
    }
    let body = Zeroizing::new(
        resp.text()
            .await
            .map_err(|e| transport_error(target, &method, &path, &e))?,
    );
    let answer: Answer = serde_json::from_str(&body).map_err(|e| KeycloakError::Protocol {
        target: target.to_string(),
        method: method.to_string(),
        path: path.clone(),
        message: format!("token response: {}", json_error(&e)),
    })?;
    Ok(Tokens {
        access_token: Zeroizing::new(answer.access_token),
        id_token: answer.id_token.map(Zeroizing::new),
        expires_in: Duration::from_secs(answer.expires_in.unwrap_or(60)),
    })
}

struct AdminToken {
    value: Zeroizing<String>,
    renew_at: Instant,
}

/// A logged-in admin API client for one Keycloak server.
pub struct KeycloakAdmin {
    http: reqwest::Client,
    base: String,
    target: String,
    user: String,
    password: Zeroizing<String>,
    token: Mutex<Option<AdminToken>>,
    logins: AtomicU32,
}

impl fmt::Debug for KeycloakAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeycloakAdmin")
            .field("target", &self.target)
            .field("base_url", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn normalise_base(base_url: &str) -> String {
    base_url.trim().trim_end_matches('/').to_string()
}

impl KeycloakAdmin {
    /// Logs in as `admin_user` (realm `master`, client `admin-cli`). Errors name the server by
    /// its URL; see [`KeycloakAdmin::connect_named`].
    pub async fn connect(
        trust: &Trust,
        base_url: &str,
        admin_user: &str,
        admin_password: &str,
    ) -> Result<Self, KeycloakError> {
        let name = format!("keycloak {}", normalise_base(base_url));
        Self::connect_named(trust, &name, base_url, admin_user, admin_password).await
    }

    /// Like [`KeycloakAdmin::connect`], with `name` (e.g. `keycloak FRA`) leading every error.
    pub async fn connect_named(
        trust: &Trust,
        name: &str,
        base_url: &str,
        admin_user: &str,
        admin_password: &str,
    ) -> Result<Self, KeycloakError> {
        let admin = KeycloakAdmin {
            http: http_client(trust)?,
            base: normalise_base(base_url),
            target: name.to_string(),
            user: admin_user.to_string(),
            password: Zeroizing::new(admin_password.to_string()),
            token: Mutex::new(None),
            logins: AtomicU32::new(0),
        };
        admin.token(false).await?;
        // The server answers: let it apply any write an earlier client sent it without an
        // answer before this one reads anything (see the settle module).
        crate::settle::wait(&admin.base).await;
        Ok(admin)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// How many admin tokens this client has fetched (1 after connecting; more when tokens
    /// expired or were refused).
    pub fn logins(&self) -> u32 {
        self.logins.load(Ordering::Relaxed)
    }

    /// The name errors start with.
    pub fn name(&self) -> &str {
        &self.target
    }

    /// A valid access token; fetched again when `renew` or when it is about to expire.
    async fn token(&self, renew: bool) -> Result<Zeroizing<String>, KeycloakError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && !renew
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let started = Instant::now();
        let grant = Grant {
            realm: "master",
            client_id: "admin-cli",
            username: &self.user,
            password: &self.password,
            scope: None,
        };
        let tokens = password_grant(&self.http, &self.target, &self.base, &grant).await?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        let renew_at = started + tokens.expires_in.saturating_sub(TOKEN_MARGIN);
        let value = tokens.access_token.clone();
        *slot = Some(AdminToken {
            value: tokens.access_token,
            renew_at,
        });
        Ok(value)
    }

    /// One admin call: a 401 renews the token and tries once more; a non-2xx answer becomes a
    /// [`KeycloakError::Status`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Response, KeycloakError> {
        let mut renew = false;
        loop {
            let token = self.token(renew).await?;
            // Sent as X-Request-ID and logged, so a request in Keycloak's access log and the
            // dive run (and phase) that made it can be matched.
            let request_id = uuid::Uuid::now_v7().to_string();
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token.as_str())
                .header("X-Request-ID", &request_id);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let mut in_flight = (method != Method::GET).then(|| InFlight::new(&self.base));
            let sent = dive_tls::send(req).await;
            if let Some(w) = in_flight.as_mut()
                && sent
                    .as_ref()
                    .map_or_else(reqwest::Error::is_connect, |_| true)
            {
                w.settled();
            }
            let resp = sent.map_err(|e| transport_error(&self.target, &method, path, &e))?;
            tracing::debug!(
                keycloak = %self.target,
                request_id,
                method = %method,
                path,
                status = resp.status().as_u16(),
                "keycloak admin request"
            );
            if resp.status() == StatusCode::UNAUTHORIZED && !renew {
                tracing::debug!(keycloak = %self.target, "admin token refused; logging in again");
                renew = true;
                continue;
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            return Err(status_error(&self.target, &method, path, resp).await);
        }
    }

    fn protocol(&self, method: &Method, path: &str, message: String) -> KeycloakError {
        KeycloakError::Protocol {
            target: self.target.clone(),
            method: method.to_string(),
            path: path.to_string(),
            message,
        }
    }

    /// An error for something Keycloak did not do as asked.
    pub fn invalid(&self, message: impl Into<String>) -> KeycloakError {
        KeycloakError::Invalid {
            target: self.target.clone(),
            message: message.into(),
        }
    }

    /// `GET path` (e.g. `/admin/realms/dive-fra`), decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, KeycloakError> {
        let resp = self.send(Method::GET, path, None).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&self.target, &Method::GET, path, &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol(&Method::GET, path, json_error(&e)))
    }

    /// `GET path`; `None` on 404.
    pub async fn get_opt<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, KeycloakError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST path` with a JSON body; returns the id at the end of the `Location` header, if any.
    pub async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<String>, KeycloakError> {
        let body = serde_json::to_value(body)
            .map_err(|e| self.protocol(&Method::POST, path, json_error(&e)))?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        Ok(resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.trim_end_matches('/').rsplit('/').next())
            .map(str::to_string))
    }

    /// `PUT path` with a JSON body (or none).
    pub async fn put<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), KeycloakError> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| self.protocol(&Method::PUT, path, json_error(&e)))?;
        self.send(Method::PUT, path, body).await?;
        Ok(())
    }

    /// `DELETE path`; `false` when it was not there (404).
    pub async fn delete(&self, path: &str) -> Result<bool, KeycloakError> {
        match self.send(Method::DELETE, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- realms ----

    pub async fn realm(&self, realm: &str) -> Result<Option<RealmRep>, KeycloakError> {
        self.get_opt(&realm_path(realm, "")).await
    }

    pub async fn create_realm(&self, rep: &RealmRep) -> Result<(), KeycloakError> {
        self.post("/admin/realms", rep).await.map(|_| ())
    }

    pub async fn update_realm(&self, realm: &str, rep: &RealmRep) -> Result<(), KeycloakError> {
        self.put(&realm_path(realm, ""), Some(rep)).await
    }

    pub async fn delete_realm(&self, realm: &str) -> Result<bool, KeycloakError> {
        self.delete(&realm_path(realm, "")).await
    }

    // ---- user profile ----

    /// The realm's user profile configuration (`UPConfig`), kept as JSON so that a merge never
    /// loses what dive does not model.
    pub async fn user_profile(&self, realm: &str) -> Result<Value, KeycloakError> {
        self.get(&realm_path(realm, "/users/profile")).await
    }

    pub async fn update_user_profile(
        &self,
        realm: &str,
        config: &Value,
    ) -> Result<(), KeycloakError> {
        self.put(&realm_path(realm, "/users/profile"), Some(config))
            .await
    }

    // ---- client scopes ----

    pub async fn client_scopes(&self, realm: &str) -> Result<Vec<ClientScopeRep>, KeycloakError> {
        self.get(&realm_path(realm, "/client-scopes")).await
    }

    pub async fn client_scope_by_name(
        &self,
        realm: &str,
        name: &str,
    ) -> Result<Option<ClientScopeRep>, KeycloakError> {
        Ok(self
            .client_scopes(realm)
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// Creates a client scope and returns its id.
    pub async fn create_client_scope(
        &self,
        realm: &str,
        rep: &ClientScopeRep,
    ) -> Result<String, KeycloakError> {
        let path = realm_path(realm, "/client-scopes");
        match self.post(&path, rep).await? {
            Some(id) => Ok(id),
            None => self
                .client_scope_by_name(realm, &rep.name)
                .await?
                .and_then(|s| s.id)
                .ok_or_else(|| {
                    self.protocol(&Method::POST, &path, "no id for the new scope".into())
                }),
        }
    }

    pub async fn update_client_scope(
        &self,
        realm: &str,
        id: &str,
        rep: &ClientScopeRep,
    ) -> Result<(), KeycloakError> {
        self.put(
            &realm_path(realm, &format!("/client-scopes/{}", enc(id))),
            Some(rep),
        )
        .await
    }

    pub async fn delete_client_scope(&self, realm: &str, id: &str) -> Result<bool, KeycloakError> {
        self.delete(&realm_path(realm, &format!("/client-scopes/{}", enc(id))))
            .await
    }

    fn scope_mappers_path(realm: &str, scope_id: &str) -> String {
        realm_path(
            realm,
            &format!("/client-scopes/{}/protocol-mappers/models", enc(scope_id)),
        )
    }

    pub async fn client_scope_mappers(
        &self,
        realm: &str,
        scope_id: &str,
    ) -> Result<Vec<ProtocolMapperRep>, KeycloakError> {
        self.get(&Self::scope_mappers_path(realm, scope_id)).await
    }

    pub async fn create_client_scope_mapper(
        &self,
        realm: &str,
        scope_id: &str,
        rep: &ProtocolMapperRep,
    ) -> Result<(), KeycloakError> {
        self.post(&Self::scope_mappers_path(realm, scope_id), rep)
            .await
            .map(|_| ())
    }

    pub async fn update_client_scope_mapper(
        &self,
        realm: &str,
        scope_id: &str,
        mapper_id: &str,
        rep: &ProtocolMapperRep,
    ) -> Result<(), KeycloakError> {
        let path = format!(
            "{}/{}",
            Self::scope_mappers_path(realm, scope_id),
            enc(mapper_id)
        );
        self.put(&path, Some(rep)).await
    }

    pub async fn delete_client_scope_mapper(
        &self,
        realm: &str,
        scope_id: &str,
        mapper_id: &str,
    ) -> Result<bool, KeycloakError> {
        let path = format!(
            "{}/{}",
            Self::scope_mappers_path(realm, scope_id),
            enc(mapper_id)
        );
        self.delete(&path).await
    }

    /// The realm's default default-client-scopes (given to every new client).
    pub async fn default_default_client_scopes(
        &self,
        realm: &str,
    ) -> Result<Vec<ClientScopeRep>, KeycloakError> {
        self.get(&realm_path(realm, "/default-default-client-scopes"))
            .await
    }

    pub async fn add_default_default_client_scope(
        &self,
        realm: &str,
        scope_id: &str,
    ) -> Result<(), KeycloakError> {
        let path = realm_path(
            realm,
            &format!("/default-default-client-scopes/{}", enc(scope_id)),
        );
        self.put::<Value>(&path, None).await
    }

    pub async fn remove_default_default_client_scope(
        &self,
        realm: &str,
        scope_id: &str,
    ) -> Result<bool, KeycloakError> {
        let path = realm_path(
            realm,
            &format!("/default-default-client-scopes/{}", enc(scope_id)),
        );
        self.delete(&path).await
    }

    // ---- clients ----

    pub async fn client_by_client_id(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<Option<ClientRep>, KeycloakError> {
        let path = realm_path(realm, &format!("/clients?clientId={}", enc(client_id)));
        let found: Vec<ClientRep> = self.get(&path).await?;
        Ok(found.into_iter().find(|c| c.client_id == client_id))
    }

    /// Creates a client and returns its internal id.
    pub async fn create_client(
        &self,
        realm: &str,
        rep: &ClientRep,
    ) -> Result<String, KeycloakError> {
        let path = realm_path(realm, "/clients");
        match self.post(&path, rep).await? {
            Some(id) => Ok(id),
            None => self
                .client_by_client_id(realm, &rep.client_id)
                .await?
                .and_then(|c| c.id)
                .ok_or_else(|| {
                    self.protocol(&Method::POST, &path, "no id for the new client".into())
                }),
        }
    }

    pub async fn update_client(
        &self,
        realm: &str,
        id: &str,
        rep: &ClientRep,
    ) -> Result<(), KeycloakError> {
        self.put(
            &realm_path(realm, &format!("/clients/{}", enc(id))),
            Some(rep),
        )
        .await
    }

    pub async fn delete_client(&self, realm: &str, id: &str) -> Result<bool, KeycloakError> {
        self.delete(&realm_path(realm, &format!("/clients/{}", enc(id))))
            .await
    }

    pub async fn client_default_scopes(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<Vec<ClientScopeRep>, KeycloakError> {
        self.get(&realm_path(
            realm,
            &format!("/clients/{}/default-client-scopes", enc(id)),
        ))
        .await
    }

    pub async fn add_client_default_scope(
        &self,
        realm: &str,
        id: &str,
        scope_id: &str,
    ) -> Result<(), KeycloakError> {
        let path = realm_path(
            realm,
            &format!(
                "/clients/{}/default-client-scopes/{}",
                enc(id),
                enc(scope_id)
            ),
        );
        self.put::<Value>(&path, None).await
    }

    // ---- users ----

    pub async fn user_by_username(
        &self,
        realm: &str,
        username: &str,
    ) -> Result<Option<UserRep>, KeycloakError> {
        let path = realm_path(
            realm,
            &format!("/users?username={}&exact=true", enc(username)),
        );
        let found: Vec<UserRep> = self.get(&path).await?;
        Ok(found
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(username)))
    }

    pub async fn user(&self, realm: &str, id: &str) -> Result<Option<UserRep>, KeycloakError> {
        self.get_opt(&realm_path(realm, &format!("/users/{}", enc(id))))
            .await
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, realm: &str, rep: &UserRep) -> Result<String, KeycloakError> {
        let path = realm_path(realm, "/users");
        match self.post(&path, rep).await? {
            Some(id) => Ok(id),
            None => self
                .user_by_username(realm, &rep.username)
                .await?
                .and_then(|u| u.id)
                .ok_or_else(|| {
                    self.protocol(&Method::POST, &path, "no id for the new user".into())
                }),
        }
    }

    pub async fn update_user(
        &self,
        realm: &str,
        id: &str,
        rep: &UserRep,
    ) -> Result<(), KeycloakError> {
        self.put(
            &realm_path(realm, &format!("/users/{}", enc(id))),
            Some(rep),
        )
        .await
    }

    pub async fn delete_user(&self, realm: &str, id: &str) -> Result<bool, KeycloakError> {
        self.delete(&realm_path(realm, &format!("/users/{}", enc(id))))
            .await
    }

    /// Sets a user's password (not temporary).
    pub async fn reset_password(
        &self,
        realm: &str,
        id: &str,
        password: &str,
    ) -> Result<(), KeycloakError> {
        #[derive(Serialize)]
        struct Credential<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            value: &'a str,
            temporary: bool,
        }
        let path = realm_path(realm, &format!("/users/{}/reset-password", enc(id)));
        self.put(
            &path,
            Some(&Credential {
                kind: "password",
                value: password,
                temporary: false,
            }),
        )
        .await
    }

    /// Whether `username` can log in to `realm` with `password` (a password grant on the realm's
    /// built-in public client `admin-cli`). A refused login is `Ok(false)`.
    pub async fn check_password(
        &self,
        realm: &str,
        username: &str,
        password: &str,
    ) -> Result<bool, KeycloakError> {
        let grant = Grant {
            realm,
            client_id: "admin-cli",
            username,
            password,
            scope: None,
        };
        match password_grant(&self.http, &self.target, &self.base, &grant).await {
            Ok(_) => Ok(true),
            Err(KeycloakError::Status { status, .. })
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// `/admin/realms/<realm><rest>`.
pub fn realm_path(realm: &str, rest: &str) -> String {
    format!("/admin/realms/{}{rest}", enc(realm))
}

/// Polls `base_url` until the admin API issues a token for `user` *and* answers an admin call
/// with it, and returns how long that took. This, not the HTTP health endpoint, is what "ready"
/// means for dive: Keycloak reports healthy before its admin API can serve.
///
/// No answer, 5xx and 404 (still starting) are polled through; a refused login (400/401) is
/// returned at once, since waiting will not fix a wrong password.
pub async fn wait_for_admin_token(
    trust: &Trust,
    base_url: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<Duration, KeycloakError> {
    let started = Instant::now();
    let target = format!("keycloak {}", normalise_base(base_url));
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(KeycloakError::NotReady {
                target,
                waited: started.elapsed(),
                last,
            });
        }
        let attempt = async {
            let admin =
                KeycloakAdmin::connect_named(trust, &target, base_url, user, password).await?;
            admin.get::<Value>(&realm_path("master", "")).await?;
            Ok::<_, KeycloakError>(())
        };
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(())) => {
                let took = started.elapsed();
                tracing::info!(keycloak = %target, ?took, "admin API ready");
                return Ok(took);
            }
            Ok(Err(e)) if e.is_retryable() || e.is_not_found() => last = e.to_string(),
            Ok(Err(e)) => return Err(e),
            Err(_) if last.is_empty() => last = "no answer before the deadline".into(),
            Err(_) => {}
        }
        tracing::debug!(keycloak = %target, %last, "admin API not ready yet");
        tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_keycloak_bodies() {
        assert_eq!(
            error_message(r#"{"errorMessage":"Client dive-verify already exists"}"#),
            "Client dive-verify already exists"
        );
        assert_eq!(
            error_message(
                r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#
            ),
            "Invalid user credentials (invalid_grant)"
        );
        assert_eq!(
            error_message(r#"{"error":"Realm not found."}"#),
            "Realm not found."
        );
        assert_eq!(
            error_message(r#"{"field":"email","errorMessage":"invalidEmailMessage"}"#),
            "invalidEmailMessage (field email)"
        );
        assert_eq!(
            error_message("<html>\n  <b>oops</b>\n</html>"),
            "<html> <b>oops</b> </html>"
        );
        assert_eq!(error_message(""), "");
        assert!(error_message(&"x".repeat(1000)).chars().count() <= MAX_BODY_QUOTE + 1);
    }

    #[test]
    fn errors_keep_status_and_message_and_say_if_retrying_helps() {
        let e = KeycloakError::Status {
            target: "keycloak FRA".into(),
            method: "POST".into(),
            path: "/admin/realms/dive-fra/clients".into(),
            status: StatusCode::CONFLICT,
            message: "Client dive-verify already exists".into(),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "keycloak FRA: POST /admin/realms/dive-fra/clients: 409 Conflict: Client dive-verify \
             already exists"
        );
        assert!(e.is_conflict() && !e.is_retryable());
        let status = |s: u16| KeycloakError::Status {
            target: "k".into(),
            method: "GET".into(),
            path: "/".into(),
            status: StatusCode::from_u16(s).unwrap(),
            message: String::new(),
            retry_after: (s == 503).then(|| Duration::from_secs(7)),
        };
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert_eq!(status(503).to_string(), "k: GET /: 503 Service Unavailable");
        assert_eq!(status(503).retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(status(401).retry_after(), None);
    }

    #[tokio::test]
    async fn no_answer_is_a_retryable_transport_error_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("https://127.0.0.1:{port}/");
        let trust = dive_tls::Authority::generate("test").unwrap().trust();
        let err = KeycloakAdmin::connect(&trust, &url, "admin", "s3cret-Passw0rd")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, KeycloakError::Transport { .. }), "{text}");
        assert!(err.is_retryable());
        assert!(
            text.starts_with(&format!(
                "keycloak https://127.0.0.1:{port}: POST /realms/master/protocol/openid-connect/token: "
            )),
            "{text}"
        );
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(!text.contains("s3cret") && !format!("{err:?}").contains("s3cret"));

        let started = Instant::now();
        let err = wait_for_admin_token(&trust, &url, "admin", "x", Duration::from_millis(1200))
            .await
            .unwrap_err();
        assert!(matches!(err, KeycloakError::NotReady { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("connection refused"),
            "{err}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1200) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("dive-fra"), "dive-fra");
        assert_eq!(enc("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(realm_path("x/y", "/users"), "/admin/realms/x%2Fy/users");
    }
}
