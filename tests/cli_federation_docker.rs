//! Federation on the Docker runtime: a hub (DNK) and a spoke (ISL) as containers from the
//! offline images, `dive federation link` in both directions, identity providers whose back
//! channel (token, JWKS, userinfo) is the partner's container on network `dive-federation` and
//! whose front channel (authorization, issuer) is the partner's published 127.0.0.1 port, and
//! `dive federation verify` logging every test user in through the federation both ways, then
//! the federation secrets and signing keys rotated with a login probe running (no login fails).
//!
//! Container names are global on the Docker daemon: the codes DNK and ISL are used by no other
//! test. Cleanup touches only these two instances (never `dive cleanup --all`).

mod common;

use common::federation::{direction, users_have_their_claims};
use common::{Output, Reset, TestEnv};
use dive_keycloak::KeycloakAdmin;
use dive_verify::Endpoint;
use dive_verify::probe::{Login, Password, Probe};
use serde_json::Value;
use std::time::{Duration, Instant};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
const HUB: &str = "DNK";
const SPOKE: &str = "ISL";

fn secret(env: &TestEnv, name: &str) -> String {
    let out = env.dive(&["secrets", "show", name, "--reveal"]);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

fn status(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.dive(args);
    out.assert_code(0);
    out.json()
}

fn timed(env: &TestEnv, args: &[&str], timeout: Duration) -> Output {
    let out = env.spawn(args).wait(timeout);
    eprintln!("`dive {}` took {:.1?}", args.join(" "), out.elapsed);
    out
}

/// The networks `container` is attached to, with its aliases on each.
fn networks(container: &str) -> Value {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            container,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker inspect {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// In realm `dive-<to>`, the provider `<from>-idp` calls `from` on its container name and sends
/// browsers to its published URL.
async fn idp_urls_are_split(
    trust: &dive_tls::Trust,
    to_url: &str,
    to: &str,
    admin_password: &str,
    from: &str,
    front: &str,
) {
    let (from, to) = (from.to_lowercase(), to.to_lowercase());
    let admin = KeycloakAdmin::connect(trust, to_url, "admin", admin_password)
        .await
        .unwrap();
    let idp: Value = admin
        .get(&format!(
            "/admin/realms/dive-{to}/identity-provider/instances/{from}-idp"
        ))
        .await
        .unwrap();
    let config = &idp["config"];
    let back =
        format!("https://dive-{from}-keycloak:8443/realms/dive-{from}/protocol/openid-connect");
    let issuer = format!("{front}/realms/dive-{from}");
    assert_eq!(config["tokenUrl"], format!("{back}/token"), "{idp}");
    assert_eq!(config["jwksUrl"], format!("{back}/certs"), "{idp}");
    assert_eq!(config["userInfoUrl"], format!("{back}/userinfo"), "{idp}");
    assert_eq!(
        config["authorizationUrl"],
        format!("{issuer}/protocol/openid-connect/auth"),
        "{idp}"
    );
    assert_eq!(config["issuer"], issuer, "{idp}");
}

#[test]
fn a_hub_and_a_spoke_on_docker_federate_and_verify_both_ways() {
    let started = Instant::now();
    let mut env = TestEnv::new();
    env.own_ports();
    env.set("DIVE_KEYCLOAK_IMAGE", "dive-offline/keycloak:26.5.5");
    // Containers and volumes an earlier run of this test left behind when it was killed (a
    // volume keeps the old database password): only these two instances' resources.
    for code in [HUB, SPOKE] {
        env.dive(&["cleanup", "--instance", code, "--force"])
            .assert_code(0);
    }
    let _reset = Reset(&env, vec![("hub", HUB), ("spoke", SPOKE)]);

    timed(
        &env,
        &["hub", "deploy", "--code", HUB, "--runtime", "docker"],
        DEPLOY_TIMEOUT,
    )
    .assert_code(0);
    timed(
        &env,
        &["spoke", "deploy", SPOKE, "--runtime", "docker"],
        DEPLOY_TIMEOUT,
    )
    .assert_code(0);
    let hub = status(&env, &["hub", "status", "--json"]);
    let spoke = status(&env, &["spoke", "status", SPOKE, "--json"]);
    for s in [&hub, &spoke] {
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["runtime"], "docker", "{s}");
    }
    let hub_url = hub["keycloak_url"].as_str().unwrap().to_string();
    let spoke_url = spoke["keycloak_url"].as_str().unwrap().to_string();
    for url in [&hub_url, &spoke_url] {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }

    // No secret is in any container's configuration (`docker inspect`): passwords and keys
    // reach the containers as files under /run/dive, readable by the image's user only.
    let secrets = env.secret_values();
    assert!(secrets.len() > 8, "{} secrets?", secrets.len());
    for code in [HUB, SPOKE] {
        for service in ["postgres", "keycloak"] {
            let container = format!("dive-{}-{service}", code.to_lowercase());
            let out = std::process::Command::new("docker")
                .args(["inspect", &container])
                .output()
                .unwrap();
            assert!(out.status.success(), "docker inspect {container}");
            let text = String::from_utf8_lossy(&out.stdout);
            // Published on the host's loopback only.
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            let bindings = &doc[0]["HostConfig"]["PortBindings"];
            for (port, hosts) in bindings.as_object().expect("published ports") {
                for h in hosts.as_array().unwrap() {
                    assert_eq!(h["HostIp"], "127.0.0.1", "{container} {port}: {bindings}");
                }
            }
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret is in `docker inspect {container}`"
                );
            }
            let listing = std::process::Command::new("docker")
                .args(["exec", &container, "ls", "-ln", "/run/dive"])
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&listing.stdout);
            assert!(
                listing
                    .lines()
                    .skip(1)
                    .all(|l| l.starts_with("-rw------- ")),
                "{container}: {listing}"
            );
        }
    }

    // Both Keycloaks are on the shared network under their container names, and each on its
    // instance's own network.
    for code in [HUB, SPOKE] {
        let lower = code.to_lowercase();
        let container = format!("dive-{lower}-keycloak");
        let nets = networks(&container);
        let shared = &nets["dive-federation"];
        assert!(shared.is_object(), "{container} on dive-federation: {nets}");
        let aliases: Vec<&str> = shared["Aliases"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            aliases.contains(&container.as_str()),
            "{container} is reachable by its name on dive-federation: {nets}"
        );
        assert!(
            nets[format!("dive-{lower}")].is_object(),
            "{container} on dive-{lower}: {nets}"
        );
    }

    timed(&env, &["federation", "link", SPOKE], DEPLOY_TIMEOUT).assert_code(0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let trust = env.trust();
    let hub_admin = secret(&env, "dnk/keycloak/admin-password");
    let spoke_admin = secret(&env, "isl/keycloak/admin-password");
    rt.block_on(idp_urls_are_split(
        &trust,
        &spoke_url,
        SPOKE,
        &spoke_admin,
        HUB,
        &hub_url,
    ));
    rt.block_on(idp_urls_are_split(
        &trust, &hub_url, HUB, &hub_admin, SPOKE, &spoke_url,
    ));
    let client_secret = secret(&env, "federation/dnk/isl/client-secret");

    // Both directions, every test user, exact claims: the brokers reached each other over the
    // shared network.
    let out = timed(
        &env,
        &["federation", "verify", SPOKE, "--json"],
        VERIFY_TIMEOUT,
    );
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(doc["code"], SPOKE);
    users_have_their_claims(direction(&doc, HUB, SPOKE), HUB, &["NATO"]);
    users_have_their_claims(direction(&doc, SPOKE, HUB), SPOKE, &["NATO"]);
    assert!(
        !out.stdout.contains(&client_secret),
        "the secret never appears"
    );

    // The federation secrets and signing keys rotated on Docker too, with a login probe
    // (brokered both ways, direct at each side) running throughout: no login fails.
    let endpoint = |code: &str, args: &[&str]| {
        Endpoint::new(code, status(&env, args)["keycloak_url"].as_str().unwrap())
    };
    let hub = endpoint(HUB, &["hub", "status", "--code", HUB, "--json"]);
    let spoke = endpoint(SPOKE, &["spoke", "status", SPOKE, "--json"]);
    let user = |e: &Endpoint| {
        let name = format!("testuser-{}-1", e.code.to_lowercase());
        let pw = secret(&env, &format!("{}/users/{name}", e.code.to_lowercase()));
        (name, Password::Fixed(pw))
    };
    let mut logins = Vec::new();
    for (x, p) in [(&hub, &spoke), (&spoke, &hub)] {
        let (user, password) = user(x);
        logins.push(Login::Brokered {
            home: x.clone(),
            target: p.clone(),
            user: user.clone(),
            password: password.clone(),
        });
        logins.push(Login::Direct {
            at: x.clone(),
            user,
            password,
        });
    }
    let started_at = || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.State.StartedAt}}"])
            .arg(format!("dive-{}-keycloak", SPOKE.to_lowercase()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let keycloak_started = started_at();
    let probe = Probe::start(&env.trust(), logins, 2);
    probe.wait_for(4, VERIFY_TIMEOUT);
    let out = timed(
        &env,
        &[
            "secrets",
            "rotate",
            SPOKE,
            "--only",
            "federation",
            "--only",
            "signing-key",
            "--only",
            "certificate",
            "--grace",
            "3s",
            "--json",
        ],
        VERIFY_TIMEOUT,
    );
    probe.wait_for(30, VERIFY_TIMEOUT);
    let report = probe.stop();
    out.assert_code(0);
    // The container was given its new certificate in place and presents it (no restart).
    let renewed = common::phase(&out.json(), "certificate")["output"].clone();
    assert_eq!(renewed["rotated"], true, "{renewed}");
    assert_eq!(
        started_at(),
        keycloak_started,
        "the container was not restarted"
    );
    eprintln!(
        "rotation on docker: {:?}; probe {} attempts, {} failures",
        out.elapsed, report.attempts, report.failures
    );
    assert_eq!(report.failures, 0, "{:?}", report.failed);
    assert_ne!(
        secret(&env, "federation/dnk/isl/client-secret"),
        client_secret
    );
    timed(&env, &["federation", "drift", SPOKE], VERIFY_TIMEOUT).assert_code(0);
    eprintln!("test wall time before the reset: {:.1?}", started.elapsed());
}
