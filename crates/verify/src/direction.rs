//! One direction X→P: every test user of X logs in at P through P's `<x>-idp`; the four DIVE
//! claims are compared with the user's attributes at X; the result is recorded.

use crate::{Endpoint, VerifyError, brokered_login};
use chrono::{DateTime, Utc};
use dive_error::Classify;
use dive_keycloak::{DIVE_ATTRIBUTES, KeycloakAdmin, test_users, user_password_secret};
use dive_secrets::SecretStore;
use dive_tls::Trust;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Brokered logins tried per user when a login fails in a way another may not
/// ([`VerifyError::is_worth_another_login`]; each request waits 10 s at most).
const LOGIN_ATTEMPTS: u32 = 3;

/// One claim that differs from the user's attribute at home (values compared as sets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimMismatch {
    pub claim: String,
    /// The attribute's values at home.
    pub expected: Vec<String>,
    /// The claim in the target's ID token (`null` when absent).
    pub got: Value,
}

/// One user's brokered login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserReport {
    pub username: String,
    pub ok: bool,
    /// The four DIVE claims of the ID token (other claims left out); `{}` when the login failed.
    pub claims: Value,
    pub mismatches: Vec<ClaimMismatch>,
    /// The brokered login's latency (0 when it failed).
    pub latency_ms: u64,
    /// Logins tried: more than one when a request timed out.
    pub attempts: u32,
    /// Why the login failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The login was not tried because dive's state database could not serve its password.
    #[serde(skip)]
    pub state_db_unavailable: bool,
}

/// One direction: users of `from` logging in at `to`.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionReport {
    pub from: String,
    pub to: String,
    pub ok: bool,
    /// Wall-clock time of the whole direction (the users log in side by side).
    pub latency_ms: u64,
    pub users: Vec<UserReport>,
    /// A failure before any login (admin API of `from`, a missing secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Part of the direction was not tried because dive's state database could not serve a
    /// secret: the failure says nothing about the federation.
    #[serde(skip)]
    pub state_db_unavailable: bool,
}

