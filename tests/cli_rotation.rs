//! Secret rotation on real Keycloak (local runtime): hub USA with spokes FRA and GBR, linked.
//! A login probe runs throughout every rotation — a brokered login in each direction of each
//! link and a direct login at each instance, without pause — and must count no failure:
//! - `dive secrets rotate FRA` (kind federation): both directions of USA↔FRA get a new version,
//!   GBR's link is untouched, the old secret is refused by the token endpoint, drift finds
//!   nothing and status shows agreeing versions; then the hub's (both links) the same way.
//! - signing keys of GBR, FRA and the hub (short grace): during the grace the JWKS lists the
//!   previous and the new key, afterwards the new one only; no login fails.
//! - kill -9 after the store write, after the client change and after the partner update, then
//!   `dive resume`: completes with exactly one new version.
//! - a failure injected before the partner update: rolled back on both sides, the previous
//!   version current again, verify ok.
//! - GBR's admin and test users' passwords: the new ones work, the old ones are refused, no
//!   other login fails; then GBR's database passwords: Keycloak restarts (its downtime is
//!   printed), no login that does not involve GBR fails, a deploy afterwards changes nothing.
//! - `--all` killed (kill -9) mid-way and resumed: its child runs are resumed, not started
//!   again; every federation secret gets exactly one new version.
//! - `--older-than` skips young secrets; `dive secrets ensure` recreates a deleted secret and
//!   changes nothing else.
//! - no secret value appears in any output of these commands.

mod common;

use common::{Reset, TestEnv};
use dive_verify::Endpoint;
use dive_verify::probe::{Login, Password, Probe, ProbeReport};
use serde_json::{Value, json};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const ROTATE_TIMEOUT: Duration = Duration::from_secs(300);
const PROBE_WORKERS: usize = 6;
/// Logins the probe makes at least around each rotation: it starts before the rotation (one
/// round of every login first) and goes on after it until it made this many, so the logins
/// after the previous secret was dropped are counted too.
const MIN_ATTEMPTS: u64 = 50;

/// The dive CA of the one environment this file's test runs in (set once it is created).
static TRUST: std::sync::OnceLock<dive_tls::Trust> = std::sync::OnceLock::new();

fn trust() -> &'static dive_tls::Trust {
    TRUST.get().expect("the test sets the CA first")
}

/// An HTTPS client that trusts the dive CA only.
fn https() -> reqwest::Client {
    trust().client(reqwest::Client::builder()).build().unwrap()
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
    latest_versions(env, "federation/")
}

/// `dive secrets list --json`: the secrets whose name starts with `prefix`.
fn secrets_under(env: &TestEnv, prefix: &str) -> Vec<Value> {
    let list = env
        .dive(&["secrets", "list", "--json"])
        .assert_code(0)
        .json();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect()
}

/// Latest version of each secret whose name starts with `prefix`, by name.
fn latest_versions(env: &TestEnv, prefix: &str) -> Vec<(String, u64)> {
    secrets_under(env, prefix)
        .iter()
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
        https()
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
    let probe = Probe::start(trust(), logins.to_vec(), PROBE_WORKERS);
    probe.wait_for(logins.len() as u64, Duration::from_secs(60));
    let out = env.spawn(args).wait(ROTATE_TIMEOUT);
    probe.wait_for(min, Duration::from_secs(60));
    (out, probe.stop())
}

