//! Identity stacks on real Keycloak: `dive hub deploy` and `dive spoke deploy` on the local and
//! Docker runtimes, logins of the test users with the four claims, idempotent re-runs, up/down/
//! reset, and a kill -9 during Keycloak's start followed by resume.

mod common;

use common::{Output, Reset, TestEnv, wait_until};
use serde_json::Value;
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);

fn deploy(env: &TestEnv, args: &[&str]) -> Output {
    let out = env.spawn(args).wait(DEPLOY_TIMEOUT);
    out.assert_code(0);
    out
}

fn status(env: &TestEnv, role: &str, code: &str) -> Value {
    let mut args = vec![role, "status"];
    if role == "spoke" {
        args.push(code);
    }
    args.push("--json");
    let out = env.dive(&args);
    out.assert_code(0);
    out.json()
}

fn secret(env: &TestEnv, name: &str) -> String {
    let out = env.dive(&["secrets", "show", name, "--reveal"]);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

/// Every test user of `code` logs in on `dive-verify`; its ID token carries the four claims.
fn users_log_in(env: &TestEnv, url: &str, code: &str) {
    let lower = code.to_lowercase();
    let clearances = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"];
    let mut coi = vec!["NATO".to_string()];
    if ["USA", "GBR", "CAN", "AUS", "NZL"].contains(&code) {
        coi.push("FVEY".into());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let trust = env.trust();
    for (i, clearance) in clearances.iter().enumerate() {
        let user = format!("testuser-{lower}-{}", i + 1);
        let password = secret(env, &format!("{lower}/users/{user}"));
        let claims = rt
            .block_on(dive_keycloak::login_claims(
                &trust,
                url,
                &format!("dive-{lower}"),
                "dive-verify",
                &user,
                &password,
            ))
            .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
        assert_eq!(claims["uniqueID"], user.as_str(), "{claims}");
        assert_eq!(claims["clearance"], *clearance, "{claims}");
        assert_eq!(claims["countryOfAffiliation"], code, "{claims}");
        let mut got: Vec<String> = claims["acpCOI"]
            .as_array()
            .unwrap_or_else(|| panic!("acpCOI is an array: {claims}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        got.sort();
        let mut want = coi.clone();
        want.sort();
        assert_eq!(got, want, "{claims}");
    }
}

fn discovery_answers(env: &TestEnv, url: &str, code: &str) {
    let realm = format!("dive-{}", code.to_lowercase());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let https = env
        .trust()
        .client(reqwest::Client::builder())
        .build()
        .unwrap();
    let doc: Value = rt.block_on(async {
        https
            .get(format!(
                "{url}/realms/{realm}/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(doc["issuer"], format!("{url}/realms/{realm}"));
}

/// The realm's user profile declares the four attributes (Keycloak drops undeclared ones).
fn profile_declares_the_attributes(env: &TestEnv, url: &str, code: &str) {
    let lower = code.to_lowercase();
    let password = secret(env, &format!("{lower}/keycloak/admin-password"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let profile: Value = rt.block_on(async {
        let admin = dive_keycloak::KeycloakAdmin::connect(&env.trust(), url, "admin", &password)
            .await
            .unwrap();
        admin.user_profile(&format!("dive-{lower}")).await.unwrap()
    });
    let names: Vec<&str> = profile["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for attribute in ["uniqueID", "clearance", "countryOfAffiliation", "acpCOI"] {
        assert!(
            names.contains(&attribute),
            "{attribute} declared: {names:?}"
        );
    }
}

/// No phase of a re-run changed anything.
fn nothing_changed(run: &Value) {
    for p in run["phases"].as_array().unwrap() {
        let out = &p["output"];
        if let Some(changed) = out.get("changed") {
            assert_eq!(changed, false, "phase {} changed something: {out}", p["id"]);
        }
        if let Some(e) = out.get("ensured") {
            assert_eq!(e, "unchanged", "phase {}: {out}", p["id"]);
        }
        if let Some(issued) = out.get("issued") {
            assert_eq!(
                issued, false,
                "phase {} issued a certificate: {out}",
                p["id"]
            );
        }
        if let Some(c) = out.get("created") {
            // A flag, or a count of things created.
            assert!(
                c == false || c == 0,
                "phase {} created something: {out}",
                p["id"]
            );
        }
    }
}

#[test]
fn hub_and_spokes_on_the_local_runtime() {
    let mut env = TestEnv::new();
    env.own_ports();
    env.set("DIVE_CERT_LIFETIME", "30d");
    let _reset = Reset(
        &env,
        vec![("hub", "USA"), ("spoke", "FRA"), ("spoke", "GBR")],
    );
    deploy(&env, &["hub", "deploy"]);
    let hub = status(&env, "hub", "USA");
    assert_eq!(hub["state"], "running", "{hub}");
    assert_eq!(hub["runtime"], "local");
    assert_eq!(hub["realm"], "dive-usa");
    for service in hub["services"].as_array().unwrap() {
        assert_eq!(service["health"], "healthy", "{hub}");
    }
    let url = hub["keycloak_url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with("https://127.0.0.1:") && !url[8..].contains('/'),
        "{url}"
    );
    discovery_answers(&env, &url, "USA");
    profile_declares_the_attributes(&env, &url, "USA");
    users_log_in(&env, &url, "USA");

    // Again, on a deployed hub: succeeds and changes nothing — not even the certificate file,
    // which Keycloak would take up again, dropping the TLS handshakes under way.
    let cert_file = env
        .home
        .path()
        .join("instances/usa/services/keycloak.files/tls.crt");
    let served = std::fs::read(&cert_file).unwrap();
    let again = deploy(&env, &["hub", "deploy", "--json"]);
    nothing_changed(&again.json());
    assert!(
        std::fs::read(&cert_file).unwrap() == served,
        "a deploy that changes nothing leaves {} alone",
        cert_file.display()
    );

    // Its certificate: the names it is reached by, the lifetime the setting says. A longer
    // lifetime set later makes the next deploy renew it — in place, Keycloak not restarted.
    let cert = &hub["certificate"];
    assert_eq!(
        cert["names"],
        serde_json::json!(["127.0.0.1", "localhost"]),
        "{hub}"
    );
    let days = cert["days_left"].as_i64().unwrap();
    assert!((29..=30).contains(&days), "{hub}");
    let with_lifetime = |lifetime: &str, args: &[&str]| {
        let out = env
            .command(args)
            .env("DIVE_CERT_LIFETIME", lifetime)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = with_lifetime("365d", &["hub", "deploy", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let renewed: Value = serde_json::from_str(&stdout).unwrap();
    let certificate = &common::phase(&renewed, "certificate")["output"];
    assert_eq!(certificate["issued"], true, "{certificate}");
    let keycloak = &common::phase(&renewed, "keycloak")["output"];
    assert_eq!(keycloak["ensured"], "unchanged", "{keycloak}");
    let days = status(&env, "hub", "USA")["certificate"]["days_left"]
        .as_i64()
        .unwrap();
    assert!((364..=365).contains(&days), "{days}");
    let (code, _, stderr) = with_lifetime("soon", &["hub", "status"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("DIVE_CERT_LIFETIME `soon`"), "{stderr}");

    // Two spokes at once (lower case accepted).
    let fra = env.spawn(&["spoke", "deploy", "fra"]);
    let gbr = env.spawn(&["spoke", "deploy", "GBR"]);
    fra.wait(DEPLOY_TIMEOUT).assert_code(0);
    gbr.wait(DEPLOY_TIMEOUT).assert_code(0);
    for code in ["FRA", "GBR"] {
        let s = status(&env, "spoke", code);
        assert_eq!(s["state"], "running", "{s}");
        assert_ne!(s["keycloak_url"], hub["keycloak_url"]);
    }
    let fra_url = status(&env, "spoke", "FRA")["keycloak_url"]
        .as_str()
        .unwrap()
        .to_string();
    users_log_in(&env, &fra_url, "FRA");

    // down keeps data; up starts it again and the same users still log in.
    env.dive(&["spoke", "down", "FRA"]).assert_code(0);
    assert_eq!(status(&env, "spoke", "FRA")["state"], "stopped");
    deploy(&env, &["spoke", "up", "FRA"]);
    assert_eq!(status(&env, "spoke", "FRA")["state"], "running");
    users_log_in(&env, &fra_url, "FRA");

    // reset removes the instance, its data and its secrets.
    env.dive(&["spoke", "reset", "GBR", "--yes"]).assert_code(0);
    assert_eq!(status(&env, "spoke", "GBR")["state"], "not deployed");
    let secrets = env.dive(&["secrets", "list", "--json"]);
    assert!(!secrets.stdout.contains("gbr/"), "secrets of GBR removed");
    assert!(!env.home.path().join("instances/gbr").join("data").exists());
}

#[test]
fn hub_on_the_docker_runtime_with_the_offline_images() {
    let mut env = TestEnv::new();
    env.own_ports();
    env.set("DIVE_KEYCLOAK_IMAGE", "dive-offline/keycloak:26.5.5");
    let _reset = Reset(&env, vec![("hub", "NOR")]);
    deploy(
        &env,
        &["hub", "deploy", "--code", "nor", "--runtime", "docker"],
    );
    let hub = status(&env, "hub", "NOR");
    assert_eq!(hub["state"], "running", "{hub}");
    assert_eq!(hub["runtime"], "docker");
    let url = hub["keycloak_url"].as_str().unwrap().to_string();
    discovery_answers(&env, &url, "NOR");
    users_log_in(&env, &url, "NOR");
    let again = deploy(&env, &["hub", "deploy", "--json"]);
    nothing_changed(&again.json());

    // down/up/reset on Docker too: stopped containers keep their volumes.
    env.dive(&["hub", "down"]).assert_code(0);
    assert_eq!(status(&env, "hub", "NOR")["state"], "stopped");
    deploy(&env, &["hub", "up"]);
    assert_eq!(status(&env, "hub", "NOR")["state"], "running");
    users_log_in(&env, &url, "NOR");
    env.dive(&["hub", "reset", "--yes"]).assert_code(0);
    assert_eq!(status(&env, "hub", "NOR")["state"], "not deployed");
    let gone = |name: &str| {
        !std::process::Command::new("docker")
            .args(["inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(gone("dive-nor-keycloak") && gone("dive-nor-postgres") && gone("dive-nor-pgdata"));
}

#[test]
fn kill_during_keycloak_start_then_resume_starts_no_second_keycloak() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(&env, vec![("hub", "CAN")]);
    let run = env.spawn(&["hub", "deploy", "--code", "CAN"]);
    let pid_file = env.home.path().join("instances/can/services/keycloak.json");
    wait_until("Keycloak is starting", Duration::from_secs(300), || {
        pid_file.exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    run.signal(libc::SIGKILL);
    let killed = run.wait(Duration::from_secs(10));
    assert_ne!(killed.code, Some(0));
    let keycloak_pid = std::fs::read_to_string(&pid_file).unwrap();

    let runs = env.dive(&["runs", "list", "--json"]).json();
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["orphaned"], true, "{runs}");

    let resumed = env.spawn(&["resume", &id, "--json"]).wait(DEPLOY_TIMEOUT);
    resumed.assert_code(0);
    let doc = resumed.json();
    let keycloak = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "keycloak")
        .unwrap();
    assert_eq!(
        keycloak["output"]["ensured"], "unchanged",
        "the Keycloak that was starting is kept"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        keycloak_pid,
        "no second Keycloak"
    );
    let hub = status(&env, "hub", "CAN");
    users_log_in(&env, hub["keycloak_url"].as_str().unwrap(), "CAN");
}

#[test]
fn a_failure_after_the_realm_exists_rolls_back_to_a_clean_instance() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(&env, vec![("hub", "AUS")]);
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workflows/instance-deploy.yaml"
    ))
    .unwrap();
    let injected = format!(
        "{builtin}  - id: injected-failure\n    type: exec\n    after: [realm]\n    retry: {{ max_attempts: 1 }}\n    command: [\"sh\", \"-c\", \"echo injected >&2; exit 1\"]\n"
    );
    let wf = env.workflow("hub-deploy-injected.yaml", &injected);
    let out = env
        .spawn(&[
            "run", "workflow", &wf, "--param", "code=aus", "--param", "role=hub", "--json",
        ])
        .wait(DEPLOY_TIMEOUT);
    out.assert_code(1);
    let doc = out.json();
    assert_eq!(doc["state"], "rolled_back", "{doc}");
    for p in doc["phases"].as_array().unwrap() {
        let state = p["state"].as_str().unwrap();
        assert!(
            ["compensated", "succeeded", "failed", "skipped"].contains(&state),
            "{} ended {state}",
            p["id"]
        );
    }
    let by_id = |id: &str| {
        doc["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    for id in [
        "instance",
        "postgres",
        "keycloak-database",
        "keycloak",
        "realm",
    ] {
        assert_eq!(by_id(id), "compensated", "{id}");
    }
    // Clean: not registered, no services, no data, port block free.
    assert_eq!(status(&env, "hub", "AUS")["state"], "not deployed");
    let inst = env.home.path().join("instances/aus");
    assert!(!inst.join("services/keycloak.json").exists());
    assert!(!inst.join("services/postgres.json").exists());
    assert!(!inst.join("data/pgdata").exists());
    assert_eq!(env.psql("SELECT count(*) FROM instances").trim(), "0");
    // Nothing of the new instance stays: its directory and the secrets its deploy generated
    // go with its registration, and `dive db validate` finds nothing dangling.
    assert!(!inst.exists(), "{} left behind", inst.display());
    assert_eq!(
        env.psql("SELECT count(*) FROM secrets WHERE name LIKE 'aus/%'"),
        "0"
    );
    env.dive(&["db", "validate"]).assert_code(0);
}
