//! Secret rotation on real Keycloak (local runtime): hub USA with spokes FRA and GBR, linked.
//! A login probe runs throughout every rotation — a brokered login in each direction of each
//! link and a direct login at each instance, without pause — and must count no failure:
//! - `dive secrets rotate FRA` (kind federation): both directions of USA↔FRA get a new version,
//!   GBR's link is untouched, the old secret is refused by the token endpoint, drift finds
//!   nothing and status shows agreeing versions; then the hub's (both links) the same way.
//! - kill -9 after the store write, after the client change and after the partner update, then
//!   `dive resume`: completes with exactly one new version.
//! - a failure injected before the partner update: rolled back on both sides, the previous
//!   version current again, verify ok.
//! - `--older-than` skips young secrets; `dive secrets ensure` recreates a deleted secret and
//!   changes nothing else.
//! - no secret value appears in any output of these commands.

mod common;

use common::TestEnv;
use common::probe::{Login, Probe, ProbeReport};
use dive_verify::Endpoint;
use serde_json::Value;
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const ROTATE_TIMEOUT: Duration = Duration::from_secs(300);
const PROBE_WORKERS: usize = 6;
/// Logins the probe makes at least around each rotation: it starts before the rotation (one
/// round of every login first) and goes on after it until it made this many, so the logins
/// after the previous secret was dropped are counted too.
const MIN_ATTEMPTS: u64 = 50;

struct Reset<'a>(&'a TestEnv);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        for args in [
            &["spoke", "reset", "FRA", "--yes"][..],
            &["spoke", "reset", "GBR", "--yes"][..],
            &["hub", "reset", "--yes"][..],
        ] {
            let _ = self.0.spawn(args).wait(Duration::from_secs(120));
        }
    }
}

fn secret(env: &TestEnv, name: &str, version: Option<u32>) -> String {
    let v = version.map(|v| v.to_string());
    let mut args = vec!["secrets", "show", name, "--reveal"];
    if let Some(v) = &v {
        args.extend(["--version", v.as_str()]);
    }
    let out = env.dive(&args);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

/// Latest version of each federation secret, by name.
fn versions(env: &TestEnv) -> Vec<(String, u64)> {
    let list = env
        .dive(&["secrets", "list", "--json"])
        .assert_code(0)
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("federation/"))
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["latest"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn version_of(env: &TestEnv, name: &str) -> u64 {
    versions(env)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no secret {name}"))
        .1
}

/// What X's token endpoint says to client `federation-<p>` presenting `secret` (a bogus code:
/// a known secret gets `invalid_grant`, an unknown one is refused as a client).
fn token_status(url: &str, x: &str, p: &str, secret: &str) -> u16 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!(
                "{url}/realms/dive-{}/protocol/openid-connect/token",
                x.to_lowercase()
            ))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "bogus"),
                ("redirect_uri", "http://127.0.0.1/x"),
                ("client_id", &format!("federation-{}", p.to_lowercase())),
                ("client_secret", secret),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// Runs `dive ARGS` with the probe going before, during and after it (see [`MIN_ATTEMPTS`]).
fn probed(
    env: &TestEnv,
    logins: &[Login],
    args: &[&str],
    min: u64,
) -> (common::Output, ProbeReport) {
    let probe = Probe::start(logins.to_vec(), PROBE_WORKERS);
    probe.wait_for(logins.len() as u64, Duration::from_secs(60));
    let out = env.spawn(args).wait(ROTATE_TIMEOUT);
    probe.wait_for(min, Duration::from_secs(60));
    (out, probe.stop())
}

#[track_caller]
fn no_failures(what: &str, report: &ProbeReport, min_attempts: u64) {
    eprintln!(
        "probe during {what}: {} attempts, {} failures, worst {:?}",
        report.attempts, report.failures, report.worst
    );
    assert_eq!(
        report.failures, 0,
        "{what}: failed logins: {:?}",
        report.failed
    );
    assert!(
        report.attempts >= min_attempts,
        "{what}: only {} probe logins",
        report.attempts
    );
}

/// Every secret value the test knows of does not appear in `text`.
#[track_caller]
fn no_secret_in(text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret value appears in the output"
        );
    }
}

fn run_of(out: &common::Output) -> Value {
    let doc = out.json();
    assert!(doc["id"].is_string(), "{doc}");
    doc
}

