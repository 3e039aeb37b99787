//! End-to-end: `dive hub|spoke …` and the `instance.register` phase through the real binary —
//! codes checked before anything happens, a spoke needs a hub, status of what is (not) deployed,
//! reset needs confirmation, a registration that a rollback undoes, and down and reset as
//! workflows (`instance-down`, `instance-reset`): locked against deploys, recorded, resumable.

mod common;

use common::{TestEnv, phase};

/// A workflow that registers an instance and keeps a secret for it; `fail` adds a failing phase.
fn register_workflow(env: &TestEnv, file: &str, role: &str, fail: bool) -> String {
    let failing = if fail {
        r#"
  - id: boom
    type: exec
    after: [register]
    command: ["sh", "-c", "exit 1"]
    retry: { max_attempts: 1 }
"#
    } else {
        ""
    };
    env.workflow(
        file,
        &format!(
            r#"
name: register-{role}
lock: "instance:${{params.code}}"
params:
  code: {{ type: country-code }}
phases:
  - id: register
    type: instance.register
    code: ${{params.code}}
    role: {role}
  - id: password
    type: secret.ensure
    after: [register]
    name: ${{phases.register.output.code_lower}}/keycloak/admin-password
{failing}"#
        ),
    )
}

#[test]
fn unknown_codes_are_rejected_before_anything_happens() {
    let env = TestEnv::new();
    for args in [
        &["spoke", "deploy", "xyz"][..],
        &["spoke", "status", "XYZ", "--json"],
        &["spoke", "reset", "xyz", "--yes"],
        &["hub", "deploy", "--code", "xyz"],
        &["hub", "status", "--code", "fr"],
    ] {
        let out = env.dive(args);
        out.assert_code(2);
        assert!(
            out.stderr
                .contains("is not an ISO 3166-1 alpha-3 country code"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    let out = env.dive(&["spoke", "deploy", "xyz"]);
    assert!(
        out.stderr
            .contains("`XYZ` is not an ISO 3166-1 alpha-3 country code"),
        "{}",
        out.stderr
    );
    // Not even the state database was touched.
    assert_eq!(env.runs_count(), None);

    // The same check as a workflow parameter type: exit 2, no run written.
    let wf = register_workflow(&env, "reg.yaml", "hub", false);
    let out = env.dive(&["run", "workflow", &wf, "--param", "code=xyz"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("parameter `code`: `XYZ` is not an ISO 3166-1 alpha-3 country code"),
        "{}",
        out.stderr
    );
    assert!(env.runs_count().unwrap_or(0) == 0);
}

#[test]
fn a_spoke_needs_a_hub() {
    let env = TestEnv::new();
    let out = env.dive(&["spoke", "deploy", "fra"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("no hub is deployed: run `dive hub deploy` first"),
        "{}",
        out.stderr
    );
    assert_eq!(env.runs_count(), Some(0));

    // The same refusal from the phase's precheck, before the run is written.
    let wf = register_workflow(&env, "spoke.yaml", "spoke", false);
    let out = env.dive(&["run", "workflow", &wf, "--param", "code=FRA"]);
    out.assert_code(2);
    assert!(out.stderr.contains("dive hub deploy"), "{}", out.stderr);
    assert_eq!(env.runs_count(), Some(0));
}

#[test]
fn status_of_an_instance_that_is_not_deployed() {
    let env = TestEnv::new();
    let status = env.dive(&["hub", "status", "--json"]).assert_code(0).json();
    assert_eq!(status["code"], "USA");
    assert_eq!(status["role"], "hub");
    assert_eq!(status["state"], "not deployed");
    assert_eq!(status["realm"], "dive-usa");
    assert!(status["runtime"].is_null());
    assert!(status["keycloak_url"].is_null());
    assert_eq!(status["services"], serde_json::json!([]));

    let status = env
        .dive(&["spoke", "status", "gbr", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(status["code"], "GBR");
    assert_eq!(status["role"], "spoke");
    assert_eq!(status["state"], "not deployed");

    let out = env.dive(&["spoke", "up", "GBR"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("`dive spoke deploy GBR`"),
        "{}",
        out.stderr
    );
    env.dive(&["spoke", "down", "GBR"]).assert_code(2);
}

#[test]
fn reset_needs_yes_without_a_terminal() {
    let env = TestEnv::new();
    for args in [&["hub", "reset"][..], &["spoke", "reset", "fra"]] {
        let out = env.dive(args);
        out.assert_code(2);
        assert!(out.stderr.contains("--yes"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(env.runs_count(), None, "nothing was touched");
}

#[test]
fn register_phase_status_rollback_and_reset() {
    let env = TestEnv::new();
    let hub_wf = register_workflow(&env, "hub.yaml", "hub", false);
    let out = env.dive(&["run", "workflow", &hub_wf, "--param", "code=usa", "--json"]);
    out.assert_code(0);
    let run = out.json();
    let register = &phase(&run, "register")["output"];
    assert_eq!(register["code"], "USA");
    assert_eq!(register["role"], "hub");
    assert_eq!(register["runtime"], "local");
    assert_eq!(register["created"], true);
    let url = register["keycloak_url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!(
            "https://127.0.0.1:{}",
            register["ports"]["keycloak"].as_u64().unwrap()
        )
    );

    // Registered, no services yet: stopped, with its URL and realm.
    let status = env.dive(&["hub", "status", "--json"]).assert_code(0).json();
    assert_eq!(status["code"], "USA");
    assert_eq!(status["runtime"], "local");
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["keycloak_url"], url.as_str());
    assert_eq!(status["realm"], "dive-usa");
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "keycloak"]);
    for s in status["services"].as_array().unwrap() {
        assert!(s["state"].is_string() && s["health"].is_string(), "{s}");
    }
    // The hub is not a spoke.
    let out = env.dive(&["spoke", "status", "usa"]);
    out.assert_code(2);
    assert!(out.stderr.contains("`dive hub status`"), "{}", out.stderr);

    // A spoke whose deploy fails: the rollback unregisters it.
    let spoke_wf = register_workflow(&env, "spoke.yaml", "spoke", true);
    let out = env.dive(&[
        "run", "workflow", &spoke_wf, "--param", "code=fra", "--json",
    ]);
    out.assert_code(1);
    let run = out.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    assert_eq!(phase(&run, "register")["state"], "compensated");
    assert_eq!(
        env.psql("SELECT count(*) FROM instances WHERE code = 'FRA'"),
        "0"
    );
    let status = env
        .dive(&["spoke", "status", "FRA", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(status["state"], "not deployed");

    // Down with nothing running is fine and says stopped.
    let status = env.dive(&["hub", "down", "--json"]).assert_code(0).json();
    assert_eq!(status["state"], "stopped");

    // Reset: registration, port block and secrets go.
    let secrets = env.psql("SELECT count(*) FROM secrets WHERE name LIKE 'usa/%'");
    assert_eq!(secrets, "1");
    let out = env.dive(&["hub", "reset", "--yes", "--json"]);
    out.assert_code(0);
    let reset = out.json();
    assert_eq!(reset["unregistered"], true);
    assert_eq!(
        reset["secrets"],
        serde_json::json!(["usa/keycloak/admin-password"])
    );
    assert_eq!(env.psql("SELECT count(*) FROM instances"), "0");
    assert_eq!(
        env.psql("SELECT count(*) FROM secrets WHERE name LIKE 'usa/%'"),
        "0"
    );
    let status = env.dive(&["hub", "status", "--json"]).assert_code(0).json();
    assert_eq!(status["state"], "not deployed");
}

/// Registers an instance and runs stand-in services (`sleep`) named like the real ones on the
/// local runtime.
fn services_workflow(env: &TestEnv, file: &str, role: &str, services: &[&str]) -> String {
    let mut yaml = format!(
        r#"
name: services-{role}
lock: "instance:${{params.code}}"
params:
  code: {{ type: country-code }}
phases:
  - id: register
    type: instance.register
    code: ${{params.code}}
    role: {role}
"#
    );
    for name in services {
        yaml += &format!(
            r#"
  - id: {name}
    type: service
    after: [register]
    instance: ${{phases.register.output.code_lower}}
    name: {name}
    command: ["sleep", "120"]
    data: [{{ volume: data, target: /data }}]
"#
        );
    }
    env.workflow(file, &yaml)
}

#[test]
fn status_follows_the_services_through_down_up_and_reset() {
    let env = TestEnv::new();
    let state = |args: &[&str]| {
        let mut args = args.to_vec();
        args.push("--json");
        env.dive(&args).assert_code(0).json()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let hub = services_workflow(&env, "hub.yaml", "hub", &["postgres", "keycloak"]);
    env.dive(&["run", "workflow", &hub, "-p", "code=USA"])
        .assert_code(0);
    assert_eq!(state(&["hub", "status"]), "running");
    let status = env.dive(&["hub", "status", "--json"]).json();
    for s in status["services"].as_array().unwrap() {
        assert_eq!(s["state"], "running", "{s}");
    }

    // Down keeps the data; running the deploy again starts what is stopped.
    assert_eq!(state(&["hub", "down"]), "stopped");
    assert!(env.home.path().join("instances/usa/data").is_dir());
    env.dive(&["run", "workflow", &hub, "-p", "code=usa"])
        .assert_code(0);
    assert_eq!(state(&["hub", "status"]), "running");

    // One service of two: partial.
    let spoke = services_workflow(&env, "spoke.yaml", "spoke", &["postgres"]);
    env.dive(&["run", "workflow", &spoke, "-p", "code=fra"])
        .assert_code(0);
    assert_eq!(state(&["spoke", "status", "fra"]), "partial");
    let hub_ports = env.dive(&["hub", "status", "--json"]).json()["ports"].clone();
    let spoke_ports = env.dive(&["spoke", "status", "FRA", "--json"]).json()["ports"].clone();
    assert_ne!(hub_ports, spoke_ports);

    // Reset removes services, data and registration; the hub keeps running.
    let out = env.dive(&["spoke", "reset", "FRA", "--yes", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["unregistered"], true);
    assert!(!env.home.path().join("instances/fra").exists());
    assert_eq!(state(&["spoke", "status", "fra"]), "not deployed");
    assert_eq!(state(&["hub", "status"]), "running");
    let out = env.dive(&["hub", "reset", "--yes"]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("registration and port block released"),
        "{}",
        out.stderr
    );
    assert!(!env.home.path().join("instances/usa").exists());
    assert_eq!(state(&["hub", "status"]), "not deployed");
}

#[test]
fn federation_refuses_instances_on_two_runtimes() {
    let env = TestEnv::new();
    let hub_wf = register_workflow(&env, "hub.yaml", "hub", false);
    env.dive(&["run", "workflow", &hub_wf, "--param", "code=usa"])
        .assert_code(0);
    let spoke_wf = register_workflow(&env, "spoke.yaml", "spoke", false);
    env.dive(&[
        "run",
        "workflow",
        &spoke_wf,
        "--param",
        "code=ita",
        "--runtime",
        "docker",
    ])
    .assert_code(0);
    let runs = env.runs_count();
    let out = env.dive(&["federation", "link", "ITA"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("on the local runtime")
            && out.stderr.contains("on the docker runtime")
            && out.stderr.contains("one runtime"),
        "{}",
        out.stderr
    );
    assert_eq!(env.runs_count(), runs, "refused before a run was written");
}

/// A deploy stand-in that registers `code` as the hub, keeps a secret for it and then holds the
/// instance's lock (`instance:<CODE>`, like `hub-deploy`) while it sleeps.
fn holding_workflow(env: &TestEnv) -> String {
    env.workflow(
        "holder.yaml",
        r#"
name: deploy-holder
lock: "instance:${params.code}"
params:
  code: { type: country-code }
phases:
  - id: register
    type: instance.register
    code: ${params.code}
    role: hub
  - id: password
    type: secret.ensure
    after: [register]
    name: ${phases.register.output.code_lower}/keycloak/admin-password
  - id: hold
    type: sleep
    after: [password]
    duration: 60s
"#,
    )
}

#[test]
fn reset_and_down_are_runs_that_never_overlap_a_deploy() {
    let env = TestEnv::new();
    let holder = holding_workflow(&env);
    // Without rollback, so cancelling it below leaves the registration in place.
    let deploy = env.spawn(&[
        "run",
        "workflow",
        &holder,
        "-p",
        "code=USA",
        "--no-rollback",
    ]);
    let deploy_id = env.wait_for_run("deploy-holder");
    env.wait_for_phase(&deploy_id, "hold", "running");
    let runs = env.runs_count();

    // The deploy holds instance:USA: reset and down refuse with exit 3, naming key and holder.
    for args in [&["hub", "reset", "--yes"][..], &["hub", "down"]] {
        let out = env.dive(args);
        out.assert_code(3);
        assert!(
            out.stderr.contains("instance:USA") && out.stderr.contains(&deploy_id),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(env.runs_count(), runs, "a refused run writes nothing");
    assert_eq!(env.psql("SELECT count(*) FROM instances"), "1");

    // Once the deploy is gone, down and reset run as workflows, recorded like every run.
    deploy.signal(libc::SIGTERM);
    let out = deploy.wait(common::COMMAND_TIMEOUT);
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    env.dive(&["hub", "down"]).assert_code(0);
    let out = env.dive(&["hub", "reset", "--yes", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["unregistered"], true);
    let listed = env.list();
    let reset = listed
        .iter()
        .find(|r| r["workflow"] == "instance-reset")
        .unwrap_or_else(|| panic!("no instance-reset run in {listed:#?}"));
    assert_eq!(reset["state"], "succeeded", "{reset:#}");
    assert_eq!(reset["lock_keys"], serde_json::json!(["instance:USA"]));
    let down = listed
        .iter()
        .find(|r| r["workflow"] == "instance-down")
        .unwrap_or_else(|| panic!("no instance-down run in {listed:#?}"));
    assert_eq!(down["state"], "succeeded", "{down:#}");
    let shown = env.show(reset["id"].as_str().unwrap());
    assert_eq!(
        phase(&shown, "secrets")["output"]["deleted"],
        serde_json::json!(["usa/keycloak/admin-password"])
    );
    assert_eq!(phase(&shown, "unregister")["output"]["unregistered"], true);
}

#[test]
fn a_reset_that_fails_part_way_is_finished_by_resume() {
    let env = TestEnv::new();
    let hub = services_workflow(&env, "hub.yaml", "hub", &["postgres", "keycloak"]);
    env.dive(&["run", "workflow", &hub, "-p", "code=USA"])
        .assert_code(0);
    let register = register_workflow(&env, "secret.yaml", "hub", false);
    env.dive(&["run", "workflow", &register, "-p", "code=USA"])
        .assert_code(0);
    // A secret store that refuses deletes: the reset fails after the services are removed.
    env.psql(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'secrets are read-only in this test'; END $$; \
         CREATE TRIGGER refuse_delete BEFORE DELETE ON secrets \
         FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete()",
    );
    let out = env.dive(&["hub", "reset", "--yes", "--json"]);
    out.assert_code(1);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let run_id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("resume it with: dive resume "))
        .unwrap_or_else(|| panic!("no resume hint in {}", out.stderr))
        .trim()
        .to_string();
    let run = env.show(&run_id);
    assert_eq!(run["workflow"], "instance-reset");
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(common::state_of(&run, "remove"), "succeeded");
    assert_eq!(common::state_of(&run, "secrets"), "failed");
    // Services and data are gone; the registration went last, so the instance is still visible.
    assert!(!env.home.path().join("instances/usa").exists());
    let status = env.dive(&["hub", "status", "--json"]).assert_code(0).json();
    assert_eq!(status["state"], "stopped", "{status:#}");

    env.psql("DROP TRIGGER refuse_delete ON secrets");
    let out = env.dive(&["resume", &run_id, "--json"]);
    out.assert_code(0);
    let run = out.json();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(
        common::history(phase(&run, "remove")).len(),
        1,
        "the removal is not run again"
    );
    assert_eq!(phase(&run, "unregister")["output"]["unregistered"], true);
    assert_eq!(env.psql("SELECT count(*) FROM instances"), "0");
    assert_eq!(
        env.psql("SELECT count(*) FROM secrets WHERE name LIKE 'usa/%'"),
        "0"
    );
    let status = env.dive(&["hub", "status", "--json"]).assert_code(0).json();
    assert_eq!(status["state"], "not deployed");
}
