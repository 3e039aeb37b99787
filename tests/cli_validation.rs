//! End-to-end: malformed workflows and parameters are rejected before anything runs — exit code
//! 2, a message naming the file, the phase and the problem — and nothing is written.

mod common;

use common::{Output, TestEnv};

/// A test database with the schema in place, so "nothing written" means zero rows.
fn env() -> TestEnv {
    let env = TestEnv::new();
    env.dive(&["db", "migrate"]).assert_code(0);
    assert_eq!(env.runs_count(), Some(0));
    env
}

/// Exit code 2, and stderr contains every one of `needles`; the database has no run.
#[track_caller]
fn assert_rejected(env: &TestEnv, out: &Output, needles: &[&str]) {
    out.assert_code(2);
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "`{}`: stderr lacks `{needle}`:\n{}",
            out.what,
            out.stderr
        );
    }
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
    assert_eq!(env.runs_count(), Some(0), "a run was written");
    assert_eq!(
        env.psql("SELECT count(*) FROM phases"),
        "0",
        "phases were written"
    );
}

/// Writes `yaml`, then checks that both `dive run workflow` and `dive workflow validate` reject it
/// with `needles` in the message (the file path is always one of them).
#[track_caller]
fn rejected_both_ways(file: &str, yaml: &str, needles: &[&str]) {
    let env = env();
    let path = env.workflow(file, yaml);
    let mut needles = needles.to_vec();
    needles.push(&path);
    let run = env.dive(&["run", "workflow", &path]);
    assert_rejected(&env, &run, &needles);
    let validate = env.dive(&["workflow", "validate", &path]);
    assert_rejected(&env, &validate, &needles);
    assert!(
        !validate.stderr.contains("valid workflow"),
        "{}",
        validate.stderr
    );
}

