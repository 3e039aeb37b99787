//! `--dry-run` on a real hub (PostgreSQL and Keycloak on this machine): on a fresh home it lists
//! every object a deploy would create and changes nothing (no process, no directory, no secret,
//! no master key, no run recorded); on a deployed hub it finds nothing to do (exit 0); after the
//! hub is tampered with through Keycloak's admin API it shows each difference with its old and
//! new value, leaves Keycloak as it was, and the deploy that follows does exactly those changes.

mod common;

use common::{Reset, TestEnv, processes_under};
use dive_keycloak::KeycloakAdmin;
use serde_json::{Value, json};
use std::time::Duration;

const HUB: &str = "CHE";
const REALM: &str = "dive-che";
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);

/// The changes of a `--dry-run --json` plan.
fn changes(plan: &Value) -> Vec<Value> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .flat_map(|s| s["changes"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The change of `object`, which must be planned exactly once.
#[track_caller]
fn change<'a>(changes: &'a [Value], object: &str) -> &'a Value {
    let found: Vec<&Value> = changes.iter().filter(|c| c["object"] == object).collect();
    assert_eq!(found.len(), 1, "one change of `{object}` in {changes:#?}");
    found[0]
}

fn admin(env: &TestEnv, url: &str) -> KeycloakAdmin {
    let password = env
        .dive(&["secrets", "show", "che/keycloak/admin-password", "--reveal"])
        .assert_code(0)
        .stdout
        .trim()
        .to_string();
    let trust = env.trust();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(KeycloakAdmin::connect(&trust, url, "admin", &password))
        .unwrap()
}