#[test]
fn rotation_of_federation_secrets_without_a_failed_login() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(&env);

    // Hub USA and spoke FRA (the README's main command), then spoke GBR, linked too.
    env.spawn(&["run", "workflow", "quickstart"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    env.spawn(&["spoke", "deploy", "GBR"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    env.spawn(&["federation", "link", "GBR"])
        .wait(ROTATE_TIMEOUT)
        .assert_code(0);
    // Each user's first brokered login creates the user at the partner; done once here, so the
    // probe's concurrent logins do not race to create the same user.
    env.spawn(&["federation", "verify", "GBR"])
        .wait(ROTATE_TIMEOUT)
        .assert_code(0);

    let url = |args: &[&str]| {
        env.dive(args).assert_code(0).json()["keycloak_url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let usa = Endpoint::new("USA", &url(&["hub", "status", "--json"]));
    let fra = Endpoint::new("FRA", &url(&["spoke", "status", "FRA", "--json"]));
    let gbr = Endpoint::new("GBR", &url(&["spoke", "status", "GBR", "--json"]));
    let user = |e: &Endpoint| {
        let name = format!("testuser-{}-1", e.code.to_lowercase());
        let pw = secret(
            &env,
            &format!("{}/users/{name}", e.code.to_lowercase()),
            None,
        );
        (name, pw)
    };
    let mut logins = Vec::new();
    for (x, p) in [(&usa, &fra), (&fra, &usa), (&usa, &gbr), (&gbr, &usa)] {
        let (user, password) = user(x);
        logins.push(Login::Brokered {
            home: x.clone(),
            target: p.clone(),
            user,
            password,
        });
    }
    for at in [&usa, &fra, &gbr] {
        let (user, password) = user(at);
        logins.push(Login::Direct {
            at: at.clone(),
            user,
            password,
        });
    }
    // Every stored version of every federation secret (older ones are pruned).
    let all_secrets = |env: &TestEnv| -> Vec<String> {
        let list = env
            .dive(&["secrets", "list", "--json"])
            .assert_code(0)
            .json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("federation/"))
            .flat_map(|s| {
                let (latest, count) = (
                    s["latest"].as_u64().unwrap(),
                    s["versions"].as_u64().unwrap(),
                );
                let name = s["name"].as_str().unwrap().to_string();
                (latest + 1 - count..=latest).map(move |v| (name.clone(), v))
            })
            .map(|(n, v)| secret(env, &n, Some(v as u32)))
            .collect()
    };
    let before = versions(&env);
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(before.iter().all(|(_, v)| *v == 1), "{before:?}");
    let old_usa_fra = secret(&env, "federation/usa/fra/client-secret", None);

    // 1. FRA's secrets, with the probe running throughout.
    let (out, report) = probed(
        &env,
        &logins,
        &["secrets", "rotate", "fra", "--json"],
        MIN_ATTEMPTS,
    );
    out.assert_code(0);
    let run = run_of(&out);
    assert_eq!(run["state"], "succeeded", "{run}");
    eprintln!(
        "rotation of FRA (federation) took {} phases: {:?}",
        run["phases"].as_array().unwrap().len(),
        out.elapsed
    );
    no_failures("the rotation of FRA", &report, MIN_ATTEMPTS);
    let after = versions(&env);
    for (name, v) in &after {
        let want = if name.contains("/fra/") { 2 } else { 1 };
        assert_eq!(*v, want, "{name}: {after:?}");
    }
    // The old secret is refused, the new one accepted (as a client; the code is bogus).
    let new_usa_fra = secret(&env, "federation/usa/fra/client-secret", None);
    assert_ne!(new_usa_fra, old_usa_fra);
    assert_eq!(token_status(&usa.url, "USA", "FRA", &old_usa_fra), 401);
    assert_eq!(token_status(&usa.url, "USA", "FRA", &new_usa_fra), 400);
    env.dive(&["federation", "drift", "FRA"]).assert_code(0);
    let status = env.dive(&["federation", "status", "--json"]).json();
    for link in status["links"].as_array().unwrap() {
        for d in link["directions"].as_array().unwrap() {
            assert_eq!(d["secrets_agree"], true, "{d}");
        }
    }
    no_secret_in(&format!("{}{}", out.stdout, out.stderr), &all_secrets(&env));

    // 2. The hub's: both links, four directions.
    let (out, report) = probed(
        &env,
        &logins,
        &["secrets", "rotate", "USA", "--only", "federation"],
        MIN_ATTEMPTS,
    );
    out.assert_code(0);
    no_failures("the rotation of USA", &report, MIN_ATTEMPTS);
    for (name, v) in versions(&env) {
        let want = if name.contains("/fra/") { 3 } else { 2 };
        assert_eq!(v, want, "{name}");
    }
    env.dive(&["federation", "verify", "GBR"]).assert_code(0);

    // 3. kill -9 after the store write, after the client change, after the partner update;
    //    then resume: one new version, no failed login.
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workflows/secret-rotation.yaml"
    ))
    .unwrap();
    for after in ["mint", "client", "provider"] {
        let next = match after {
            "mint" => "client",
            "client" => "provider",
            _ => "verify",
        };
        let held = builtin.replace(&format!("    after: [{after}]\n"), "    after: [hold]\n")
            + &format!(
                "  - id: hold\n    type: exec\n    after: [{after}]\n    retry: {{ max_attempts: 1 }}\n    command: [\"sh\", \"-c\", \"while [ -e {h} ]; do sleep 0.05; done\"]\n",
                h = env.path("hold").display()
            );
        assert!(held.contains(&format!("id: {next}")), "{held}");
        let wf = env.workflow(&format!("rotation-held-{after}.yaml"), &held);
        env.touch("hold");
        let v_before = version_of(&env, "federation/fra/usa/client-secret");
        let probe = Probe::start(logins.clone(), PROBE_WORKERS);
        probe.wait_for(logins.len() as u64, Duration::from_secs(60));
        let run = env.spawn(&["run", "workflow", &wf, "--param", "code=FRA"]);
        let id = env.wait_for_run("secret-rotation");
        env.wait_for_phase(&id, "hold", "running");
        run.signal(libc::SIGKILL);
        let killed = run.wait(Duration::from_secs(10));
        assert_ne!(killed.code, Some(0));
        std::fs::remove_file(env.path("hold")).unwrap();
        let out = env.spawn(&["resume", &id, "--json"]).wait(ROTATE_TIMEOUT);
        probe.wait_for(20, Duration::from_secs(60));
        let report = probe.stop();
        out.assert_code(0);
        assert_eq!(out.json()["state"], "succeeded");
        no_failures(&format!("kill -9 after `{after}` and resume"), &report, 20);
        assert_eq!(
            version_of(&env, "federation/fra/usa/client-secret"),
            v_before + 1,
            "exactly one new version after the resume"
        );
        env.dive(&["federation", "drift", "FRA"]).assert_code(0);
    }

    // 4. A failure before the partner update: both sides rolled back, previous version
    //    current again, verify ok.
    let injected = builtin.replace("    after: [client]\n", "    after: [injected-failure]\n")
        + "  - id: injected-failure\n    type: exec\n    after: [client]\n    retry: { max_attempts: 1 }\n    command: [\"sh\", \"-c\", \"echo injected >&2; exit 1\"]\n";
    let wf = env.workflow("rotation-injected.yaml", &injected);
    let before = versions(&env);
    let current = secret(&env, "federation/usa/fra/client-secret", None);
    let (out, report) = probed(
        &env,
        &logins,
        &["run", "workflow", &wf, "--param", "code=fra", "--json"],
        20,
    );
    out.assert_code(1);
    let run = run_of(&out);
    assert_eq!(run["state"], "rolled_back", "{run}");
    no_failures("a rotation rolled back", &report, 20);
    assert_eq!(
        versions(&env),
        before,
        "the previous versions are current again"
    );
    assert_eq!(token_status(&usa.url, "USA", "FRA", &current), 400);
    env.dive(&["federation", "verify", "FRA"]).assert_code(0);
    env.dive(&["federation", "drift", "FRA"]).assert_code(0);

    // 5. --older-than skips young secrets (everything was just rotated).
    let out = env
        .spawn(&["secrets", "rotate", "GBR", "--older-than", "1h", "--json"])
        .wait(ROTATE_TIMEOUT);
    out.assert_code(0);
    assert_eq!(versions(&env), before, "nothing rotated");
    let mint = common::phase(&out.json(), "mint")["output"].clone();
    assert_eq!(mint["minted"].as_array().unwrap().len(), 0, "{mint}");
    assert_eq!(mint["skipped"].as_array().unwrap().len(), 2, "{mint}");
    // Bad input is refused before anything runs.
    let out = env.dive(&["secrets", "rotate", "GBR", "--only", "passwords"]);
    out.assert_code(2);
    assert!(out.stderr.contains("`passwords`"), "{}", out.stderr);
    env.dive(&["secrets", "rotate", "GBR", "--older-than", "soon"])
        .assert_code(2);

    // 6. ensure: a deleted secret comes back, nothing else changes.
    env.psql("DELETE FROM secrets WHERE name = 'gbr/users/testuser-gbr-4'");
    let list_before = env.dive(&["secrets", "list", "--json"]).json();
    let out = env.dive(&["secrets", "ensure", "gbr", "--json"]);
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(
        doc["created"],
        serde_json::json!(["gbr/users/testuser-gbr-4"]),
        "{doc}"
    );
    let list_after = env.dive(&["secrets", "list", "--json"]).json();
    assert_eq!(
        list_after.as_array().unwrap().len(),
        list_before.as_array().unwrap().len() + 1
    );
    for s in list_before.as_array().unwrap() {
        assert!(list_after.as_array().unwrap().contains(s), "{s} changed");
    }
    let again = env.dive(&["secrets", "ensure", "gbr", "--json"]).json();
    assert_eq!(again["created"], serde_json::json!([]), "{again}");

    // Nothing printed a secret value.
    let runs = env.dive(&["runs", "list", "--json"]);
    no_secret_in(&runs.stdout, &all_secrets(&env));
}
