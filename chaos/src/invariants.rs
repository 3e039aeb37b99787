//! What must hold after every scenario, once its fault is healed.

use crate::scenarios::{DOCKER_CODES, HUB, SPOKE};
use crate::world::World;
use crate::{Check, Outcome};
use dive_secrets::owners;
use std::collections::BTreeSet;

fn check(invariant: &'static str, result: Result<(), String>) -> Check {
    Check {
        invariant,
        ok: result.is_ok(),
        detail: result.err().unwrap_or_default(),
    }
}

/// Every invariant, for the scenario that started at `since` (the state database's clock) and
/// whose pipeline run ended with `outcome`.
pub fn check_all(
    world: &World,
    since: &str,
    outcome: Outcome,
    breakers_opened: &[String],
) -> Vec<Check> {
    let mut checks = vec![
        check("runs settled", runs_settled(world, since)),
        check("no phase ran twice", nothing_twice(world, since)),
        check("db validate", db_validate(world)),
        check("nothing orphaned", nothing_orphaned(world)),
    ];
    if !breakers_opened.is_empty() {
        checks.push(check(
            "breakers recorded",
            breakers_recorded(world, since, breakers_opened),
        ));
    }
    if outcome != Outcome::Failed && linked(world) {
        checks.push(check("federation healthy", federation_healthy(world)));
    }
    if !linked(world) && pair_registered(world) {
        checks.push(check(
            "no federation object of an unlinked pair",
            no_federation_objects(world),
        ));
    }
    checks.push(check("no secret in output", no_secret_printed(world)));
    checks
}

/// Every run of the scenario ended succeeded or rolled back (none left running or failed).
fn runs_settled(world: &World, since: &str) -> Result<(), String> {
    let bad = world.rows(&format!(
        "SELECT id, workflow, state FROM runs WHERE started_at >= '{since}' \
         AND state NOT IN ('succeeded', 'rolled_back')"
    ))?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "runs not settled: {}",
            serde_json::Value::Array(bad)
        ))
    }
}

/// No phase has two succeeded attempts, and no parent started two live children for one key.
fn nothing_twice(world: &World, since: &str) -> Result<(), String> {
    let twice = world.rows(&format!(
        "SELECT a.run_id, a.phase_id, count(*) AS succeeded FROM phase_attempts a \
         JOIN runs r ON r.id = a.run_id WHERE r.started_at >= '{since}' AND a.state = 'succeeded' \
         GROUP BY 1, 2 HAVING count(*) > 1"
    ))?;
    let children = world.rows(&format!(
        "SELECT parent_run_id, parent_key, count(*) AS children FROM runs \
         WHERE started_at >= '{since}' AND parent_run_id IS NOT NULL AND state <> 'rolled_back' \
         GROUP BY 1, 2 HAVING count(*) > 1"
    ))?;
    if twice.is_empty() && children.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "ran twice: {} {}",
            serde_json::Value::Array(twice),
            serde_json::Value::Array(children)
        ))
    }
}

/// `dive db validate`: legal states, no lock held by a dead process, no dangling reference.
fn db_validate(world: &World) -> Result<(), String> {
    let out = world.dive(&["db", "validate", "--json"])?;
    let doc = out.json()?;
    if doc["ok"] == true && out.code == Some(0) {
        Ok(())
    } else {
        Err(format!("dive db validate: {}", doc["problems"]))
    }
}

