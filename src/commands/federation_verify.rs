//! `dive federation verify CODE` (the workflow `federation-verify`: a real brokered login per test
//! user and direction between the hub and spoke CODE, recorded in `federation_verifications`) and `dive federation status`
//! (every linked pair, each direction's last verification, whether the secret versions agree).

use crate::commands::federation_link::{Federated, federated};
use crate::commands::print_json;
use crate::commands::run::start_named;
use crate::commands::secrets::Access;
use crate::{config, database, exit};
use anyhow::{Context, Result};
use dive_engine::store::RunRecord;
use dive_engine::{PhaseState, RunOutcome, RunState};
use dive_phases::federation::{SecretVersions, secret_versions};
use dive_verify::{self as verify, DirectionReport};
use serde::Serialize;
use serde_json::{Value, json};

/// One verification of a linked pair: both directions, recorded.
pub struct PairVerification {
    pub hub: String,
    pub spoke: String,
    pub run_id: uuid::Uuid,
    /// The run succeeded and every direction passed.
    pub ok: bool,
    pub directions: Vec<DirectionReport>,
}

/// Runs `federation-verify` for the pair of spoke `code` and records each direction; a
/// direction that never got to log in (a Keycloak did not answer) is recorded failing, with
/// the reason. Used by `dive federation verify` and by `dive serve`'s heartbeat.
pub async fn verify_pair(code: &str) -> Result<PairVerification> {
    let Federated {
        hub,
        spoke,
        exec,
        params,
    } = federated(code).await?;
    let (engine, outcome) = start_named("federation-verify", &params, false, &exec).await?;
    let pool = engine.store().pool().clone();
    let mut recorded = verify::for_run(&pool, outcome.run_id).await?;
    let run = engine.store().load_run(outcome.run_id).await?;
    let mut directions = Vec::new();
    for (from, to) in [(&hub.code, &spoke.code), (&spoke.code, &hub.code)] {
        if let Some(i) = recorded.iter().position(|d| &d.from == from && &d.to == to) {
            directions.push(recorded.swap_remove(i));
            continue;
        }
        let report = DirectionReport {
            from: from.clone(),
            to: to.clone(),
            ok: false,
            latency_ms: 0,
            users: Vec::new(),
            error: Some(format!("not verified: {}", why_not(&run, &outcome))),
            state_db_unavailable: false,
        };
        verify::record(&pool, Some(outcome.run_id), &report)
            .await
            .context("recording the verification")?;
        directions.push(report);
    }
    Ok(PairVerification {
        ok: outcome.state == RunState::Succeeded && directions.iter().all(|d| d.ok),
        hub: hub.code,
        spoke: spoke.code,
        run_id: outcome.run_id,
        directions,
    })
}

pub async fn verify(code: &str, json: bool) -> Result<u8> {
    let v = verify_pair(code).await?;
    if json {
        print_json(
            &json!({"code": v.spoke, "ok": v.ok, "run_id": v.run_id, "directions": v.directions}),
        )?;
    } else {
        for d in &v.directions {
            print_direction(d);
        }
        println!(
            "federation {} ↔ {}: {}",
            v.hub,
            v.spoke,
            if v.ok { "verified" } else { "FAILED" }
        );
    }
    Ok(if v.ok { exit::OK } else { exit::RUN_FAILED })
}

/// Why a run stopped before logging in: the failed phases' first error (the cause) and their
/// last (e.g. the open breaker), or the run's own error.
fn why_not(run: &RunRecord, outcome: &RunOutcome) -> String {
    let failed: Vec<String> = run
        .phases
        .iter()
        .filter(|p| p.state == PhaseState::Failed)
        .map(|p| {
            let first = p.history.iter().find_map(|a| a.error.clone());
            match (first, &p.error) {
                (Some(first), Some(last)) if &first != last => format!("{first}; then {last}"),
                (first, last) => first.or(last.clone()).unwrap_or_default(),
            }
        })
        .collect();
    if failed.is_empty() {
        outcome
            .error
            .clone()
            .unwrap_or_else(|| format!("run {} ended {}", outcome.run_id, outcome.state))
    } else {
        failed.join("; ")
    }
}

fn print_direction(d: &DirectionReport) {
    if let Some(e) = &d.error {
        println!("{} → {}  FAIL  {e}", d.from, d.to);
    }
    for u in &d.users {
        let verdict = if u.ok { "ok  " } else { "FAIL" };
        let detail = match (&u.error, u.mismatches.is_empty()) {
            (Some(e), _) => e.clone(),
            (None, true) => format!(
                "{} ms  clearance={} acpCOI={}",
                u.latency_ms,
                u.claims.get("clearance").unwrap_or(&Value::Null),
                u.claims.get("acpCOI").unwrap_or(&Value::Null)
            ),
            (None, false) => u
                .mismatches
                .iter()
                .map(|m| format!("{}: expected {:?}, got {}", m.claim, m.expected, m.got))
                .collect::<Vec<_>>()
                .join("; "),
        };
        println!(
            "{} → {}  {verdict}  {:<18} {detail}",
            d.from, d.to, u.username
        );
    }
    println!(
        "{} → {}  {}  {} of {} users in {} ms",
        d.from,
        d.to,
        if d.ok { "ok  " } else { "FAIL" },
        d.users.iter().filter(|u| u.ok).count(),
        d.users.len(),
        d.latency_ms
    );
}