#[test]
fn dependency_cycle() {
    let env = env();
    let path = env.workflow(
        "cycle.yaml",
        r#"
name: cycle
phases:
  - { id: start, type: noop }
  - { id: a, type: noop, after: [start, c] }
  - { id: b, type: noop, after: [a] }
  - { id: c, type: noop, after: [b] }
"#,
    );
    for args in [
        vec!["run", "workflow", path.as_str()],
        vec!["workflow", "validate", path.as_str()],
    ] {
        let out = env.dive(&args);
        assert_rejected(&env, &out, &[&path, "dependency cycle"]);
        assert!(
            ["a", "b", "c"].iter().any(|id| out
                .stderr
                .contains(&format!("phase `{id}`: dependency cycle"))),
            "the message should name a phase on the cycle: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("phase `start`"), "{}", out.stderr);
    }
}

#[test]
fn unknown_phase_type() {
    rejected_both_ways(
        "unknown-type.yaml",
        r#"
name: unknown-type
phases:
  - { id: first, type: noop }
  - id: deploy
    type: exce
    after: [first]
    command: ["true"]
"#,
        &["phase `deploy`", "unknown phase type `exce`", "`exec`"],
    );
}

#[test]
fn unknown_field_in_a_phase() {
    rejected_both_ways(
        "unknown-field.yaml",
        r#"
name: unknown-field
phases:
  - id: build
    type: exec
    comand: ["true"]
"#,
        &["phase `build`", "unknown field `comand`", "`command`"],
    );
}

#[test]
fn missing_dependency() {
    rejected_both_ways(
        "missing-dep.yaml",
        r#"
name: missing-dep
phases:
  - { id: a, type: noop }
  - { id: b, type: noop, after: [a, ghost] }
"#,
        &["phase `b`", "`ghost`", "not a phase of this workflow"],
    );
}

#[test]
fn bad_timeout_duration() {
    rejected_both_ways(
        "bad-timeout.yaml",
        r#"
name: bad-timeout
phases:
  - { id: a, type: noop }
  - { id: b, type: noop, after: [a], timeout: 5 parsecs }
"#,
        &["phase `b`", "timeout", "`5 parsecs` is not a duration"],
    );
}

#[test]
fn bad_sleep_duration() {
    rejected_both_ways(
        "bad-sleep.yaml",
        r#"
name: bad-sleep
phases:
  - id: nap
    type: sleep
    duration: soon
"#,
        &["phase `nap`", "type `sleep`", "\"soon\"", "duration"],
    );
}

#[test]
fn reference_to_a_non_ancestor_output() {
    rejected_both_ways(
        "non-ancestor.yaml",
        r#"
name: non-ancestor
phases:
  - { id: x, type: exec, command: ["echo", "hi"] }
  - { id: w, type: noop }
  - id: y
    type: exec
    after: [w]
    command: ["echo", "${phases.x.output.stdout}"]
"#,
        &["phase `y`", "refers to `x`", "not an ancestor"],
    );
}

#[test]
fn reference_to_an_undeclared_parameter() {
    rejected_both_ways(
        "undeclared-param.yaml",
        r#"
name: undeclared-param
params:
  code: { default: "FRA" }
phases:
  - { id: greet, type: exec, command: ["echo", "${params.cod}"] }
"#,
        &["phase `greet`", "`${params.cod}`", "undeclared parameter"],
    );
}

#[test]
fn empty_lock_list() {
    rejected_both_ways(
        "empty-lock.yaml",
        r#"
name: empty-lock
lock: []
phases:
  - { id: a, type: sleep, duration: 10ms }
"#,
        &["lock: the list is empty"],
    );
}

#[test]
fn lock_list_with_a_non_string() {
    rejected_both_ways(
        "bad-lock.yaml",
        r#"
name: bad-lock
lock: ["a", [1]]
phases:
  - { id: a, type: sleep, duration: 10ms }
"#,
        &["lock: element 2", "is not a string"],
    );
}

const PARAMS_WORKFLOW: &str = r#"
name: params
params:
  code: { default: "FRA", pattern: "^[A-Z]{3}$" }
  nap: { default: "10ms" }
phases:
  - { id: greet, type: exec, command: ["echo", "${params.code}"] }
  - { id: rest, type: sleep, after: [greet], duration: "${params.nap}" }
"#;

/// `dive run workflow` and `dive workflow show` (validate takes no parameters) with `params`.
#[track_caller]
fn params_rejected(params: &[&str], needles: &[&str]) {
    let env = env();
    let path = env.workflow("params.yaml", PARAMS_WORKFLOW);
    env.dive(&["workflow", "validate", &path]).assert_code(0);
    let mut needles = needles.to_vec();
    needles.push(&path);
    for head in [["run", "workflow"], ["workflow", "show"]] {
        let mut args = head.to_vec();
        args.push(&path);
        args.extend(params.iter().flat_map(|p| ["--param", p]));
        let out = env.dive(&args);
        assert_rejected(&env, &out, &needles);
    }
}

#[test]
fn parameter_not_matching_its_pattern() {
    params_rejected(
        &["code=fr"],
        &[
            "parameter `code`",
            "`fr`",
            "does not match pattern `^[A-Z]{3}$`",
        ],
    );
}

#[test]
fn unknown_parameter() {
    params_rejected(
        &["colour=red"],
        &["unknown parameter `colour`", "takes: code, nap"],
    );
}

#[test]
fn parameter_that_makes_a_phase_invalid() {
    params_rejected(&["nap=soon"], &["phase `rest`", "type `sleep`", "\"soon\""]);
}

#[test]
fn valid_parameters_are_accepted() {
    let env = env();
    let path = env.workflow("params.yaml", PARAMS_WORKFLOW);
    let out = env.dive(&["run", "workflow", &path, "-p", "code=GBR", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["params"]["code"], "GBR");
    assert_eq!(env.runs_count(), Some(1));
}

#[test]
fn rejected_before_the_database_is_touched() {
    // No migration here: a rejected workflow must not even create the schema.
    let env = TestEnv::new();
    let path = env.workflow(
        "cycle.yaml",
        "name: c\nphases:\n  - { id: a, type: noop, after: [a] }\n",
    );
    let out = env.dive(&["run", "workflow", &path]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("phase `a`: dependency cycle"),
        "{}",
        out.stderr
    );
    assert_eq!(env.runs_count(), None, "the runs table was created");
}

#[test]
fn usage_errors_and_unknown_names_exit_2() {
    let env = env();
    let cases: [(&[&str], &str); 5] = [
        (&["run", "workflow"], "Usage"),
        (&["frobnicate"], "unrecognized subcommand"),
        (
            &["run", "workflow", "no-such-workflow"],
            "no built-in workflow `no-such-workflow`",
        ),
        (
            &["run", "workflow", "demo", "--param", "code"],
            "expected KEY=VALUE",
        ),
        (
            &["resume", "01890a5d-ac96-774b-bcce-b302099a8057"],
            "run 01890a5d-ac96-774b-bcce-b302099a8057 not found",
        ),
    ];
    for (args, needle) in cases {
        let out = env.dive(args);
        out.assert_code(2);
        assert!(
            out.stderr.contains(needle),
            "`{}`: stderr lacks `{needle}`: {}",
            out.what,
            out.stderr
        );
    }
    let missing = env.path("missing.yaml").display().to_string();
    let out = env.dive(&["workflow", "validate", &missing]);
    out.assert_code(2);
    assert!(out.stderr.contains(&missing), "{}", out.stderr);
    assert_eq!(env.runs_count(), Some(0));
}

/// `hub-deploy` and `spoke-deploy` are variants of `instance-deploy` (`extends`, role fixed):
/// the plans are the ones the two separate files gave — name, phases, lock, role — and the
/// parameters are checked as before.
#[test]
fn hub_and_spoke_deploy_are_instance_deploy_with_the_role_fixed() {
    let env = env();
    const PHASES: [(&str, &str); 13] = [
        ("instance", "instance.register"),
        ("postgres-password", "secret.ensure"),
        ("keycloak-db-password", "secret.ensure"),
        ("admin-password", "secret.ensure"),
        ("certificate", "tls.certificate"),
        ("postgres", "service"),
        ("keycloak-database", "postgres.database"),
        ("keycloak", "service"),
        ("realm", "keycloak.realm"),
        ("user-profile", "keycloak.user-profile"),
        ("client-scope", "keycloak.client-scope"),
        ("verify-client", "keycloak.client"),
        ("test-users", "keycloak.users"),
    ];
    let show = |args: &[&str]| {
        let mut all = vec!["workflow", "show"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        env.dive(&all).assert_code(0).json()
    };
    for (plan, workflow, role, code) in [
        (show(&["hub-deploy"]), "hub-deploy", "hub", "USA"),
        (
            show(&["spoke-deploy", "-p", "code=fra"]),
            "spoke-deploy",
            "spoke",
            "FRA",
        ),
    ] {
        assert_eq!(plan["workflow"], workflow, "{plan}");
        assert_eq!(
            plan["lock_keys"],
            serde_json::json!([format!("instance:{code}")])
        );
        assert_eq!(
            plan["params"],
            serde_json::json!({ "code": code }),
            "{plan}"
        );
        let phases: Vec<(&str, &str)> = plan["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["type"].as_str().unwrap()))
            .collect();
        assert_eq!(phases, PHASES, "{workflow}");
        let instance = &plan["phases"][0]["spec"];
        assert_eq!(instance["role"], role, "{plan}");
        assert_eq!(instance["code"], code, "{plan}");
        // The role is the variant's, not the caller's.
        let out = env.dive(&[
            "workflow", "show", workflow, "-p", "code=fra", "-p", "role=hub",
        ]);
        out.assert_code(2);
        assert!(
            out.stderr
                .contains("unknown parameter `role` (this workflow takes: code)"),
            "{}",
            out.stderr
        );
    }
    // A spoke has no default code: refused before anything is written, as before.
    for head in [["run", "workflow"], ["workflow", "show"]] {
        let out = env.dive(&[head[0], head[1], "spoke-deploy"]);
        assert_rejected(
            &env,
            &out,
            &[
                "spoke-deploy (built-in)",
                "parameter `code` is required (--param code=VALUE)",
            ],
        );
    }
    let out = env.dive(&["run", "workflow", "hub-deploy", "-p", "code=xyz"]);
    assert_rejected(&env, &out, &["hub-deploy (built-in)", "parameter `code`"]);
    // The base is listed and takes the role as a parameter.
    let list = env
        .dive(&["workflow", "list", "--json"])
        .assert_code(0)
        .json();
    let base = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "instance-deploy")
        .expect("instance-deploy is listed");
    assert_eq!(base["params"], serde_json::json!(["code", "role"]));
    let out = env.dive(&["workflow", "show", "instance-deploy", "-p", "code=fra"]);
    assert_rejected(&env, &out, &["parameter `role` is required"]);
    let out = env.dive(&[
        "workflow",
        "show",
        "instance-deploy",
        "-p",
        "code=fra",
        "-p",
        "role=boss",
    ]);
    assert_rejected(
        &env,
        &out,
        &["parameter `role`: value `boss` does not match"],
    );
}

/// A closed stdout (`dive … | head`) ends a command quietly with 0 — without SIGPIPE's default
/// action, which would also kill a run whenever a peer resets a connection.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let env = env();
    let mut child = env
        .command(&["workflow", "show", "quickstart", "--format", "json"])
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