impl DirectionReport {
    /// Why the direction failed: its own error, or each failed user's; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        self.error.clone().or_else(|| {
            let failed: Vec<String> = self
                .users
                .iter()
                .filter(|u| !u.ok)
                .map(|u| match &u.error {
                    Some(e) => format!("{}: {e}", u.username),
                    None => format!(
                        "{}: claims differ: {}",
                        u.username,
                        u.mismatches
                            .iter()
                            .map(|m| m.claim.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
                .collect();
            (!failed.is_empty()).then(|| failed.join("; "))
        })
    }
}

/// A claim or attribute as a set of strings (a string is a set of one).
fn value_set(v: Option<&Value>) -> BTreeSet<String> {
    match v {
        Some(Value::String(s)) => BTreeSet::from([s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::Null) | None => BTreeSet::new(),
        Some(other) => BTreeSet::from([other.to_string()]),
    }
}

/// Compares the four DIVE claims with `attributes` (the user at home). An attribute missing at
/// home is a mismatch too: the check proves the values travelled, not that both are empty.
pub fn compare_claims(
    claims: &Value,
    attributes: &BTreeMap<String, Vec<String>>,
) -> Vec<ClaimMismatch> {
    DIVE_ATTRIBUTES
        .iter()
        .filter_map(|name| {
            let expected: BTreeSet<String> = attributes
                .get(*name)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let got = claims.get(*name);
            (expected.is_empty() || value_set(got) != expected).then(|| ClaimMismatch {
                claim: name.to_string(),
                expected: expected.into_iter().collect(),
                got: got.cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

fn dive_claims(claims: &Value) -> Value {
    Value::Object(
        DIVE_ATTRIBUTES
            .iter()
            .filter_map(|n| claims.get(*n).map(|v| (n.to_string(), v.clone())))
            .collect(),
    )
}

/// A secret's value, or why it could not be read and whether the state database was
/// unavailable.
async fn secret(
    secrets: &SecretStore,
    name: &str,
) -> Result<zeroize::Zeroizing<String>, (String, bool)> {
    match secrets.get(name).await {
        Ok(Some((s, _))) => Ok(zeroize::Zeroizing::new(s.expose().to_string())),
        Ok(None) => Err((format!("secret `{name}` is not in the store"), false)),
        Err(e) => Err((
            format!("reading secret `{name}`: {e}"),
            e.is_state_db_unavailable(),
        )),
    }
}

/// Test users of `from` log in at `to` (all of them, or the first `limit`), side by side; never
/// fails as a whole, problems are in the report.
pub async fn verify_direction(
    secrets: &SecretStore,
    trust: &Trust,
    from: &Endpoint,
    to: &Endpoint,
    limit: Option<usize>,
) -> DirectionReport {
    let started = Instant::now();
    let mut report = DirectionReport {
        from: from.code.clone(),
        to: to.code.clone(),
        ok: false,
        latency_ms: 0,
        users: Vec::new(),
        error: None,
        state_db_unavailable: false,
    };
    let admin = crate::admin_login(
        secrets,
        trust,
        &format!("home keycloak {} ({})", from.code, from.url),
        &from.code,
        &from.url,
    )
    .await;
    match admin {
        Ok(admin) => {
            let users = test_users(&from.code);
            let users = &users[..limit.unwrap_or(users.len()).min(users.len())];
            report.users = futures::future::join_all(
                users
                    .iter()
                    .map(|u| verify_user(&admin, secrets, trust, from, to, &u.username)),
            )
            .await;
            report.ok = !report.users.is_empty() && report.users.iter().all(|u| u.ok);
            report.state_db_unavailable = report.users.iter().any(|u| u.state_db_unavailable);
        }
        Err(e) => {
            report.state_db_unavailable = e.is_state_db_unavailable();
            report.error = Some(format!("reading the users' attributes: {e}"));
        }
    }
    report.latency_ms = started.elapsed().as_millis() as u64;
    report
}

/// One user of `from` logs in at `to`; the claims are compared with the attributes at home.
async fn verify_user(
    admin: &KeycloakAdmin,
    secrets: &SecretStore,
    trust: &Trust,
    from: &Endpoint,
    to: &Endpoint,
    username: &str,
) -> UserReport {
    let mut u = UserReport {
        username: username.to_string(),
        ok: false,
        claims: Value::Object(Default::default()),
        mismatches: Vec::new(),
        latency_ms: 0,
        attempts: 0,
        error: None,
        state_db_unavailable: false,
    };
    let realm = from.realm();
    let attributes = match admin.user_by_username(&realm, username).await {
        Ok(Some(found)) => match &found.id {
            Some(id) => admin
                .user(&realm, id)
                .await
                .map(|full| full.and_then(|f| f.attributes).unwrap_or_default())
                .map_err(|e| e.to_string()),
            None => Ok(found.attributes.unwrap_or_default()),
        },
        Ok(None) => Err(format!(
            "home {}: user {username} does not exist in {realm}",
            from.code
        )),
        Err(e) => Err(e.to_string()),
    };
    let attributes = match attributes {
        Ok(a) => a,
        Err(e) => {
            u.error = Some(e);
            return u;
        }
    };
    let password = match secret(secrets, &user_password_secret(&from.code, username)).await {
        Ok(p) => p,
        Err((e, state_db_unavailable)) => {
            u.error = Some(e);
            u.state_db_unavailable = state_db_unavailable;
            return u;
        }
    };
    let mut outcome = brokered_login(trust, from, to, username, &password).await;
    u.attempts = 1;
    while u.attempts < LOGIN_ATTEMPTS
        && outcome
            .as_ref()
            .is_err_and(VerifyError::is_worth_another_login)
    {
        if let Err(e) = &outcome {
            tracing::warn!(user = %username, "brokered login failed, trying again: {e}");
        }
        u.attempts += 1;
        outcome = brokered_login(trust, from, to, username, &password).await;
    }
    match outcome {
        Ok(login) => {
            u.latency_ms = login.latency.as_millis() as u64;
            u.mismatches = compare_claims(&login.claims, &attributes);
            u.claims = dive_claims(&login.claims);
            u.ok = u.mismatches.is_empty();
            tracing::info!(
                from = %from.code, to = %to.code, user = %username,
                latency_ms = u.latency_ms, ok = u.ok, "brokered login"
            );
        }
        Err(e) => u.error = Some(e.to_string()),
    }
    u
}

/// Stores one direction's result in `federation_verifications`.
pub async fn record(
    pool: &PgPool,
    run_id: Option<uuid::Uuid>,
    report: &DirectionReport,
) -> Result<(), VerifyError> {
    let users = serde_json::to_value(&report.users)
        .map_err(|e| VerifyError::Setup(format!("encoding the verification: {e}")))?;
    let error = report.failure();
    sqlx::query(
        "INSERT INTO federation_verifications (run_id, source, target, ok, latency_ms, users, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(run_id)
    .bind(&report.from)
    .bind(&report.to)
    .bind(report.ok)
    .bind(i32::try_from(report.latency_ms).unwrap_or(i32::MAX))
    .bind(users)
    .bind(error)
    .execute(pool)
    .await
    .map_err(|e| VerifyError::setup_db("recording the verification", &e))?;
    Ok(())
}

/// The directions recorded by run `run_id` (the latest of each), hub first as recorded.
pub async fn for_run(
    pool: &PgPool,
    run_id: uuid::Uuid,
) -> Result<Vec<DirectionReport>, VerifyError> {
    let rows: Vec<(String, String, bool, i32, Value, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT ON (source, target) source, target, ok, latency_ms, users, error \
         FROM federation_verifications WHERE run_id = $1 ORDER BY source, target, id DESC",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .map_err(|e| VerifyError::setup_db("reading verifications", &e))?;
    let mut out = Vec::new();
    for (from, to, ok, latency_ms, users, error) in rows {
        let users: Vec<UserReport> = serde_json::from_value(users)
            .map_err(|e| VerifyError::Setup(format!("reading verifications: {e}")))?;
        // Whole-direction errors are recorded together with the users' own; keep only the former.
        let error = error.filter(|_| users.is_empty());
        out.push(DirectionReport {
            from,
            to,
            ok,
            latency_ms: latency_ms.max(0) as u64,
            users,
            error,
            state_db_unavailable: false,
        });
    }
    Ok(out)
}

/// The latest recorded verification of `source`→`target`: `(verified_at, ok, latency_ms,
/// error)`.
pub async fn latest(
    pool: &PgPool,
    source: &str,
    target: &str,
) -> Result<Option<(DateTime<Utc>, bool, i32, Option<String>)>, VerifyError> {
    sqlx::query_as(
        "SELECT verified_at, ok, latency_ms, error FROM federation_verifications \
         WHERE source = $1 AND target = $2 ORDER BY verified_at DESC, id DESC LIMIT 1",
    )
    .bind(source)
    .bind(target)
    .fetch_optional(pool)
    .await
    .map_err(|e| VerifyError::Setup(format!("reading verifications: {e}")))
}

/// When users of `source` last logged in at `target` with every check passing.
pub async fn last_success(
    pool: &PgPool,
    source: &str,
    target: &str,
) -> Result<Option<DateTime<Utc>>, VerifyError> {
    sqlx::query_scalar(
        "SELECT max(verified_at) FROM federation_verifications \
         WHERE source = $1 AND target = $2 AND ok",
    )
    .bind(source)
    .bind(target)
    .fetch_one(pool)
    .await
    .map_err(|e| VerifyError::Setup(format!("reading verifications: {e}")))
}

/// Every row of `federation_links`: `(hub, spoke, linked_at, updated_at)`, by hub and spoke.
pub async fn links(
    pool: &PgPool,
) -> Result<Vec<(String, String, DateTime<Utc>, DateTime<Utc>)>, VerifyError> {
    sqlx::query_as(
        "SELECT hub, spoke, linked_at, updated_at FROM federation_links ORDER BY hub, spoke",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| VerifyError::Setup(format!("reading federation_links: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_are_compared_as_sets() {
        let attrs = BTreeMap::from([
            ("uniqueID".to_string(), vec!["testuser-usa-1".to_string()]),
            ("clearance".to_string(), vec!["SECRET".to_string()]),
            ("countryOfAffiliation".to_string(), vec!["USA".to_string()]),
            (
                "acpCOI".to_string(),
                vec!["NATO".to_string(), "FVEY".to_string()],
            ),
        ]);
        let good = json!({"uniqueID": "testuser-usa-1", "clearance": "SECRET",
                          "countryOfAffiliation": "USA", "acpCOI": ["FVEY", "NATO"], "sub": "x"});
        assert!(compare_claims(&good, &attrs).is_empty());
        let bad = json!({"uniqueID": "testuser-usa-1", "clearance": "TOP_SECRET",
                         "countryOfAffiliation": "USA", "acpCOI": ["NATO"]});
        let m = compare_claims(&bad, &attrs);
        let names: Vec<&str> = m.iter().map(|m| m.claim.as_str()).collect();
        assert_eq!(names, ["clearance", "acpCOI"]);
        assert_eq!(m[0].got, json!("TOP_SECRET"));
        // Missing at home and in the token: still a mismatch.
        let m = compare_claims(&json!({}), &BTreeMap::new());
        assert_eq!(m.len(), 4);
        assert_eq!(dive_claims(&good).as_object().unwrap().len(), 4);
    }
}