/// The key ids of the signing keys in the JWKS of `at`'s realm.
fn sig_kids(at: &Endpoint) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jwks: Value = rt.block_on(async {
        https()
            .get(format!(
                "{}/realms/{}/protocol/openid-connect/certs",
                at.url,
                at.realm()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "sig")
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The probe's logins but those of users of `home` (whose passwords a rotation changes).
fn logins_except(logins: &[Login], home: &str) -> Vec<Login> {
    logins
        .iter()
        .filter(|l| l.home().code != home)
        .cloned()
        .collect()
}

/// Whether `password` gets the bootstrap admin a token at `url`.
fn admin_token(url: &str, password: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(dive_keycloak::KeycloakAdmin::connect(
        trust(),
        url,
        "admin",
        password,
    ))
    .is_ok()
}

/// Whether `user` of `at` logs in with `password`.
fn user_login(at: &Endpoint, user: &str, password: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(dive_keycloak::login_claims(
        trust(),
        &at.url,
        &at.realm(),
        "dive-verify",
        user,
        password,
    ))
    .is_ok()
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
    let _reset = Reset(
        &env,
        vec![("hub", "USA"), ("spoke", "GBR"), ("spoke", "FRA")],
    );

    // Hub USA and spoke FRA (the README's main command), then spoke GBR, linked too.
    env.spawn(&["run", "workflow", "quickstart"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    TRUST.set(env.trust()).ok();
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
    // The probe's logins, with the passwords the store holds now.
    let current_logins = || {
        let mut logins = Vec::new();
        for (x, p) in [(&usa, &fra), (&fra, &usa), (&usa, &gbr), (&gbr, &usa)] {
            let (user, password) = user(x);
            logins.push(Login::Brokered {
                home: x.clone(),
                target: p.clone(),
                user,
                password: Password::Fixed(password),
            });
        }
        for at in [&usa, &fra, &gbr] {
            let (user, password) = user(at);
            logins.push(Login::Direct {
                at: at.clone(),
                user,
                password: Password::Fixed(password),
            });
        }
        logins
    };
    let mut logins = current_logins();
    // Every stored version of every federation secret (older ones are pruned).
    let all_secrets = |env: &TestEnv| -> Vec<String> {
        secrets_under(env, "federation/")
            .iter()
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

    // 0. Planned first: the new version of each secret, and nothing minted.
    let out = env.dive(&[
        "secrets",
        "rotate",
        "fra",
        "--only",
        "federation",
        "--dry-run",
        "--json",
    ]);
    out.assert_code(4);
    let plan = out.json();
    let minted: Vec<&Value> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "rotation.mint")
        .flat_map(|s| s["changes"].as_array().unwrap().iter())
        .collect();
    assert_eq!(minted.len(), 2, "both directions of FRA: {minted:#?}");
    for m in &minted {
        assert_eq!(m["action"], "update");
        assert!(
            m["fields"]
                .as_array()
                .unwrap()
                .contains(&json!({"field": "version", "old": 1, "new": 2})),
            "{m:#}"
        );
    }
    // The later phases plan on what mint would mint: exactly the two clients and the two
    // providers, the clients' previous secrets dropped at the end; nothing else, nothing left
    // to "known after apply".
    let mut planned: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] != "rotation.mint")
        .flat_map(|s| {
            let kind = s["type"].as_str().unwrap().to_string();
            s["changes"].as_array().unwrap().iter().map(move |c| {
                format!(
                    "{kind}: {} {}",
                    c["action"].as_str().unwrap(),
                    c["object"].as_str().unwrap()
                )
            })
        })
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        [
            "rotation.federation_client: update client federation-fra in realm dive-usa",
            "rotation.federation_client: update client federation-usa in realm dive-fra",
            "rotation.federation_provider: update identity provider fra-idp in realm dive-usa",
            "rotation.federation_provider: update identity provider usa-idp in realm dive-fra",
            "rotation.finish: update client federation-fra in realm dive-usa",
            "rotation.finish: update client federation-usa in realm dive-fra",
        ],
        "{plan:#}"
    );
    assert!(!out.stdout.contains(&old_usa_fra), "no secret in a plan");
    assert_eq!(versions(&env), before, "a dry run mints nothing");

    // 1. FRA's secrets, with the probe running throughout.
    let (out, report) = probed(
        &env,
        &logins,
        &["secrets", "rotate", "fra", "--only", "federation", "--json"],
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

    // 2b. Signing keys (a 3 s grace): GBR's — during the grace its JWKS lists the previous key
    //     and the new one, afterwards the new one only — then FRA's and the hub's.
    let kids_before = sig_kids(&gbr);
    assert_eq!(kids_before.len(), 1, "{kids_before:?}");
    let probe = Probe::start(trust(), logins.clone(), PROBE_WORKERS);
    probe.wait_for(logins.len() as u64, Duration::from_secs(60));
    let run = env.spawn(&[
        "secrets",
        "rotate",
        "GBR",
        "--only",
        "signing-key",
        "--grace",
        "3s",
        "--json",
    ]);
    let id = env.wait_for_run("secret-rotation");
    env.wait_for_phase(&id, "signing-retire", "running");
    let during = sig_kids(&gbr);
    let out = run.wait(ROTATE_TIMEOUT);
    probe.wait_for(MIN_ATTEMPTS, Duration::from_secs(60));
    let report = probe.stop();
    out.assert_code(0);
    no_failures("the rotation of GBR's signing key", &report, MIN_ATTEMPTS);
    assert_eq!(
        during.len(),
        2,
        "old and new key during the grace: {during:?}"
    );
    assert!(during.contains(&kids_before[0]), "{during:?}");
    let kids_after = sig_kids(&gbr);
    assert_eq!(kids_after.len(), 1, "{kids_after:?}");
    assert!(during.contains(&kids_after[0]) && kids_after != kids_before);
    eprintln!("GBR signing key rotation: {:?}", out.elapsed);
    for code in ["FRA", "USA"] {
        let (out, report) = probed(
            &env,
            &logins,
            &[
                "secrets",
                "rotate",
                code,
                "--only",
                "signing-key",
                "--grace",
                "3s",
            ],
            MIN_ATTEMPTS,
        );
        out.assert_code(0);
        no_failures(
            &format!("the rotation of {code}'s signing key"),
            &report,
            MIN_ATTEMPTS,
        );
        eprintln!("{code} signing key rotation: {:?}", out.elapsed);
    }
    env.dive(&["federation", "verify", "FRA"]).assert_code(0);
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
        let probe = Probe::start(trust(), logins.clone(), PROBE_WORKERS);
        probe.wait_for(logins.len() as u64, Duration::from_secs(60));
        let run = env.spawn(&[
            "run",
            "workflow",
            &wf,
            "--param",
            "code=FRA",
            "--param",
            "only=federation",
        ]);
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

    // 4. A failure before the partner update, every kind: both sides rolled back (and FRA's admin
    //    and users' passwords), the previous versions current again, verify ok. FRA's own users'
    //    logins are left out of the probe: their passwords change and change back.
    let injected = builtin.replace("    after: [client]\n", "    after: [injected-failure]\n")
        + "  - id: injected-failure\n    type: exec\n    after: [client, users]\n    retry: { max_attempts: 1 }\n    command: [\"sh\", \"-c\", \"echo injected >&2; exit 1\"]\n";
    let wf = env.workflow("rotation-injected.yaml", &injected);
    let before = latest_versions(&env, "");
    let fra_kids = sig_kids(&fra);
    let current = secret(&env, "federation/usa/fra/client-secret", None);
    let fra_admin = secret(&env, "fra/keycloak/admin-password", None);
    let (out, report) = probed(
        &env,
        &logins_except(&logins, "FRA"),
        &["run", "workflow", &wf, "--param", "code=fra", "--json"],
        20,
    );
    out.assert_code(1);
    let run = run_of(&out);
    assert_eq!(run["state"], "rolled_back", "{run}");
    for id in [
        "admin",
        "users",
        "client",
        "signing-publish",
        "signing-activate",
    ] {
        assert_eq!(
            common::phase(&run, id)["state"],
            "compensated",
            "{id}: {run}"
        );
    }
    no_failures("a rotation rolled back", &report, 20);
    assert_eq!(
        latest_versions(&env, ""),
        before,
        "the previous versions are current again"
    );
    assert_eq!(token_status(&usa.url, "USA", "FRA", &current), 400);
    assert_eq!(
        sig_kids(&fra),
        fra_kids,
        "the previous signing key signs again, alone"
    );
    assert!(
        admin_token(&fra.url, &fra_admin),
        "the previous admin password works again"
    );
    env.dive(&["federation", "verify", "FRA"]).assert_code(0);
    env.dive(&["federation", "drift", "FRA"]).assert_code(0);

    // 5. GBR's admin and users' passwords: the new ones work, the old ones are refused, and no
    //    login that does not use them fails.
    let old_admin = secret(&env, "gbr/keycloak/admin-password", None);
    let old_user = secret(&env, "gbr/users/testuser-gbr-2", None);
    let (out, report) = probed(
        &env,
        &logins_except(&logins, "GBR"),
        &[
            "secrets", "rotate", "GBR", "--only", "admin", "--only", "users", "--json",
        ],
        MIN_ATTEMPTS,
    );
    out.assert_code(0);
    no_failures(
        "the rotation of GBR's admin and users",
        &report,
        MIN_ATTEMPTS,
    );
    let new_admin = secret(&env, "gbr/keycloak/admin-password", None);
    let new_user = secret(&env, "gbr/users/testuser-gbr-2", None);
    assert_ne!(new_admin, old_admin);
    assert!(
        admin_token(&gbr.url, &new_admin),
        "the new admin password gets a token"
    );
    assert!(
        !admin_token(&gbr.url, &old_admin),
        "the old admin password gets none"
    );
    assert!(user_login(&gbr, "testuser-gbr-2", &new_user));
    assert!(!user_login(&gbr, "testuser-gbr-2", &old_user));
    env.dive(&["federation", "verify", "GBR"]).assert_code(0);
    env.dive(&["federation", "drift", "GBR"]).assert_code(0);

    logins = current_logins();

    // 5b. GBR's database passwords: Keycloak restarts with its new one; logins that do not
    //     involve GBR never fail, and GBR's own logins are down only for the restart.
    let old_db = secret(&env, "gbr/keycloak/db-password", None);
    let gbr_direct: Vec<Login> = logins
        .iter()
        .filter(|l| matches!(l, Login::Direct { at, .. } if at.code == "GBR"))
        .cloned()
        .collect();
    let others: Vec<Login> = logins
        .iter()
        .filter(|l| match l {
            Login::Brokered { home, target, .. } => home.code != "GBR" && target.code != "GBR",
            Login::Direct { at, .. } => at.code != "GBR",
        })
        .cloned()
        .collect();
    let downtime_probe = Probe::start(trust(), gbr_direct, 1);
    let (out, report) = probed(
        &env,
        &others,
        &["secrets", "rotate", "GBR", "--only", "database", "--json"],
        20,
    );
    let downtime = downtime_probe.stop();
    out.assert_code(0);
    let run = run_of(&out);
    no_failures("the rotation of GBR's database passwords", &report, 20);
    eprintln!(
        "database rotation of GBR: {:?} in all; GBR's own logins failing for {:?} ({} of {} \
         failed); converge {} ms",
        out.elapsed,
        downtime.failing_for,
        downtime.failures,
        downtime.attempts,
        common::phase(&run, "database")["output"]["converge_ms"]
    );
    assert_ne!(secret(&env, "gbr/keycloak/db-password", None), old_db);
    let (user2, pw2) = user(&gbr);
    assert!(
        user_login(&gbr, &user2, &pw2),
        "GBR logins work after the restart"
    );
    env.dive(&["federation", "verify", "GBR"]).assert_code(0);
    // A deploy afterwards changes nothing (Keycloak is not restarted again).
    let deploy = env
        .spawn(&["spoke", "deploy", "GBR", "--json"])
        .wait(DEPLOY_TIMEOUT);
    deploy.assert_code(0);
    assert_eq!(
        common::phase(&deploy.json(), "keycloak")["output"]["ensured"],
        "unchanged",
        "{}",
        deploy.stdout
    );

    // 5c. GBR's certificate: renewed in place — the same Keycloak process presents the new one
    //     (it rereads its live certificate files), and no login fails, GBR's own included.
    let keycloak_pid = || {
        let pidfile = env.home.path().join("instances/gbr/services/keycloak.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(pidfile).unwrap()).unwrap();
        doc["pid"].as_i64().unwrap()
    };
    let served = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(dive_tls::served_certificate(
            trust(),
            &format!("{}/realms/master", gbr.url),
        ))
        .unwrap()
    };
    let (pid, cert) = (keycloak_pid(), served());
    let (out, report) = probed(
        &env,
        &logins,
        &[
            "secrets",
            "rotate",
            "GBR",
            "--only",
            "certificate",
            "--json",
        ],
        MIN_ATTEMPTS,
    );
    out.assert_code(0);
    no_failures("the renewal of GBR's certificate", &report, MIN_ATTEMPTS);
    let output = common::phase(&out.json(), "certificate")["output"].clone();
    assert_eq!(output["rotated"], true, "{output}");
    assert_ne!(served(), cert, "GBR presents its new certificate");
    assert_eq!(keycloak_pid(), pid, "without a restart");
    eprintln!("GBR certificate renewal: {:?} ({output})", out.elapsed);
    env.dive(&["federation", "verify", "GBR"]).assert_code(0);
    let before = latest_versions(&env, "");

    // 6. --older-than skips young secrets (everything was just rotated): planned, nothing
    //    would change (exit 0), and the run agrees.
    let out = env.dive(&[
        "secrets",
        "rotate",
        "GBR",
        "--older-than",
        "1h",
        "--dry-run",
        "--json",
    ]);
    out.assert_code(0);
    assert_eq!(out.json()["would_change"], false, "{}", out.stdout);
    let out = env
        .spawn(&["secrets", "rotate", "GBR", "--older-than", "1h", "--json"])
        .wait(ROTATE_TIMEOUT);
    out.assert_code(0);
    assert_eq!(latest_versions(&env, ""), before, "nothing rotated");
    let mint = common::phase(&out.json(), "mint")["output"].clone();
    assert_eq!(mint["minted"].as_array().unwrap().len(), 0, "{mint}");
    // Two database passwords, the admin's, four users' and two federation secrets, all young.
    assert_eq!(mint["skipped"].as_array().unwrap().len(), 9, "{mint}");
    // Bad input is refused before anything runs.
    let out = env.dive(&["secrets", "rotate", "GBR", "--only", "passwords"]);
    out.assert_code(2);
    assert!(out.stderr.contains("`passwords`"), "{}", out.stderr);
    env.dive(&["secrets", "rotate", "GBR", "--older-than", "soon"])
        .assert_code(2);

    // 6b. --all (federation and signing keys), killed (kill -9) once a spoke's child has
    //     changed a client, then resumed: the children are resumed, not started again, so
    //     every federation secret gets exactly one new version; no login fails throughout.
    let before = versions(&env);
    let probe = Probe::start(trust(), logins.clone(), PROBE_WORKERS);
    probe.wait_for(logins.len() as u64, Duration::from_secs(60));
    let run = env.spawn(&[
        "secrets",
        "rotate",
        "--all",
        "--only",
        "federation",
        "--only",
        "signing-key",
        "--grace",
        "3s",
    ]);
    let parent = env.wait_for_run("secret-rotation-all");
    common::wait_until(
        "a child of the --all run changed a client",
        Duration::from_secs(120),
        || {
            env.try_psql(&format!(
                "SELECT count(*) FROM phases p JOIN runs r ON r.id = p.run_id \
                 WHERE r.parent_run_id = '{parent}' AND p.phase_id = 'client' \
                 AND p.state = 'succeeded'"
            ))
            .is_ok_and(|n| n.trim() != "0")
        },
    );
    run.signal(libc::SIGKILL);
    let killed = run.wait(Duration::from_secs(10));
    assert_ne!(killed.code, Some(0));
    let out = env
        .spawn(&["resume", &parent, "--json"])
        .wait(ROTATE_TIMEOUT);
    probe.wait_for(MIN_ATTEMPTS, Duration::from_secs(60));
    let report = probe.stop();
    out.assert_code(0);
    no_failures("--all killed and resumed", &report, MIN_ATTEMPTS);
    let children = env.query_json(&format!(
        "SELECT params->>'code' AS code, state FROM runs WHERE parent_run_id = '{parent}' \
         ORDER BY 1"
    ));
    let codes: Vec<&str> = children
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["FRA", "GBR", "USA"],
        "one child each, none started twice: {children}"
    );
    for (name, v) in versions(&env) {
        let was = before.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(v, was + 1, "{name}: exactly one new version");
    }
    env.dive(&["federation", "drift", "FRA"]).assert_code(0);
    env.dive(&["federation", "drift", "GBR"]).assert_code(0);

    // 7. ensure: a deleted secret comes back, nothing else changes.
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
    // Every secret that existed is unchanged (its age goes on, of course).
    let without_age = |list: &Value| -> Vec<Value> {
        let mut v = list.as_array().unwrap().clone();
        v.iter_mut().for_each(|s| {
            s.as_object_mut().unwrap().remove("age_s");
        });
        v
    };
    let after = without_age(&list_after);
    for s in without_age(&list_before) {
        assert!(after.contains(&s), "{s} changed");
    }
    let again = env.dive(&["secrets", "ensure", "gbr", "--json"]).json();
    assert_eq!(again["created"], serde_json::json!([]), "{again}");

    // Nothing printed a secret value.
    let runs = env.dive(&["runs", "list", "--json"]);
    no_secret_in(&runs.stdout, &all_secrets(&env));
}
