//! `dive federation verify|status|drift` against real Keycloak: a hub (USA) and two spokes (FRA,
//! GBR) on the local runtime linked by `dive federation link`, real brokered logins in all four
//! directions with exact claims, the status view of the recorded results and secret versions,
//! and tampering behind dive's back — a wrong secret in an identity provider, the provider
//! deleted, a mapper deleted, the client secret replaced, the partner Keycloak stopped — each
//! found by `drift`, repaired by `link` and proven repaired by `verify`.

mod common;

use common::federation::{direction, users_have_their_claims};
use common::{Output, Reset, TestEnv};
use dive_keycloak::KeycloakAdmin;
use serde_json::{Value, json};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(180);

fn secret(env: &TestEnv, name: &str) -> String {
    let out = env.dive(&["secrets", "show", name, "--reveal"]);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

fn keycloak_url(env: &TestEnv, args: &[&str]) -> String {
    let out = env.dive(args);
    out.assert_code(0);
    out.json()["keycloak_url"].as_str().unwrap().to_string()
}

fn verify(env: &TestEnv, args: &[&str]) -> Output {
    env.spawn(args).wait(VERIFY_TIMEOUT)
}

/// Gives `usa-idp` in dive-fra another client secret than the one dive-usa expects.
async fn break_client_secret(env: &TestEnv, fra: &str) {
    let password = secret(env, "fra/keycloak/admin-password");
    let admin = KeycloakAdmin::connect(&env.trust(), fra, "admin", &password)
        .await
        .unwrap();
    let path = "/admin/realms/dive-fra/identity-provider/instances/usa-idp";
    let mut idp: Value = admin.get(path).await.unwrap();
    idp["config"]["clientSecret"] = json!("not-the-secret-of-federation-fra");
    admin.put(path, Some(&idp)).await.unwrap();
}

/// An admin session on the Keycloak at `url` of instance `code`.
async fn admin(env: &TestEnv, url: &str, code: &str) -> KeycloakAdmin {
    let password = secret(
        env,
        &format!("{}/keycloak/admin-password", code.to_lowercase()),
    );
    KeycloakAdmin::connect(&env.trust(), url, "admin", &password)
        .await
        .unwrap()
}

/// Runs `drift` and returns its findings; asserts the exit code says whether there were any.
fn drift(env: &TestEnv, code: &str) -> Vec<Value> {
    let out = env
        .spawn(&["federation", "drift", code, "--json"])
        .wait(VERIFY_TIMEOUT);
    let doc = out.json();
    let findings = doc["findings"].as_array().unwrap().clone();
    assert_eq!(doc["drifted"], !findings.is_empty(), "{doc}");
    out.assert_code(if findings.is_empty() { 0 } else { 1 });
    findings
}

/// A finding of `layer` on `instance` whose object and difference contain the given texts.
#[track_caller]
fn has_finding(findings: &[Value], layer: &str, instance: &str, object: &str, difference: &str) {
    assert!(
        findings.iter().any(|f| f["layer"] == layer
            && f["instance"] == instance
            && f["object"].as_str().unwrap().contains(object)
            && f["difference"].as_str().unwrap().contains(difference)),
        "a {layer} finding on {instance} about `{object}` saying `{difference}` in {findings:#?}"
    );
}

/// The configuration findings of `drift`.
fn config_findings(env: &TestEnv, code: &str) -> Vec<Value> {
    drift(env, code)
        .into_iter()
        .filter(|f| f["layer"] == "config")
        .collect()
}

/// A dry run of `link` shows every configuration finding of `drift` as a planned change (with
/// the same old and new values) and changes nothing; `link` then does exactly what was planned
/// (a link phase changed something if and only if its plan had changes), `drift` finds nothing
/// left, and `verify` passes in both directions.
#[track_caller]
fn repaired(env: &TestEnv, code: &str) {
    let findings = config_findings(env, code);
    let out = env.dive(&["federation", "link", code, "--dry-run", "--json"]);
    let plan = out.json();
    assert_eq!(
        out.code,
        Some(if plan["would_change"] == true { 4 } else { 0 }),
        "{}",
        out.stderr
    );
    let steps = plan["steps"].as_array().unwrap().clone();
    let planned: Vec<&Value> = steps
        .iter()
        .flat_map(|s| s["changes"].as_array().unwrap().iter())
        .collect();
    // What could not be read (a stopped Keycloak) is no difference: the plan has it as known
    // after apply.
    for f in findings.iter().filter(|f| {
        !f["difference"]
            .as_str()
            .unwrap()
            .starts_with("could not be")
    }) {
        assert!(
            planned.iter().any(|c| c["instance"] == f["instance"]
                && c["object"] == f["object"]
                && f["fields"]
                    .as_array()
                    .is_none_or(|fields| c["fields"].as_array() == Some(fields))),
            "drift finding {f:#} is not a planned change: {planned:#?}"
        );
    }
    assert_eq!(
        config_findings(env, code),
        findings,
        "a dry run changes nothing"
    );
    let started = std::time::Instant::now();
    let out = env
        .spawn(&["federation", "link", code, "--json"])
        .wait(VERIFY_TIMEOUT);
    out.assert_code(0);
    eprintln!("repairing link {code}: {:?}", started.elapsed());
    let run = out.json();
    for step in steps
        .iter()
        .filter(|s| s["type"].as_str().unwrap().starts_with("federation."))
    {
        let changes = step["changes"].as_array().unwrap();
        if changes.iter().any(|c| c["action"] == "known_after_apply") {
            continue;
        }
        let id = step["phase"].as_str().unwrap();
        assert_eq!(
            common::phase(&run, id)["output"]["changed"],
            !changes.is_empty(),
            "phase {id}: planned {changes:#?}"
        );
    }
    assert_eq!(
        drift(env, code),
        Vec::<Value>::new(),
        "nothing left to repair"
    );
    env.dive(&["federation", "link", code, "--dry-run"])
        .assert_code(0);
    verify(env, &["federation", "verify", code]).assert_code(0);
}

#[test]
fn hub_and_two_spokes_verified_then_tampered_found_by_drift_and_repaired_by_link() {
    let mut env = TestEnv::new();
    env.own_ports();

    // Codes are checked before anything else.
    let out = env.dive(&["federation", "verify", "XYZ"]);
    out.assert_code(2);
    assert!(out.stderr.contains("XYZ"), "{}", out.stderr);
    let out = env.dive(&["federation", "verify", "fra"]);
    out.assert_code(2);
    assert!(out.stderr.contains("no hub is deployed"), "{}", out.stderr);
    env.dive(&["federation", "drift", "fra"]).assert_code(2);

    let _reset = Reset(
        &env,
        vec![("hub", "USA"), ("spoke", "FRA"), ("spoke", "GBR")],
    );
    env.spawn(&["hub", "deploy"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    // The spokes do not depend on each other: deployed side by side.
    let fra_deploy = env.spawn(&["spoke", "deploy", "FRA"]);
    let gbr_deploy = env.spawn(&["spoke", "deploy", "GBR"]);
    fra_deploy.wait(DEPLOY_TIMEOUT).assert_code(0);
    gbr_deploy.wait(DEPLOY_TIMEOUT).assert_code(0);
    let usa = keycloak_url(&env, &["hub", "status", "--json"]);
    let fra = keycloak_url(&env, &["spoke", "status", "FRA", "--json"]);
    env.dive(&["federation", "verify", "USA"]).assert_code(2);
    let out = env.dive(&["federation", "verify", "DEU"]);
    out.assert_code(2);
    assert!(out.stderr.contains("DEU is not deployed"), "{}", out.stderr);

    for code in ["FRA", "GBR"] {
        env.spawn(&["federation", "link", code])
            .wait(DEPLOY_TIMEOUT)
            .assert_code(0);
    }
    let client_secret = secret(&env, "federation/usa/fra/client-secret");

    // All four directions, every test user, exact claims.
    let out = verify(&env, &["federation", "verify", "fra", "--json"]);
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(doc["code"], "FRA");
    users_have_their_claims(direction(&doc, "USA", "FRA"), "USA", &["FVEY", "NATO"]);
    users_have_their_claims(direction(&doc, "FRA", "USA"), "FRA", &["NATO"]);
    assert!(
        !out.stdout.contains(&client_secret),
        "the secret never appears"
    );
    let out = verify(&env, &["federation", "verify", "GBR", "--json"]);
    out.assert_code(0);
    let doc = out.json();
    users_have_their_claims(direction(&doc, "USA", "GBR"), "USA", &["FVEY", "NATO"]);
    users_have_their_claims(direction(&doc, "GBR", "USA"), "GBR", &["FVEY", "NATO"]);
    // Nothing has drifted yet.
    assert_eq!(drift(&env, "FRA"), Vec::<Value>::new());

    // Recorded, and shown by status with the secret versions of both sides.
    let rows = env.psql(
        "SELECT source || '>' || target || ':' || ok FROM federation_verifications \
         WHERE 'FRA' IN (source, target) ORDER BY id",
    );
    let mut rows: Vec<&str> = rows.split_whitespace().collect();
    rows.sort();
    assert_eq!(rows, ["FRA>USA:true", "USA>FRA:true"]);
    let out = env.dive(&["federation", "status", "--json"]);
    out.assert_code(0);
    let status = out.json();
    let link = &status["links"][0];
    assert_eq!(status["links"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(
        (&link["hub"], &link["spoke"]),
        (&json!("USA"), &json!("FRA"))
    );
    for (from, to) in [("USA", "FRA"), ("FRA", "USA")] {
        let d = direction(link, from, to);
        assert_eq!(d["last_verification"]["ok"], true, "{link}");
        assert_eq!(d["secret_version"], 1, "{link}");
        assert_eq!(d["client_secret_version"], "1", "{link}");
        assert_eq!(d["provider_secret_version"], "1", "{link}");
        assert_eq!(d["secrets_agree"], true, "{link}");
    }
    assert_eq!(link["secrets_agree"], true, "{link}");
    env.dive(&["federation", "status"]).assert_code(0);

    // A wrong client secret in FRA's `usa-idp`: every USA login fails, saying where and why;
    // FRA → USA still works.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(break_client_secret(&env, &fra));
    let out = verify(&env, &["federation", "verify", "FRA"]);
    out.assert_code(1);
    let broken = "target FRA answered 502 at the broker endpoint";
    for n in 1..=4 {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("USA → FRA") && l.contains(&format!("testuser-usa-{n} ")))
            .unwrap_or_else(|| panic!("a line for testuser-usa-{n}: {}", out.stdout));
        assert!(line.contains("FAIL") && line.contains(broken), "{line}");
        assert!(line.contains("client secret"), "{line}");
    }
    assert!(
        out.stdout.contains("FRA → USA  ok    4 of 4 users"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("federation USA ↔ FRA: FAILED"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&client_secret) && !out.stderr.contains(&client_secret));
    let status = env.dive(&["federation", "status", "--json"]).json();
    let last = &direction(&status["links"][0], "USA", "FRA")["last_verification"];
    assert_eq!(last["ok"], false, "{status}");
    assert!(last["error"].as_str().unwrap().contains(broken), "{status}");

    // 1. The wrong secret in `usa-idp` (masked by Keycloak, so only the live layer sees it).
    let findings = drift(&env, "FRA");
    has_finding(
        &findings,
        "live",
        "FRA",
        "login of a USA user at FRA",
        "client secret",
    );
    repaired(&env, "FRA");

    // 2. The identity provider deleted on one side.
    rt.block_on(async {
        let a = admin(&env, &fra, "FRA").await;
        a.delete("/admin/realms/dive-fra/identity-provider/instances/usa-idp")
            .await
            .unwrap();
    });
    let findings = drift(&env, "FRA");
    has_finding(
        &findings,
        "config",
        "FRA",
        "identity provider usa-idp in realm dive-fra",
        "missing",
    );
    has_finding(
        &findings,
        "config",
        "FRA",
        "user testuser-usa-1 in realm dive-fra",
        "not linked to usa-idp",
    );
    has_finding(
        &findings,
        "live",
        "FRA",
        "login of a USA user at FRA",
        "failed",
    );
    repaired(&env, "FRA");

    // 3. A mapper deleted.
    rt.block_on(async {
        let a = admin(&env, &usa, "USA").await;
        let path = "/admin/realms/dive-usa/identity-provider/instances/fra-idp/mappers";
        let mappers: Vec<Value> = a.get(path).await.unwrap();
        let clearance = mappers.iter().find(|m| m["name"] == "clearance").unwrap();
        a.delete(&format!("{path}/{}", clearance["id"].as_str().unwrap()))
            .await
            .unwrap();
        // And another one changed: its claim renamed.
        let mut country = mappers
            .iter()
            .find(|m| m["name"] == "countryOfAffiliation")
            .unwrap()
            .clone();
        country["config"]["claim"] = json!("country");
        let id = country["id"].as_str().unwrap().to_string();
        a.put(&format!("{path}/{id}"), Some(&country))
            .await
            .unwrap();
    });
    let findings = drift(&env, "FRA");
    has_finding(
        &findings,
        "config",
        "USA",
        "mapper clearance of fra-idp in realm dive-usa",
        "missing",
    );
    let changed = findings
        .iter()
        .find(|f| f["object"] == "mapper countryOfAffiliation of fra-idp in realm dive-usa")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(
        changed["fields"],
        json!([{"field": "config.claim", "old": "country", "new": "countryOfAffiliation"}]),
        "{changed:#}"
    );
    repaired(&env, "FRA");

    // 3b. The identity provider disabled, and a user-profile attribute removed at FRA.
    rt.block_on(async {
        let a = admin(&env, &fra, "FRA").await;
        let path = "/admin/realms/dive-fra/identity-provider/instances/usa-idp";
        let mut idp: Value = a.get(path).await.unwrap();
        idp["enabled"] = json!(false);
        a.put(path, Some(&idp)).await.unwrap();
        let mut profile = a.user_profile("dive-fra").await.unwrap();
        profile["attributes"]
            .as_array_mut()
            .unwrap()
            .retain(|x| x["name"] != "acpCOI");
        a.update_user_profile("dive-fra", &profile).await.unwrap();
    });
    let findings = drift(&env, "FRA");
    let disabled = findings
        .iter()
        .find(|f| f["object"] == "identity provider usa-idp in realm dive-fra")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(
        disabled["fields"],
        json!([{"field": "enabled", "old": false, "new": true}]),
        "{disabled:#}"
    );
    has_finding(
        &findings,
        "config",
        "FRA",
        "user-profile attribute acpCOI in realm dive-fra",
        "missing",
    );
    repaired(&env, "FRA");

    // 3c. The provider's issuer changed: the live login fails, and drift names the setting as
    //     its cause (not a client secret).
    rt.block_on(async {
        let a = admin(&env, &fra, "FRA").await;
        let path = "/admin/realms/dive-fra/identity-provider/instances/usa-idp";
        let mut idp: Value = a.get(path).await.unwrap();
        idp["config"]["issuer"] = json!("https://elsewhere.example/realms/dive-usa");
        a.put(path, Some(&idp)).await.unwrap();
    });
    let findings = drift(&env, "FRA");
    let issuer = findings
        .iter()
        .find(|f| f["object"] == "identity provider usa-idp in realm dive-fra")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert!(
        issuer["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["field"] == "config.issuer"
                && f["old"] == "https://elsewhere.example/realms/dive-usa"),
        "{issuer:#}"
    );
    has_finding(
        &findings,
        "live",
        "FRA",
        "login of a USA user at FRA",
        "cause: identity provider usa-idp in realm dive-fra",
    );
    repaired(&env, "FRA");

    // 4. The client secret replaced in Keycloak behind dive's back (set outright: Keycloak's
    //    "regenerate" would keep the previous secret accepted for a while, as the rotation
    //    policy dive installs says).
    rt.block_on(async {
        let a = admin(&env, &usa, "USA").await;
        let clients: Vec<Value> = a
            .get("/admin/realms/dive-usa/clients?clientId=federation-fra")
            .await
            .unwrap();
        let id = clients[0]["id"].as_str().unwrap();
        a.put(
            &format!("/admin/realms/dive-usa/clients/{id}"),
            Some(&json!({ "clientId": "federation-fra", "secret": "changed-outside-dive-0123456789" })),
        )
        .await
        .unwrap();
    });
    let findings = drift(&env, "FRA");
    has_finding(
        &findings,
        "config",
        "USA",
        "client federation-fra in realm dive-usa",
        "its secret is not version 1",
    );
    has_finding(
        &findings,
        "live",
        "FRA",
        "login of a USA user at FRA",
        "failed",
    );
    let out = env.dive(&["federation", "drift", "FRA"]);
    assert!(!out.stdout.contains(&client_secret) && !out.stderr.contains(&client_secret));
    repaired(&env, "FRA");
    assert_eq!(
        secret(&env, "federation/usa/fra/client-secret"),
        client_secret,
        "the store's secret was put back, not replaced"
    );

    // 5. The partner Keycloak stopped: drift names the runtime layer; verify fails fast and
    // clearly, naming the unreachable side, with its breaker open.
    env.spawn(&["spoke", "down", "FRA"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    let findings = drift(&env, "FRA");
    has_finding(&findings, "runtime", "FRA", "service keycloak", "stopped");
    let started = std::time::Instant::now();
    let out = verify(&env, &["federation", "verify", "FRA", "--json"]);
    let took = started.elapsed();
    out.assert_code(1);
    let doc = out.json();
    for (from, to) in [("USA", "FRA"), ("FRA", "USA")] {
        let d = direction(&doc, from, to);
        assert_eq!(d["ok"], false, "{d}");
        let e = d["error"].as_str().unwrap();
        assert!(
            e.contains("keycloak FRA") && e.contains("unreachable"),
            "{e}"
        );
        assert!(e.contains("circuit open for keycloak:FRA"), "{e}");
    }
    assert!(
        took < Duration::from_secs(60),
        "within the phase timeout: {took:?}"
    );
    let run = env.show(doc["run_id"].as_str().unwrap());
    assert!(
        run["breaker_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["breaker"] == "keycloak:FRA" && b["transition"] == "open"),
        "{run}"
    );
    // link starts the stopped services again (its deploy children) before it reconciles.
    repaired(&env, "FRA");

    // 6. FRA's Keycloak given a certificate of another CA (written over its live certificate
    //    files, which it rereads within 30 s): verify fails at once, naming the certificate
    //    problem; a deploy gives it its own certificate back in place, and verify passes.
    let files = env
        .home
        .path()
        .join("instances/fra/services/keycloak.files");
    let elsewhere = dive_tls::Authority::generate("elsewhere").unwrap();
    let names = ["127.0.0.1".to_string(), "localhost".to_string()];
    let foreign = elsewhere.issue(&names, dive_tls::DEFAULT_LIFETIME).unwrap();
    std::fs::write(files.join("tls.key"), foreign.key_pem().as_str()).unwrap();
    std::fs::write(files.join("tls.crt"), foreign.cert_pem()).unwrap();
    let trust = env.trust();
    let presented = |fra: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(dive_tls::served_certificate(
            &trust,
            &format!("{fra}/realms/master"),
        ))
    };
    common::wait_until(
        "FRA presents the foreign certificate",
        Duration::from_secs(90),
        || presented(&fra).is_err_and(|e| e.contains("UnknownIssuer")),
    );
    let out = verify(&env, &["federation", "verify", "FRA", "--json"]);
    out.assert_code(1);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("TLS certificate refused") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(!text.contains("is it running"), "{text}");
    env.spawn(&["spoke", "deploy", "FRA"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    common::wait_until(
        "FRA presents its own certificate",
        Duration::from_secs(90),
        || presented(&fra).is_ok(),
    );
    verify(&env, &["federation", "verify", "FRA"]).assert_code(0);

    // GBR was never touched.
    assert_eq!(drift(&env, "GBR"), Vec::<Value>::new());
}
