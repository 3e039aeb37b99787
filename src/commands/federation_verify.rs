//! `dive federation verify CODE` (the workflow `federation-verify`: a real brokered login per test
//! user and direction between the hub and spoke CODE, recorded in `federation_verifications`) and `dive federation status`
//! (every linked pair, each direction's last verification, whether the secret versions agree).

use crate::commands::federation_link::{Federated, federated};
use crate::commands::print_json;
use crate::commands::run::start_named;
use crate::commands::secrets::secret_store;
use crate::{database, exit};
use anyhow::{Context, Result};
use dive_engine::store::RunRecord;
use dive_engine::{PhaseState, RunOutcome, RunState};
use dive_phases::federation::{SECRET_VERSION_KEY, client_id, client_secret_name};
use dive_phases::instance::Instances;
use dive_phases::keycloak::{ADMIN_USER, KeycloakAdmin, admin_password_secret};
use dive_phases::secrets::SecretStore;
use dive_phases::verify::{self, DirectionReport};
use serde::Serialize;
use serde_json::{Value, json};

pub async fn verify(code: &str, json: bool) -> Result<u8> {
    let Federated {
        hub,
        spoke,
        exec,
        params,
    } = federated(code).await?;
    let (engine, outcome) = start_named("federation-verify", &params, false, &exec).await?;
    let pool = engine.store().pool().clone();
    let mut recorded = verify::for_run(&pool, outcome.run_id).await?;
    // A direction that never got to log in (a Keycloak did not answer) fails with the reason.
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
        };
        verify::record(&pool, Some(outcome.run_id), &report)
            .await
            .context("recording the verification")?;
        directions.push(report);
    }
    let ok = outcome.state == RunState::Succeeded && directions.iter().all(|d| d.ok);
    if json {
        print_json(
            &json!({"code": spoke.code, "ok": ok, "run_id": outcome.run_id, "directions": directions}),
        )?;
    } else {
        for d in &directions {
            print_direction(d);
        }
        println!(
            "federation {} ↔ {}: {}",
            hub.code,
            spoke.code,
            if ok { "verified" } else { "FAILED" }
        );
    }
    Ok(if ok { exit::OK } else { exit::RUN_FAILED })
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
struct LastVerification {
    verified_at: chrono::DateTime<chrono::Utc>,
    ok: bool,
    latency_ms: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DirectionStatus {
    from: String,
    to: String,
    last_verification: Option<LastVerification>,
    /// Latest version of `federation/<from>/<to>/client-secret` in the store.
    secret_version: Option<u32>,
    /// `dive.secret.version` of client `federation-<to>` in realm `dive-<from>`.
    client_secret_version: Option<String>,
    secrets_agree: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets_unknown_because: Option<String>,
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

/// Compares the store's latest secret version with the client attribute at `from`.
async fn secret_versions(
    secrets: &SecretStore,
    registry: &Instances,
    from: &str,
    to: &str,
) -> (Option<u32>, Option<String>, Option<bool>, Option<String>) {
    let name = client_secret_name(from, to);
    let stored = match secrets.info(&name).await {
        Ok(Some(info)) => Some(info.latest),
        Ok(None) => {
            return (
                None,
                None,
                None,
                Some(format!("no secret `{name}` in the store")),
            );
        }
        Err(e) => return (None, None, None, Some(format!("secret `{name}`: {e}"))),
    };
    let rec = match registry.get(from).await {
        Ok(Some(r)) => r,
        Ok(None) => return (stored, None, None, Some(format!("{from} is not deployed"))),
        Err(e) => return (stored, None, None, Some(e.to_string())),
    };
    let password = match secrets.get(&admin_password_secret(from)).await {
        Ok(Some((p, _))) => p,
        Ok(None) => {
            return (
                stored,
                None,
                None,
                Some(format!("no admin password for {from}")),
            );
        }
        Err(e) => return (stored, None, None, Some(e.to_string())),
    };
    let url = rec.keycloak_url();
    let admin = match KeycloakAdmin::connect_named(
        &format!("keycloak {from}"),
        &url,
        ADMIN_USER,
        password.expose(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return (stored, None, None, Some(e.to_string())),
    };
    let client_id = client_id(to);
    let attribute = match admin.client_by_client_id(&rec.realm(), &client_id).await {
        Ok(Some(c)) => c
            .attributes
            .and_then(|a| a.get(SECRET_VERSION_KEY).cloned()),
        Ok(None) => {
            return (
                stored,
                None,
                Some(false),
                Some(format!("no client {client_id} in {}", rec.realm())),
            );
        }
        Err(e) => return (stored, None, None, Some(e.to_string())),
    };
    match (stored, attribute) {
        (Some(s), Some(a)) => {
            let agree = a.trim() == s.to_string();
            (Some(s), Some(a), Some(agree), None)
        }
        (s, None) => (
            s,
            None,
            None,
            Some(format!(
                "client {client_id} has no {SECRET_VERSION_KEY} attribute"
            )),
        ),
        (None, a) => (None, a, None, None),
    }
}

pub async fn status(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let pool = store.pool().clone();
    let registry = Instances::new(pool.clone());
    let secrets = secret_store(&store)?;
    let mut out = Vec::new();
    for (hub, spoke, linked_at, updated_at) in verify::links(&pool).await? {
        let mut directions = Vec::new();
        for (from, to) in [(&hub, &spoke), (&spoke, &hub)] {
            let last = verify::latest(&pool, from, to).await?.map(
                |(verified_at, ok, latency_ms, error)| LastVerification {
                    verified_at,
                    ok,
                    latency_ms,
                    error,
                },
            );
            let (secret_version, client_secret_version, secrets_agree, why) =
                secret_versions(&secrets, &registry, from, to).await;
            directions.push(DirectionStatus {
                from: from.clone(),
                to: to.clone(),
                last_verification: last,
                secret_version,
                client_secret_version,
                secrets_agree,
                secrets_unknown_because: why,
            });
        }
        let agree = if directions.iter().any(|d| d.secrets_agree == Some(false)) {
            Some(false)
        } else if directions.iter().all(|d| d.secrets_agree == Some(true)) {
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
        eprintln!("no federation links (dive federation link CODE)");
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
            let secret = match (d.secrets_agree, &d.secrets_unknown_because) {
                (Some(true), _) => format!("secret v{}", d.secret_version.unwrap_or(0)),
                (Some(false), why) => format!(
                    "secret v{} in the store, client has {}{}",
                    d.secret_version.map_or("?".into(), |v| v.to_string()),
                    d.client_secret_version.as_deref().unwrap_or("none"),
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
