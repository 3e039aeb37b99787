//! `dive federation verify|status` against real Keycloak: a hub (USA) and a spoke (FRA) on the
//! local runtime linked by `dive federation link`, real brokered logins in both directions with
//! exact claims, a broken client secret that makes verification fail clearly, and the status
//! view of the recorded results and secret versions.

mod common;

use common::{Output, TestEnv};
use dive_phases::keycloak::KeycloakAdmin;
use serde_json::{Value, json};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(180);

/// Resets the instances at the end, also when an assertion failed.
struct Reset<'a>(&'a TestEnv, Vec<(&'static str, &'static str)>);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        for (role, code) in self.1.iter().rev() {
            let mut args = vec![*role, "reset"];
            if *role == "spoke" {
                args.push(code);
            }
            args.push("--yes");
            let _ = self.0.spawn(&args).wait(Duration::from_secs(120));
        }
    }
}

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

fn direction<'a>(doc: &'a Value, from: &str, to: &str) -> &'a Value {
    doc["directions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["from"] == from && d["to"] == to)
        .unwrap_or_else(|| panic!("direction {from}→{to} in {doc}"))
}

/// Each of the four test users of `code` logged in with exactly the claims DESIGN.md promises.
fn users_have_their_claims(d: &Value, code: &str, coi: &[&str]) {
    assert_eq!(d["ok"], true, "{d}");
    let users = d["users"].as_array().unwrap();
    assert_eq!(users.len(), 4, "{d}");
    let lower = code.to_lowercase();
    let clearances = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"];
    for (i, u) in users.iter().enumerate() {
        let name = format!("testuser-{lower}-{}", i + 1);
        assert_eq!(u["username"], name.as_str());
        assert_eq!(u["ok"], true, "{u}");
        assert_eq!(u["mismatches"], json!([]), "{u}");
        assert_eq!(u["claims"]["uniqueID"], name.as_str(), "{u}");
        assert_eq!(u["claims"]["clearance"], clearances[i], "{u}");
        assert_eq!(u["claims"]["countryOfAffiliation"], code, "{u}");
        let mut got: Vec<&str> = u["claims"]["acpCOI"]
            .as_array()
            .unwrap_or_else(|| panic!("acpCOI is a list: {u}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, coi, "{u}");
        assert!(u["latency_ms"].as_u64().unwrap() > 0, "{u}");
    }
    let latencies: Vec<u64> = users
        .iter()
        .map(|u| u["latency_ms"].as_u64().unwrap())
        .collect();
    eprintln!(
        "{} → {}: 4 users in {} ms; logins {latencies:?} ms",
        d["from"].as_str().unwrap(),
        d["to"].as_str().unwrap(),
        d["latency_ms"]
    );
}

/// Gives `usa-idp` in dive-fra another client secret than the one dive-usa expects.
async fn break_client_secret(env: &TestEnv, fra: &str) {
    let admin = KeycloakAdmin::connect(fra, "admin", &secret(env, "fra/keycloak/admin-password"))
        .await
        .unwrap();
    let path = "/admin/realms/dive-fra/identity-provider/instances/usa-idp";
    let mut idp: Value = admin.get(path).await.unwrap();
    idp["config"]["clientSecret"] = json!("not-the-secret-of-federation-fra");
    admin.put(path, Some(&idp)).await.unwrap();
}

#[test]
fn a_linked_pair_verifies_both_ways_and_a_wrong_client_secret_fails_clearly() {
    let mut env = TestEnv::new();
    env.own_ports();

    // Codes are checked before anything else.
    let out = env.dive(&["federation", "verify", "XYZ"]);
    out.assert_code(2);
    assert!(out.stderr.contains("XYZ"), "{}", out.stderr);
    let out = env.dive(&["federation", "verify", "fra"]);
    out.assert_code(2);
    assert!(out.stderr.contains("FRA is not deployed"), "{}", out.stderr);

    let _reset = Reset(&env, vec![("hub", "USA"), ("spoke", "FRA")]);
    env.spawn(&["hub", "deploy"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    env.spawn(&["spoke", "deploy", "FRA"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    let fra = keycloak_url(&env, &["spoke", "status", "FRA", "--json"]);
    env.dive(&["federation", "verify", "USA"]).assert_code(2);

    env.spawn(&["federation", "link", "FRA"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    let client_secret = secret(&env, "federation/usa/fra/client-secret");

    // Both directions, every test user, exact claims.
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

    // Recorded, and shown by status with the secret versions of both sides.
    let rows = env.psql(
        "SELECT source || '>' || target || ':' || ok FROM federation_verifications ORDER BY id",
    );
    assert_eq!(
        rows.split_whitespace().collect::<Vec<_>>(),
        ["USA>FRA:true", "FRA>USA:true"]
    );
    let out = env.dive(&["federation", "status", "--json"]);
    out.assert_code(0);
    let status = out.json();
    let link = &status["links"][0];
    assert_eq!(
        (&link["hub"], &link["spoke"]),
        (&json!("USA"), &json!("FRA"))
    );
    for (from, to) in [("USA", "FRA"), ("FRA", "USA")] {
        let d = direction(link, from, to);
        assert_eq!(d["last_verification"]["ok"], true, "{link}");
        assert_eq!(d["secret_version"], 1, "{link}");
        assert_eq!(d["client_secret_version"], "1", "{link}");
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
}
