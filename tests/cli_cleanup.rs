//! `dive cleanup --all` removes everything dive created on both runtimes and nothing else.
//! One test in its own binary: it removes every `dive.managed` resource on the machine, so it
//! must not run beside other tests (cargo runs test binaries one after another).

mod common;

use common::{TestEnv, free_port};
use std::process::Command;

fn docker(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
        .status
        .success()
}

#[test]
fn cleanup_all_removes_what_dive_made_and_nothing_else() {
    let env = TestEnv::new();
    let code = "cln";
    let stack = |runtime: &str, port: u16| {
        format!(
            r#"name: c-{runtime}
phases:
  - {{ id: pw, type: secret.ensure, name: {code}/pg }}
  - id: pg
    type: service
    after: [pw]
    instance: {code}
    name: pg-{runtime}
    template: postgres
    port: {port}
    password_secret: {code}/pg
"#
        )
    };
    for runtime in ["local", "docker"] {
        let wf = env.workflow(&format!("{runtime}.yaml"), &stack(runtime, free_port()));
        env.dive(&["run", "workflow", &wf, "--runtime", runtime])
            .assert_code(0);
    }
    // Not ours, even with a dive-like name: no `dive.managed` label.
    let stranger = "dive-cln-stranger";
    let _ = docker(&["rm", "-f", stranger]);
    assert!(docker(&[
        "create",
        "--name",
        stranger,
        "dive-offline/base:bookworm",
        "true"
    ]));

    // --dry-run: the plan of the `cleanup` workflow lists what would go, and nothing goes.
    let runs = env.runs_count();
    let out = env.dive(&["cleanup", "--all", "--dry-run", "--json"]);
    out.assert_code(4);
    let plan = out.json();
    let changes: Vec<&serde_json::Value> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["changes"].as_array().unwrap().iter())
        .collect();
    let objects: Vec<&str> = changes
        .iter()
        .map(|c| c["object"].as_str().unwrap())
        .collect();
    assert!(
        objects.contains(&format!("container dive-{code}-pg-docker (docker)").as_str()),
        "{objects:#?}"
    );
    assert!(
        objects
            .iter()
            .any(|o| o.contains("pg-local") && o.ends_with("(local)")),
        "{objects:#?}"
    );
    assert!(
        !objects.iter().any(|o| o.contains("stranger")),
        "{objects:#?}"
    );
    assert!(changes.iter().all(|c| c["action"] == "delete"));
    assert!(docker(&["inspect", &format!("dive-{code}-pg-docker")]));
    assert_eq!(env.runs_count(), runs, "a dry run records no run");
    let text = env.dive(&["cleanup", "--all", "--dry-run"]);
    text.assert_code(4);
    assert!(
        text.stdout
            .contains(&format!("  - container dive-{code}-pg-docker (docker)")),
        "{}",
        text.stdout
    );

    // Without --force and without a terminal: lists, refuses, removes nothing.
    let refused = env.dive(&["cleanup", "--all"]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains(&format!("dive-{code}-pg-docker")),
        "{}",
        refused.stderr
    );
    assert!(docker(&["inspect", &format!("dive-{code}-pg-docker")]));

    env.dive(&["cleanup", "--all", "--force"]).assert_code(0);
    // The removal is a run of the built-in `cleanup` workflow, recorded like every run.
    let cleanup = env
        .list()
        .into_iter()
        .find(|r| r["workflow"] == "cleanup")
        .expect("a cleanup run");
    assert_eq!(cleanup["state"], "succeeded", "{cleanup:#}");
    let run = env.show(cleanup["id"].as_str().unwrap());
    let removed = common::phase(&run, "remove")["output"]["removed"].clone();
    assert!(
        removed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str() == Some(&format!("docker container dive-{code}-pg-docker"))),
        "{removed:#}"
    );
    assert!(
        !docker(&["inspect", &format!("dive-{code}-pg-docker")]),
        "container removed"
    );
    assert!(
        !docker(&["volume", "inspect", &format!("dive-{code}-pgdata")]),
        "volume removed"
    );
    assert!(
        !docker(&["network", "inspect", &format!("dive-{code}")]),
        "network removed"
    );
    assert!(
        !env.home.path().join("instances").join(code).exists(),
        "local instance removed"
    );
    assert!(
        docker(&["inspect", stranger]),
        "an unlabelled container survives"
    );
    assert!(docker(&["rm", "-f", stranger]));

    let again = env.dive(&["cleanup", "--all", "--force"]);
    again.assert_code(0);
    assert!(
        again.stderr.contains("nothing to remove"),
        "{}",
        again.stderr
    );
}