#[derive(Debug, Serialize)]
pub(crate) struct LastVerification {
    pub verified_at: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    pub latency_ms: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LastVerification {
    /// The latest verification of users of `from` logging in at `to`.
    pub(crate) async fn latest(
        pool: &sqlx::PgPool,
        from: &str,
        to: &str,
    ) -> Result<Option<LastVerification>> {
        Ok(verify::latest(pool, from, to)
            .await?
            .map(|(verified_at, ok, latency_ms, error)| LastVerification {
                verified_at,
                ok,
                latency_ms,
                error,
            }))
    }
}

#[derive(Debug, Serialize)]
struct DirectionStatus {
    from: String,
    to: String,
    last_verification: Option<LastVerification>,
    /// When this direction last verified good (it may be the last verification or older).
    last_success: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(flatten)]
    versions: SecretVersions,
}

#[derive(Debug, Serialize)]
struct LinkStatus {
    hub: String,
    spoke: String,
    linked_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// Both directions agree: true; one disagrees: false; otherwise unknown (null).
    secrets_agree: Option<bool>,
    directions: Vec<DirectionStatus>,
}

pub async fn status(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let pool = store.pool().clone();
    let registry = config::get().instances(&store);
    let Access { secrets, trust } = Access::open(&store).await?;
    let mut out = Vec::new();
    for (hub, spoke, linked_at, updated_at) in verify::links(&pool).await? {
        let mut directions = Vec::new();
        for (from, to) in [(&hub, &spoke), (&spoke, &hub)] {
            let last = LastVerification::latest(&pool, from, to).await?;
            let versions = match (registry.get(from).await?, registry.get(to).await?) {
                (Some(x), Some(p)) => secret_versions(&secrets, &trust, &x, &p).await,
                _ => SecretVersions {
                    secrets_unknown_because: Some(format!("{from} or {to} is not deployed")),
                    ..SecretVersions::default()
                },
            };
            directions.push(DirectionStatus {
                from: from.clone(),
                to: to.clone(),
                last_verification: last,
                last_success: verify::last_success(&pool, from, to).await?,
                versions,
            });
        }
        let agree = if directions
            .iter()
            .any(|d| d.versions.secrets_agree == Some(false))
        {
            Some(false)
        } else if directions
            .iter()
            .all(|d| d.versions.secrets_agree == Some(true))
        {
            Some(true)
        } else {
            None
        };
        out.push(LinkStatus {
            hub,
            spoke,
            linked_at,
            updated_at,
            secrets_agree: agree,
            directions,
        });
    }
    if json {
        print_json(&json!({ "links": out }))?;
        return Ok(exit::OK);
    }
    if out.is_empty() {
        note!("no federation links (dive federation link CODE)");
        return Ok(exit::OK);
    }
    for link in &out {
        let agree = match link.secrets_agree {
            Some(true) => "secrets agree",
            Some(false) => "SECRETS DISAGREE",
            None => "secrets unknown",
        };
        println!(
            "{} ↔ {}  linked {}  {agree}",
            link.hub,
            link.spoke,
            link.linked_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        for d in &link.directions {
            let last = match &d.last_verification {
                Some(v) => format!(
                    "{} {} ({} ms){}",
                    if v.ok { "ok" } else { "FAILED" },
                    v.verified_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    v.latency_ms,
                    v.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                None => "never verified".into(),
            };
            let last = match (&d.last_verification, d.last_success) {
                (Some(v), Some(good)) if !v.ok => {
                    format!("{last}; last good {}", good.format("%Y-%m-%d %H:%M:%S UTC"))
                }
                (Some(v), None) if !v.ok => format!("{last}; never verified good"),
                _ => last,
            };
            let v = &d.versions;
            let secret = match (v.secrets_agree, &v.secrets_unknown_because) {
                (Some(true), _) => format!("secret v{}", v.secret_version.unwrap_or(0)),
                (Some(false), why) => format!(
                    "secret v{} in the store, client has {}, provider has {}{}",
                    v.secret_version.map_or("?".into(), |v| v.to_string()),
                    v.client_secret_version.as_deref().unwrap_or("none"),
                    v.provider_secret_version.as_deref().unwrap_or("none"),
                    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                ),
                (None, Some(why)) => format!("secret unknown: {why}"),
                (None, None) => "secret unknown".into(),
            };
            println!(
                "  {} → {}  last verification: {last}; {secret}",
                d.from, d.to
            );
        }
    }
    Ok(exit::OK)
}
