//! Federation on real Keycloak: the README's main command (`quickstart`), then `dive federation
//! link|unlink` between hub USA and spoke FRA on the local runtime — both clients and both identity providers (four mappers each) with the right
//! URLs, a second link that changes nothing, a rollback that leaves nothing behind, a spoke that is
//! not deployed refused before anything runs, and unlink removing everything.

mod common;

use common::{Output, Reset, TestEnv};
use dive_keycloak::KeycloakAdmin;
use serde_json::Value;
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const LINK_TIMEOUT: Duration = Duration::from_secs(300);

fn ok(env: &TestEnv, args: &[&str], timeout: Duration) -> Output {
    let out = env.spawn(args).wait(timeout);
    out.assert_code(0);
    out
}

fn secret(env: &TestEnv, name: &str) -> String {
    let out = env.dive(&["secrets", "show", name, "--reveal"]);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

fn url_of(env: &TestEnv, args: &[&str]) -> String {
    let out = env.dive(args);
    out.assert_code(0);
    out.json()["keycloak_url"].as_str().unwrap().to_string()
}

/// What the admin API shows of the federation objects in one realm.
#[derive(Debug)]
struct Side {
    /// Client `federation-<partner>`.
    client: Option<Value>,
    /// Identity provider `<partner>-idp`.
    idp: Option<Value>,
    mappers: Vec<Value>,
}

fn side(env: &TestEnv, url: &str, code: &str, partner: &str) -> Side {
    let lower = code.to_lowercase();
    let partner = partner.to_lowercase();
    let password = secret(env, &format!("{lower}/keycloak/admin-password"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = KeycloakAdmin::connect(&env.trust(), url, "admin", &password)
            .await
            .unwrap();
        let realm = format!("dive-{lower}");
        let clients: Vec<Value> = admin
            .get(&format!(
                "/admin/realms/{realm}/clients?clientId=federation-{partner}"
            ))
            .await
            .unwrap();
        let client = clients
            .into_iter()
            .find(|c| c["clientId"] == format!("federation-{partner}"));
        let idp_path = format!("/admin/realms/{realm}/identity-provider/instances/{partner}-idp");
        let idp: Option<Value> = admin.get_opt(&idp_path).await.unwrap();
        let mappers = match idp {
            Some(_) => admin.get(&format!("{idp_path}/mappers")).await.unwrap(),
            None => Vec::new(),
        };
        Side {
            client,
            idp,
            mappers,
        }
    })
}

fn federation_secrets(env: &TestEnv) -> String {
    env.psql("SELECT count(DISTINCT name) FROM secrets WHERE name LIKE 'federation/%'")
        .trim()
        .to_string()
}

fn links(env: &TestEnv) -> String {
    env.psql("SELECT count(*) FROM federation_links")
        .trim()
        .to_string()
}

/// Nothing of the federation is left on either side.
fn nothing_left(env: &TestEnv, usa: &str, fra: &str) {
    for (url, code, partner) in [(usa, "USA", "FRA"), (fra, "FRA", "USA")] {
        let s = side(env, url, code, partner);
        assert!(s.client.is_none(), "{code}: client left: {:?}", s.client);
        assert!(
            s.idp.is_none(),
            "{code}: identity provider left: {:?}",
            s.idp
        );
    }
    assert_eq!(federation_secrets(env), "0", "no federation secret left");
    assert_eq!(links(env), "0", "no link recorded");
}

/// Checks one direction X→P: the client in X's realm and the provider in P's.
fn direction_is_linked(env: &TestEnv, x: (&str, &str), p: (&str, &str)) {
    let (x_code, x_url) = x;
    let (p_code, p_url) = p;
    let (xl, pl) = (x_code.to_lowercase(), p_code.to_lowercase());
    let at_x = side(env, x_url, x_code, p_code);
    let client = at_x.client.expect("client federation-<p> exists");
    assert_eq!(client["publicClient"], false, "{client}");
    assert_eq!(client["standardFlowEnabled"], true, "{client}");
    assert_eq!(client["directAccessGrantsEnabled"], false, "{client}");
    assert_eq!(client["implicitFlowEnabled"], false, "{client}");
    assert_eq!(
        client["redirectUris"],
        serde_json::json!([format!("{p_url}/realms/dive-{pl}/broker/{xl}-idp/endpoint")]),
        "{client}"
    );
    assert_eq!(client["attributes"]["dive.secret.version"], "1", "{client}");
    assert!(
        client["defaultClientScopes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "dive-attributes")
            && client["defaultClientScopes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "profile"),
        "dive-attributes added to the realm defaults: {client}"
    );

    let at_p = side(env, p_url, p_code, x_code);
    let idp = at_p.idp.expect("identity provider <x>-idp exists");
    let c = &idp["config"];
    let front = format!("{x_url}/realms/dive-{xl}");
    assert_eq!(idp["providerId"], "oidc", "{idp}");
    assert_eq!(idp["enabled"], true, "{idp}");
    assert_eq!(idp["trustEmail"], true, "{idp}");
    assert_eq!(
        idp["firstBrokerLoginFlowAlias"], "first broker login",
        "{idp}"
    );
    assert_eq!(c["issuer"], front.as_str(), "{idp}");
    assert_eq!(
        c["authorizationUrl"],
        format!("{front}/protocol/openid-connect/auth"),
        "{idp}"
    );
    // Local runtime: the back channel is the same address.
    assert_eq!(
        c["tokenUrl"],
        format!("{front}/protocol/openid-connect/token"),
        "{idp}"
    );
    assert_eq!(
        c["jwksUrl"],
        format!("{front}/protocol/openid-connect/certs"),
        "{idp}"
    );
    assert_eq!(c["clientId"], format!("federation-{pl}"), "{idp}");
    assert_eq!(c["clientAuthMethod"], "client_secret_post", "{idp}");
    assert_eq!(c["syncMode"], "FORCE", "{idp}");
    assert_eq!(c["pkceEnabled"], "true", "{idp}");
    assert_eq!(c["pkceMethod"], "S256", "{idp}");
    assert_eq!(c["validateSignature"], "true", "{idp}");
    assert_eq!(
        c["defaultScope"], "openid profile email dive-attributes",
        "{idp}"
    );
    let mut names: Vec<&str> = at_p
        .mappers
        .iter()
        .map(|m| {
            assert_eq!(
                m["identityProviderMapper"],
                "oidc-user-attribute-idp-mapper"
            );
            assert_eq!(m["config"]["claim"], m["name"]);
            assert_eq!(m["config"]["user.attribute"], m["name"]);
            assert_eq!(m["config"]["syncMode"], "FORCE");
            m["name"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["acpCOI", "clearance", "countryOfAffiliation", "uniqueID"]
    );
    // The secret in the store is the one Keycloak holds (compared by the client's secret).
    let stored = secret(env, &format!("federation/{xl}/{pl}/client-secret"));
    assert_eq!(stored.len(), 32);
    let password = secret(env, &format!("{xl}/keycloak/admin-password"));
    let id = client["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held: Value = rt.block_on(async {
        let admin = KeycloakAdmin::connect(&env.trust(), x_url, "admin", &password)
            .await
            .unwrap();
        admin
            .get(&format!(
                "/admin/realms/dive-{xl}/clients/{id}/client-secret"
            ))
            .await
            .unwrap()
    });
    assert!(
        held["value"] == stored.as_str(),
        "Keycloak holds the stored secret"
    );
}

/// No phase of a re-run changed anything.
fn nothing_changed(run: &Value) {
    for p in run["phases"].as_array().unwrap() {
        let out = &p["output"];
        for key in ["changed", "created", "secret_created"] {
            if let Some(v) = out.get(key) {
                assert_eq!(v, false, "phase {}: {key}: {out}", p["id"]);
            }
        }
    }
}

#[test]
fn link_rollback_relink_and_unlink_between_hub_and_spoke() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(&env, vec![("hub", "USA"), ("spoke", "FRA")]);

    // Refused before anything runs: no hub yet, an unknown code.
    let out = env.dive(&["federation", "link", "FRA"]);
    out.assert_code(2);
    assert!(out.stderr.contains("dive hub deploy"), "{}", out.stderr);
    env.dive(&["federation", "link", "XYZ"]).assert_code(2);

    // The README's main command: hub and spoke deployed side by side, linked, verified.
    let started = std::time::Instant::now();
    let out = ok(
        &env,
        &["run", "workflow", "quickstart", "--json"],
        DEPLOY_TIMEOUT,
    );
    eprintln!("quickstart took {:?}", started.elapsed());
    let run = out.json();
    assert_eq!(run["state"], "succeeded", "{run}");
    let (hub, spoke) = (
        common::phase(&run, "hub")["started_at"].clone(),
        common::phase(&run, "spoke")["started_at"].clone(),
    );
    let hub_done = common::ts(&common::phase(&run, "hub")["finished_at"]);
    assert!(
        common::ts(&spoke) < hub_done
            && common::ts(&hub) < common::ts(&common::phase(&run, "spoke")["finished_at"]),
        "the hub and the spoke deploy side by side: {run}"
    );
    let status = env.dive(&["federation", "status", "--json"]).json();
    let link = &status["links"][0];
    assert_eq!(
        (&link["hub"], &link["spoke"]),
        (&serde_json::json!("USA"), &serde_json::json!("FRA"))
    );
    for d in link["directions"].as_array().unwrap() {
        assert_eq!(d["last_verification"]["ok"], true, "{status}");
    }
    let usa = url_of(&env, &["hub", "status", "--json"]);
    let fra = url_of(&env, &["spoke", "status", "FRA", "--json"]);
    ok(
        &env,
        &["federation", "unlink", "FRA", "--yes"],
        LINK_TIMEOUT,
    );

    // A spoke that is not deployed: exit 2, no run, nothing written.
    let runs_before = env.runs_count();
    let out = env.dive(&["federation", "link", "gbr"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("instance GBR is not deployed: run `dive spoke deploy GBR` first"),
        "{}",
        out.stderr
    );
    assert_eq!(env.runs_count(), runs_before, "no run was started");
    // The hub is not a spoke to link.
    env.dive(&["federation", "link", "USA"]).assert_code(2);
    // The workflow's own precheck says the same when run directly.
    let out = env.dive(&[
        "run",
        "workflow",
        "federation-link",
        "--param",
        "code=gbr",
        "--param",
        "hub=usa",
    ]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("instance GBR is not deployed"),
        "{}",
        out.stderr
    );
    nothing_left(&env, &usa, &fra);

    // A failure after everything was created rolls all of it back.
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workflows/federation-link.yaml"
    ))
    .unwrap();
    let injected = format!(
        "{builtin}  - id: injected-failure\n    type: exec\n    after: [record]\n    retry: {{ max_attempts: 1 }}\n    command: [\"sh\", \"-c\", \"echo injected >&2; exit 1\"]\n"
    );
    let injected_wf = env.workflow("federation-link-injected.yaml", &injected);
    let link_injected = |env: &TestEnv| {
        env.spawn(&[
            "run",
            "workflow",
            &injected_wf,
            "--param",
            "code=fra",
            "--param",
            "hub=usa",
            "--json",
        ])
        .wait(LINK_TIMEOUT)
    };
    let out = link_injected(&env);
    out.assert_code(1);
    let doc = out.json();
    assert_eq!(doc["state"], "rolled_back", "{doc}");
    for p in doc["phases"].as_array().unwrap() {
        // The deploy children have nothing to undo: the stacks stay as they were.
        let expected = match (p["id"].as_str().unwrap(), p["type"].as_str().unwrap()) {
            ("injected-failure", _) => "failed",
            (_, "workflow") => "succeeded",
            _ => "compensated",
        };
        assert_eq!(p["state"], expected, "{}: {doc}", p["id"]);
    }
    nothing_left(&env, &usa, &fra);

    // Killed (kill -9) halfway — both clients and secrets made, no identity provider yet — and
    // then rolled back: nothing is left.
    let hold = env.path("hold");
    let fail = env.path("fail");
    let held = builtin
        .replace(
            "after: [client-hub-to-spoke]",
            "after: [client-hub-to-spoke, hold]",
        )
        .replace(
            "after: [client-spoke-to-hub]",
            "after: [client-spoke-to-hub, hold]",
        )
        + &format!(
            "  - id: hold\n    type: exec\n    after: [client-hub-to-spoke, client-spoke-to-hub]\n    retry: {{ max_attempts: 1 }}\n    command: [\"sh\", \"-c\", \"while [ -e {h} ]; do sleep 0.1; done; if [ -e {f} ]; then echo told to fail >&2; exit 1; fi\"]\n",
            h = hold.display(),
            f = fail.display()
        );
    let wf = env.workflow("federation-link-held.yaml", &held);
    let kill_halfway = |env: &TestEnv| -> String {
        env.touch("hold");
        let run = env.spawn(&[
            "run", "workflow", &wf, "--param", "code=fra", "--param", "hub=usa",
        ]);
        let id = env.wait_for_run("federation-link");
        env.wait_for_phase(&id, "hold", "running");
        assert_eq!(federation_secrets(env), "2", "both secrets exist halfway");
        run.signal(libc::SIGKILL);
        let _ = run.wait(Duration::from_secs(10));
        // The database frees the dead session's locks: the run is orphaned, ready to resume.
        common::wait_until(
            "the killed link run is orphaned",
            Duration::from_secs(20),
            || env.show(&id)["orphaned"] == true,
        );
        std::fs::remove_file(env.path("hold")).unwrap();
        id
    };
    let id = kill_halfway(&env);
    assert!(
        side(&env, &usa, "USA", "FRA").client.is_some(),
        "halfway: the hub's client exists"
    );
    // The client phases' outputs as an attempt records them when an earlier attempt of the
    // same run created the client and the secret but got no answer (its create timed out in a
    // frozen Keycloak and was applied on thaw): `created: false`. The rollback must still remove
    // them, by the run's marks on the client and the secret (found by chaos: a paused spoke
    // container left `federation-usa` and its secret behind).
    env.psql(&format!(
        "UPDATE phases SET output = output || '{{\"created\": false, \"secret_created\": false}}' \
         WHERE run_id = '{id}' AND phase_id LIKE 'client-%'"
    ));
    env.touch("fail");
    let out = env.spawn(&["resume", &id, "--json"]).wait(LINK_TIMEOUT);
    out.assert_code(1);
    assert_eq!(out.json()["state"], "rolled_back", "{}", out.stdout);
    nothing_left(&env, &usa, &fra);

    // Killed halfway again, then resumed: the link completes.
    std::fs::remove_file(&fail).unwrap();
    let id = kill_halfway(&env);
    let out = env.spawn(&["resume", &id, "--json"]).wait(LINK_TIMEOUT);
    out.assert_code(0);
    direction_is_linked(&env, ("USA", &usa), ("FRA", &fra));
    direction_is_linked(&env, ("FRA", &fra), ("USA", &usa));
    ok(
        &env,
        &["federation", "unlink", "FRA", "--yes"],
        LINK_TIMEOUT,
    );
    nothing_left(&env, &usa, &fra);

    // Link: both directions.
    let started = std::time::Instant::now();
    ok(&env, &["federation", "link", "fra"], LINK_TIMEOUT);
    eprintln!("link took {:?}", started.elapsed());
    direction_is_linked(&env, ("USA", &usa), ("FRA", &fra));
    direction_is_linked(&env, ("FRA", &fra), ("USA", &usa));
    assert_eq!(
        env.psql("SELECT hub || '-' || spoke FROM federation_links")
            .trim(),
        "USA-FRA"
    );
    assert_eq!(federation_secrets(&env), "2");

    // Again: nothing changes.
    let again = ok(&env, &["federation", "link", "FRA", "--json"], LINK_TIMEOUT);
    nothing_changed(&again.json());

    // A rollback on an existing link undoes only what its run added: a mapper deleted behind
    // dive's back is added again by the link and removed again by its rollback; the provider,
    // the clients and the link stay.
    let acp = side(&env, &fra, "FRA", "USA")
        .mappers
        .into_iter()
        .find(|m| m["name"] == "acpCOI")
        .unwrap();
    let password = secret(&env, "fra/keycloak/admin-password");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = KeycloakAdmin::connect(&env.trust(), &fra, "admin", &password)
            .await
            .unwrap();
        admin
            .delete(&format!(
                "/admin/realms/dive-fra/identity-provider/instances/usa-idp/mappers/{}",
                acp["id"].as_str().unwrap()
            ))
            .await
            .unwrap();
    });
    let out = link_injected(&env);
    out.assert_code(1);
    assert_eq!(out.json()["state"], "rolled_back", "{}", out.stdout);
    let at_fra = side(&env, &fra, "FRA", "USA");
    assert!(at_fra.idp.is_some() && at_fra.client.is_some());
    let mut names: Vec<&str> = at_fra
        .mappers
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["clearance", "countryOfAffiliation", "uniqueID"]);
    assert_eq!(links(&env), "1");
    assert_eq!(federation_secrets(&env), "2");
    ok(&env, &["federation", "link", "FRA"], LINK_TIMEOUT);
    direction_is_linked(&env, ("USA", &usa), ("FRA", &fra));
    direction_is_linked(&env, ("FRA", &fra), ("USA", &usa));

    // A dry run of unlink lists both directions' objects, the secrets and the record, and
    // removes nothing (it needs no confirmation).
    let out = env.dive(&["federation", "unlink", "FRA", "--dry-run", "--json"]);
    out.assert_code(4);
    let plan = out.json();
    let mut planned: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["changes"].as_array().unwrap().iter())
        .map(|c| {
            format!(
                "{} {}",
                c["action"].as_str().unwrap(),
                c["object"].as_str().unwrap()
            )
        })
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        [
            "delete client federation-fra in realm dive-usa",
            "delete client federation-usa in realm dive-fra",
            "delete federation link USA ↔ FRA",
            "delete identity provider fra-idp in realm dive-usa",
            "delete identity provider usa-idp in realm dive-fra",
            "delete secret federation/fra/usa/client-secret",
            "delete secret federation/usa/fra/client-secret",
        ]
    );
    assert_eq!(links(&env), "1");
    assert_eq!(federation_secrets(&env), "2");
    direction_is_linked(&env, ("USA", &usa), ("FRA", &fra));

    // Unlink without --yes and without a terminal: refused.
    env.dive(&["federation", "unlink", "FRA"]).assert_code(2);
    assert_eq!(links(&env), "1");
    ok(
        &env,
        &["federation", "unlink", "FRA", "--yes"],
        LINK_TIMEOUT,
    );
    nothing_left(&env, &usa, &fra);
    // Unlinking again is harmless.
    ok(
        &env,
        &["federation", "unlink", "FRA", "--yes"],
        LINK_TIMEOUT,
    );

    // Resetting a linked spoke takes its federation with it: the hub keeps no identity
    // provider or client for it, and no federation secret is left (found by the chaos suite).
    ok(&env, &["federation", "link", "FRA"], LINK_TIMEOUT);
    assert_eq!(federation_secrets(&env), "2");
    let out = ok(
        &env,
        &["spoke", "reset", "FRA", "--yes", "--json"],
        LINK_TIMEOUT,
    );
    eprintln!("reset of a linked spoke: {}", out.stdout);
    let hub_side = side(&env, &usa, "USA", "FRA");
    assert!(hub_side.client.is_none(), "{:?}", hub_side.client);
    assert!(hub_side.idp.is_none(), "{:?}", hub_side.idp);
    assert_eq!(federation_secrets(&env), "0");
    assert_eq!(links(&env), "0");
    env.dive(&["db", "validate"]).assert_code(0);
}