#[test]
fn a_dry_run_plans_a_hub_changes_nothing_and_the_deploy_does_what_it_planned() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(&env, vec![("hub", HUB)]);

    // A fresh home: everything would be created, nothing is.
    let out = env.dive(&["hub", "deploy", "--code", HUB, "--dry-run", "--json"]);
    out.assert_code(4);
    let plan = out.json();
    assert_eq!(plan["would_change"], true, "{plan:#}");
    let planned = changes(&plan);
    for object in [
        "registration",
        "secret che/postgres/password",
        "secret che/keycloak/admin-password",
        "secret ca/authority",
        "certificate che/keycloak/tls",
        "service postgres (local)",
        "database keycloak (PostgreSQL)",
        "service keycloak (local)",
        "realm dive-che",
        "user-profile attribute acpCOI in realm dive-che",
        "client scope dive-attributes in realm dive-che",
        "client dive-verify in realm dive-che",
        "user testuser-che-1 in realm dive-che",
    ] {
        assert_eq!(change(&planned, object)["action"], "create", "{object}");
    }
    assert!(
        planned.iter().all(|c| c["action"] == "create"),
        "{planned:#?}"
    );
    let realm = change(&planned, "realm dive-che");
    assert_eq!(realm["instance"], HUB);
    assert!(
        realm["fields"]
            .as_array()
            .unwrap()
            .contains(&json!({"field": "displayName", "old": null, "new": "DIVE CHE"})),
        "{realm:#}"
    );
    // Secrets are planned, never shown.
    let secret = change(&planned, "secret che/keycloak/admin-password");
    assert_eq!(secret["fields"][0]["new"], "(sensitive)", "{secret:#}");
    assert!(!env.home.path().join("instances").exists());
    assert!(!env.home.path().join("master.key").exists());
    assert!(processes_under(env.home.path()).is_empty());
    assert_eq!(env.runs_count().unwrap_or(0), 0);
    assert_eq!(env.psql("SELECT count(*) FROM secrets").trim(), "0");
    assert_eq!(env.psql("SELECT count(*) FROM secret_keycheck").trim(), "0");
    assert_eq!(env.psql("SELECT count(*) FROM instances").trim(), "0");

    // The text plan says the same, with marks.
    let text = env.dive(&["hub", "deploy", "--code", HUB, "--dry-run"]);
    text.assert_code(4);
    assert!(
        text.stdout
            .contains("  + realm dive-che\n      displayName: DIVE CHE"),
        "{}",
        text.stdout
    );

    // Deployed: nothing would change.
    env.spawn(&["hub", "deploy", "--code", HUB])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    let runs = env.runs_count();
    let out = env.dive(&["hub", "deploy", "--code", HUB, "--dry-run", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["would_change"], false, "{}", out.stdout);
    assert_eq!(env.runs_count(), runs, "a dry run records no run");

    // Tampered with behind dive's back.
    let url = env.dive(&["hub", "status", "--json"]).assert_code(0).json()["keycloak_url"]
        .as_str()
        .unwrap()
        .to_string();
    let kc = admin(&env, &url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let live = |kc: &KeycloakAdmin| {
        rt.block_on(async {
            let realm = kc.realm(REALM).await.unwrap().unwrap();
            let profile = kc.user_profile(REALM).await.unwrap();
            let client = kc
                .client_by_client_id(REALM, "dive-verify")
                .await
                .unwrap()
                .unwrap();
            json!({ "realm": realm.display_name, "profile": profile,
                    "redirects": client.redirect_uris })
        })
    };
    rt.block_on(async {
        let mut realm = kc.realm(REALM).await.unwrap().unwrap();
        realm.display_name = Some("Tampered".into());
        kc.update_realm(REALM, &realm).await.unwrap();
        let mut profile = kc.user_profile(REALM).await.unwrap();
        profile["attributes"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["name"] != "acpCOI");
        kc.update_user_profile(REALM, &profile).await.unwrap();
        let mut client = kc
            .client_by_client_id(REALM, "dive-verify")
            .await
            .unwrap()
            .unwrap();
        client.redirect_uris = Some(vec!["https://elsewhere.example/cb".into()]);
        let id = client.id.clone().unwrap();
        kc.update_client(REALM, &id, &client).await.unwrap();
    });
    let before = live(&kc);

    let out = env.dive(&["hub", "deploy", "--code", HUB, "--dry-run", "--json"]);
    out.assert_code(4);
    let planned = changes(&out.json());
    let realm = change(&planned, "realm dive-che");
    assert_eq!(realm["action"], "update");
    assert_eq!(
        realm["fields"],
        json!([{"field": "displayName", "old": "Tampered", "new": "DIVE CHE"}])
    );
    assert_eq!(
        change(&planned, "user-profile attribute acpCOI in realm dive-che")["action"],
        "create"
    );
    let client = change(&planned, "client dive-verify in realm dive-che");
    assert_eq!(client["action"], "update");
    assert!(
        client["fields"].as_array().unwrap().contains(&json!({
            "field": "redirectUris",
            "old": ["https://elsewhere.example/cb"],
            "new": ["http://127.0.0.1/dive-verify/callback"],
        })),
        "{client:#}"
    );
    assert_eq!(live(&kc), before, "a dry run changes nothing in Keycloak");

    // The deploy does what was planned, and then nothing is left to do.
    let run = env
        .spawn(&["hub", "deploy", "--code", HUB, "--json"])
        .wait(DEPLOY_TIMEOUT);
    run.assert_code(0);
    let run = run.json();
    let output = |id: &str| common::phase(&run, id)["output"].clone();
    assert_eq!(output("realm")["updated"], true);
    assert_eq!(output("user-profile")["added"], json!(["acpCOI"]));
    assert!(
        output("verify-client")["fixed"]
            .as_array()
            .unwrap()
            .contains(&json!("redirectUris"))
    );
    env.dive(&["hub", "deploy", "--code", HUB, "--dry-run"])
        .assert_code(0);

    // A stopped hub: its services would be started, and what Keycloak holds is known after.
    env.dive(&["hub", "down", "--code", HUB]).assert_code(0);
    let out = env.dive(&["hub", "deploy", "--code", HUB, "--dry-run", "--json"]);
    out.assert_code(4);
    let planned = changes(&out.json());
    assert_eq!(
        change(&planned, "service keycloak (local)")["action"],
        "start"
    );
    assert!(
        planned.iter().any(|c| c["action"] == "known_after_apply"),
        "{planned:#?}"
    );
    assert!(
        processes_under(env.home.path())
            .iter()
            .all(|p| !p.contains("keycloak")),
        "the dry run started nothing"
    );
}

#[test]
fn a_dry_run_refuses_what_a_run_would_refuse_and_waits_for_no_lock() {
    let env = TestEnv::new();
    // No hub: a spoke cannot be planned (invalid input, 2).
    let out = env.dive(&["spoke", "deploy", "FRA", "--dry-run"]);
    out.assert_code(2);
    // A resume has nothing to plan.
    let out = env.dive(&[
        "resume",
        "01a23263-70ee-76ae-b668-49212681d784",
        "--dry-run",
    ]);
    out.assert_code(2);
    assert!(out.stderr.contains("--dry-run"), "{}", out.stderr);

    // A run holding the hub's lock: the plan is refused with exit 3, at once.
    let file = env.workflow(
        "hold.yaml",
        "name: hold\nlock: \"instance:USA\"\nphases:\n  - id: wait\n    type: sleep\n    duration: 60s\n",
    );
    let holder = env.spawn(&["run", "workflow", &file]);
    env.wait_for_run("hold");
    let started = std::time::Instant::now();
    let out = env.dive(&["hub", "deploy", "--dry-run"]);
    out.assert_code(3);
    assert!(out.stderr.contains("instance:USA"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(holder);
}

/// Names of the Docker containers and volumes whose names start with `prefix`.
fn docker_objects(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        ["ps", "-a", "--format", "{{.Names}}"],
        ["volume", "ls", "--format", "{{.Name}}"],
    ] {
        let listed = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("the docker CLI runs");
        assert!(listed.status.success(), "docker {args:?}");
        out.extend(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .filter(|n| n.starts_with(prefix))
                .map(String::from),
        );
    }
    out
}

/// On the Docker runtime too: a fresh hub is planned container by container, and no container
/// or volume is made.
#[test]
fn a_docker_dry_run_plans_containers_and_creates_none() {
    let mut env = TestEnv::new();
    env.own_ports();
    let out = env.dive(&[
        "hub",
        "deploy",
        "--code",
        "NLD",
        "--runtime",
        "docker",
        "--dry-run",
        "--json",
    ]);
    out.assert_code(4);
    let plan = out.json();
    let planned = changes(&plan);
    for object in ["service postgres (docker)", "service keycloak (docker)"] {
        assert_eq!(change(&planned, object)["action"], "create", "{object}");
    }
    assert!(
        planned.iter().all(|c| c["action"] == "create"),
        "{planned:#?}"
    );
    assert_eq!(docker_objects("dive-nld-"), Vec::<String>::new());
    assert!(processes_under(env.home.path()).is_empty());
    assert_eq!(env.runs_count().unwrap_or(0), 0);
    assert_eq!(env.psql("SELECT count(*) FROM instances").trim(), "0");
}