/// Everything on disk and every live process belongs to a registered instance, and every
/// secret's owner is registered.
fn nothing_orphaned(world: &World) -> Result<(), String> {
    let registered: BTreeSet<String> = world
        .rows("SELECT lower(code) AS code FROM instances")?
        .iter()
        .filter_map(|r| r["code"].as_str().map(str::to_string))
        .collect();
    let mut problems = Vec::new();
    let dir = world.home().join("instances");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !registered.contains(&name) {
                problems.push(format!(
                    "directory {} of no instance",
                    entry.path().display()
                ));
            }
        }
    }
    for pid in crate::world::processes_under(&dir) {
        let owner = pid.1.clone();
        if !registered
            .iter()
            .any(|c| owner.contains(&format!("/instances/{c}/")))
        {
            problems.push(format!("process {} of no instance: {owner}", pid.0));
        }
    }
    let on_docker: BTreeSet<String> = world
        .rows("SELECT lower(code) AS code FROM instances WHERE runtime = 'docker'")?
        .iter()
        .filter_map(|r| r["code"].as_str().map(str::to_string))
        .collect();
    for code in crate::faults::container_instances() {
        // Only the codes this suite puts on Docker: the engine may hold other homes' containers.
        if DOCKER_CODES.iter().any(|c| c.eq_ignore_ascii_case(&code)) && !on_docker.contains(&code)
        {
            problems.push(format!(
                "a container of {code}, which is not on Docker here"
            ));
        }
    }
    for row in world.rows("SELECT DISTINCT name FROM secrets")? {
        let name = row["name"].as_str().unwrap_or_default();
        if owners(name).iter().any(|o| !registered.contains(*o)) {
            problems.push(format!("secret {name} of no instance"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Each breaker in `keys` opened during the scenario.
fn breakers_recorded(world: &World, since: &str, keys: &[String]) -> Result<(), String> {
    let opened: BTreeSet<String> = world
        .rows(&format!(
            "SELECT DISTINCT b.breaker FROM breaker_events b JOIN runs r ON r.id = b.run_id \
             WHERE r.started_at >= '{since}' AND b.transition = 'open'"
        ))?
        .iter()
        .filter_map(|r| r["breaker"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = keys.iter().filter(|k| !opened.contains(*k)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "breakers that did not open: {missing:?} (opened: {opened:?})"
        ))
    }
}

fn linked(world: &World) -> bool {
    world
        .sql(&format!(
            "SELECT count(*) FROM federation_links WHERE spoke = '{SPOKE}'"
        ))
        .is_ok_and(|n| n == "1")
}

/// How long the services get to recover from a healed fault before the federation must be whole
/// again: a Keycloak whose database connections were cut answers 500 once per dead pooled
/// connection before it has fresh ones.
const RECOVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// `dive federation drift` finds nothing and its live logins pass both ways, and then every
/// test user logs in both ways (`dive federation verify`), within [`RECOVERY`]. All users, not
/// drift's one: a fault can leave a Keycloak with a few bad pooled back-channel connections that
/// one login does not meet and the next scenario's four would.
fn federation_healthy(world: &World) -> Result<(), String> {
    let deadline = std::time::Instant::now() + RECOVERY;
    loop {
        let out = world.dive(&["federation", "drift", SPOKE, "--json"])?;
        let doc = out.json()?;
        let live_ok = doc["live"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|d| d["ok"] == true));
        let last = if doc["drifted"] == false && live_ok {
            let verify = world.dive(&["federation", "verify", SPOKE, "--json"])?;
            if verify.code == Some(0) {
                return Ok(());
            }
            format!("dive federation verify {SPOKE}: {}", verify.stdout)
        } else {
            format!("dive federation drift {SPOKE}: {doc}")
        };
        if std::time::Instant::now() > deadline {
            return Err(format!("{RECOVERY:?} after healing, {last}"));
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// No current secret value appears in anything dive printed nor in the state tables it wrote.
fn no_secret_printed(world: &World) -> Result<(), String> {
    let names: Vec<String> = world
        .rows("SELECT DISTINCT name FROM secrets")?
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    let mut haystack = world.printed().join("\n");
    haystack.push_str(&world.sql(
        "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM \
         (SELECT output::text, error FROM phases UNION ALL SELECT NULL, error FROM runs \
          UNION ALL SELECT NULL, error FROM phase_attempt_history) t",
    )?);
    let mut leaked = Vec::new();
    for name in names {
        let value = world.reveal(&name)?;
        if value.len() >= 8 && haystack.contains(&value) {
            leaked.push(name);
        }
    }
    if leaked.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "secret values printed or stored in clear: {leaked:?}"
        ))
    }
}

/// Both instances of the pair are registered.
fn pair_registered(world: &World) -> bool {
    world
        .sql(&format!(
            "SELECT count(*) FROM instances WHERE code IN ('{HUB}', '{SPOKE}')"
        ))
        .is_ok_and(|n| n == "2")
}

/// With the pair not linked (a link rolled back, or an unlink), neither realm holds a
/// federation client or identity provider for the other, checked through each Keycloak's admin
/// API so that a compensation that only forgot its own record is caught, and the secret store
/// holds no `federation/<a>/<b>/…` secret of the pair.
fn no_federation_objects(world: &World) -> Result<(), String> {
    let trust = world.dive(&["ca", "show"])?.expect_code(0)?.stdout.clone();
    let trust = dive_tls::Trust::from_pem(&trust).map_err(|e| e.to_string())?;
    let pair = [HUB.to_lowercase(), SPOKE.to_lowercase()];
    let mut found: Vec<String> = world
        .rows("SELECT DISTINCT name FROM secrets ORDER BY 1")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| {
            let owners = owners(n);
            pair.iter().all(|code| owners.contains(&code.as_str()))
        })
        .map(|n| format!("secret {n}"))
        .collect();
    for (code, partner, status) in [
        (HUB, SPOKE, vec!["hub", "status"]),
        (SPOKE, HUB, vec!["spoke", "status", SPOKE]),
    ] {
        let url = world.dive_json(&status)?["keycloak_url"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no keycloak_url for {code}"))?;
        let password = world.reveal(&format!("{}/keycloak/admin-password", code.to_lowercase()))?;
        let (code, partner) = (code.to_lowercase(), partner.to_lowercase());
        let realm = format!("dive-{code}");
        let client = format!("federation-{partner}");
        let idp = format!("{partner}-idp");
        let present = block_on(async {
            let admin = dive_keycloak::KeycloakAdmin::connect(&trust, &url, "admin", &password)
                .await
                .map_err(|e| e.to_string())?;
            let client = admin
                .client_by_client_id(&realm, &client)
                .await
                .map_err(|e| e.to_string())?
                .map(|_| format!("client {client} in realm {realm}"));
            let idp = admin
                .get_opt::<serde_json::Value>(&format!(
                    "/admin/realms/{realm}/identity-provider/instances/{idp}"
                ))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| format!("identity provider {idp} in realm {realm}"));
            Ok::<_, String>([client, idp])
        })??;
        found.extend(present.into_iter().flatten());
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "left behind by an unlinked pair: {}",
            found.join(", ")
        ))
    }
}

/// Runs a future to completion on a runtime of its own (the suite is synchronous).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a Tokio runtime: {e}"))?;
    Ok(runtime.block_on(future))
}
