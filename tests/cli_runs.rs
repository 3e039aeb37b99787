//! End-to-end: runs that end on their own — retries, timeouts, rollback, `--no-rollback` and
//! resume, circuit breakers — and the CLI's listing and JSON contract.

mod common;

use common::{TestEnv, history, kill_group, live_in_group, phase, read_pgid, state_of, ts};
use serde_json::Value;
use std::time::Duration;

#[test]
fn retry_then_success() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "retry.yaml",
        r#"
name: retry-then-success
phases:
  - id: flaky
    type: exec
    command: ["sh", "-c", "echo x >> @DIR@/flaky.count; n=$(wc -l < @DIR@/flaky.count); echo attempt-$n; [ $n -ge 3 ]"]
    retry: { max_attempts: 3, initial_delay: 50ms }
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(0);
    let run = out.json();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let flaky = phase(&run, "flaky");
    assert_eq!(flaky["state"], "succeeded");
    assert_eq!(flaky["attempts"], 3);
    assert_eq!(flaky["output"]["stdout"], "attempt-3");
    assert_eq!(flaky["output"]["exit_code"], 0);
    assert_eq!(env.count("flaky.count"), 3, "the command ran 3 times");

    let shown = env.show(&out.run_id());
    let flaky = phase(&shown, "flaky");
    assert_eq!(
        history(flaky),
        [
            (1, "failed".to_string()),
            (2, "failed".to_string()),
            (3, "succeeded".to_string())
        ]
    );
    for attempt in &flaky["history"].as_array().unwrap()[..2] {
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(error.contains("exit status: 1"), "attempt error: {error}");
    }
    assert!(flaky["history"][2]["error"].is_null());
    assert!(
        out.stderr.contains("flaky: attempt 1 failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn timeout_stops_a_phase_and_rolls_back() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "timeout.yaml",
        r#"
name: timeout
phases:
  - id: slow
    type: sleep
    duration: 10s
    timeout: 300ms
    retry: { max_attempts: 1 }
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}: the timeout did not stop the phase",
        out.elapsed
    );
    assert!(
        out.stderr.contains("timed out after 300ms"),
        "stderr: {}",
        out.stderr
    );
    let run = out.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    let slow = phase(&run, "slow");
    assert_eq!(slow["state"], "failed");
    assert_eq!(slow["attempts"], 1);
    assert!(
        slow["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 300ms")),
        "{slow:#}"
    );
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("slow") && e.contains("timed out after 300ms")),
        "{run:#}"
    );
}

/// a → b → c → d → e; b and c have compensations that append to `log`; d always fails.
fn rollback_workflow(b_compensation: &str) -> String {
    format!(
        r#"
name: rollback
phases:
  - id: a
    type: exec
    command: ["sh", "-c", "echo a >> @DIR@/a.count"]
  - id: b
    type: exec
    after: [a]
    command: ["sh", "-c", "echo made-b"]
    compensate: ["sh", "-c", "{b_compensation}"]
    retry: {{ max_attempts: 1 }}
  - id: c
    type: exec
    after: [b]
    command: ["sh", "-c", "echo made-c"]
    compensate: ["sh", "-c", "[ \"$DIVE_PHASE_STDOUT\" = made-c ] && echo c >> @DIR@/log"]
  - id: d
    type: exec
    after: [c]
    command: ["sh", "-c", "echo d >> @DIR@/d.count; echo d is broken >&2; exit 1"]
    retry: {{ max_attempts: 1 }}
  - id: e
    type: noop
    after: [d]
"#
    )
}

#[test]
fn failure_compensates_in_reverse_order() {
    let env = TestEnv::new();
    let wf = env.workflow("rollback.yaml", &rollback_workflow("echo b >> @DIR@/log"));
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    assert_eq!(
        env.lines("log"),
        ["c", "b"],
        "compensations in reverse order"
    );
    assert_eq!(env.count("d.count"), 1, "d ran once (max_attempts 1)");

    let run = out.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    assert_eq!(state_of(&run, "a"), "succeeded", "a has no compensation");
    assert_eq!(state_of(&run, "b"), "compensated");
    assert_eq!(state_of(&run, "c"), "compensated");
    assert_eq!(state_of(&run, "d"), "failed");
    assert_eq!(state_of(&run, "e"), "skipped");
    assert!(
        phase(&run, "d")["error"]
            .as_str()
            .is_some_and(|e| e.contains("d is broken")),
        "{run:#}"
    );
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("phase `d` failed")),
        "{run:#}"
    );

    let shown = env.show(&out.run_id());
    assert!(phase(&shown, "a").get("compensation").is_none());
    for id in ["b", "c"] {
        assert_eq!(
            phase(&shown, id)["compensation"]["state"],
            "compensated",
            "{shown:#}"
        );
    }
    // Compensation of c finished before b's started.
    let c_done = ts(&phase(&shown, "c")["compensation"]["finished_at"]);
    let b_start = ts(&phase(&shown, "b")["compensation"]["started_at"]);
    assert!(
        c_done <= b_start,
        "c compensated at {c_done}, b started at {b_start}"
    );
}

#[test]
fn failed_compensation_ends_rollback_failed_naming_the_phase() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "rollback-fails.yaml",
        &rollback_workflow("echo b >> @DIR@/log; echo cannot remove b >&2; exit 7"),
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    assert_eq!(env.lines("log"), ["c", "b"]);
    let run = out.json();
    assert_eq!(run["state"], "rollback_failed", "{run:#}");
    assert_eq!(state_of(&run, "b"), "compensation_failed");
    assert_eq!(state_of(&run, "c"), "compensated");
    assert_eq!(state_of(&run, "a"), "succeeded");
    assert_eq!(state_of(&run, "d"), "failed");
    assert_eq!(state_of(&run, "e"), "skipped");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("rollback left behind: b (") && error.contains("cannot remove b"),
        "run error: {error}"
    );
    assert!(
        out.stderr.contains("rollback left behind: b ("),
        "stderr: {}",
        out.stderr
    );
    let shown = env.show(&out.run_id());
    let comp = &phase(&shown, "b")["compensation"];
    assert_eq!(comp["state"], "compensation_failed", "{shown:#}");
    assert!(
        comp["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot remove b")),
        "{comp:#}"
    );
}

#[test]
fn no_rollback_then_fix_then_resume() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "resume.yaml",
        r#"
name: fix-and-resume
phases:
  - id: a
    type: exec
    command: ["sh", "-c", "echo x >> @DIR@/a.count; echo from-a"]
  - id: b
    type: exec
    after: [a]
    command: ["sh", "-c", "echo x >> @DIR@/b.count; echo b-got-${phases.a.output.stdout}"]
    compensate: ["sh", "-c", "echo b >> @DIR@/log"]
  - id: c
    type: exec
    after: [b]
    command: ["sh", "-c", "echo x >> @DIR@/c.count; [ -e @DIR@/marker ] || { echo no marker >&2; exit 1; }"]
    retry: { max_attempts: 1 }
  - id: d
    type: exec
    after: [c]
    command: ["sh", "-c", "echo x >> @DIR@/d.count; echo d-got-${phases.b.output.stdout}"]
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--no-rollback", "--json"]);
    out.assert_code(1);
    let id = out.run_id();
    let run = out.json();
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(state_of(&run, "a"), "succeeded");
    assert_eq!(state_of(&run, "b"), "succeeded", "no compensation ran");
    assert_eq!(state_of(&run, "c"), "failed");
    assert_eq!(state_of(&run, "d"), "pending");
    assert!(
        out.stderr.contains(&format!("dive resume {id}")),
        "stderr should say how to resume: {}",
        out.stderr
    );
    assert!(env.lines("log").is_empty(), "--no-rollback compensated");

    env.touch("marker");
    let resumed = env.dive(&["resume", &id, "--json"]);
    resumed.assert_code(0);
    let run = resumed.json();
    assert_eq!(run["id"], id.as_str());
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(env.count("a.count"), 1, "a ran once");
    assert_eq!(env.count("b.count"), 1, "b ran once");
    assert_eq!(env.count("c.count"), 2, "c ran twice (failed, then ok)");
    assert_eq!(env.count("d.count"), 1, "d ran once");
    assert_eq!(
        phase(&run, "d")["output"]["stdout"],
        "d-got-b-got-from-a",
        "stored outputs are reused across the resume"
    );
    assert_eq!(
        history(phase(&run, "c")),
        [(1, "failed".to_string()), (2, "succeeded".to_string())]
    );
    assert_eq!(phase(&run, "a")["attempts"], 1);
    assert!(env.lines("log").is_empty());
}

#[test]
fn circuit_breaker_opens_after_three_failures() {
    let env = TestEnv::new();
    // jitter off: six attempts then finish well inside the breaker's 2 s cool-down.
    let wf = env.workflow(
        "breaker.yaml",
        r#"
name: breaker
phases:
  - id: call
    type: exec
    breaker: flaky
    command: ["sh", "-c", "echo x >> @DIR@/calls; echo service down >&2; exit 1"]
    retry: { max_attempts: 6, initial_delay: 100ms, max_delay: 200ms, jitter: false }
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    assert_eq!(
        env.count("calls"),
        3,
        "the command ran only until the breaker opened"
    );
    let id = out.run_id();
    let run = env.show(&id);
    assert_eq!(run["state"], "rolled_back");
    let call = phase(&run, "call");
    assert_eq!(call["state"], "failed");
    assert_eq!(call["attempts"], 6);
    let attempts = call["history"].as_array().expect("history");
    assert_eq!(attempts.len(), 6, "{call:#}");
    for a in attempts {
        let error = a["error"].as_str().unwrap_or_default();
        assert_eq!(a["state"], "failed");
        if a["attempt"].as_u64() <= Some(3) {
            assert!(error.contains("service down"), "attempt {a}");
        } else {
            assert!(error.contains("circuit open for flaky"), "attempt {a}");
        }
    }
    let events = run["breaker_events"].as_array().expect("breaker_events");
    assert!(
        events
            .iter()
            .any(|e| e["breaker"] == "flaky" && e["transition"] == "open"),
        "no `open` transition in {events:#?}"
    );
    let opened = events
        .iter()
        .position(|e| e["transition"] == "open")
        .unwrap();
    assert!(
        events[opened + 1..]
            .iter()
            .any(|e| e["breaker"] == "flaky" && e["transition"] == "rejected"),
        "calls after the opening should be rejected: {events:#?}"
    );

    let text = env.dive(&["runs", "show", &id]);
    text.assert_code(0);
    let section = text
        .stdout
        .split("BREAKER TRANSITIONS")
        .nth(1)
        .unwrap_or_else(|| panic!("no BREAKER TRANSITIONS section:\n{}", text.stdout));
    assert!(
        section
            .lines()
            .any(|l| l.contains("flaky") && l.trim_end().ends_with("open")),
        "{section}"
    );
}

#[test]
fn demo_runs_and_cli_listings() {
    let env = TestEnv::new();
    let list = env.dive(&["workflow", "list"]);
    list.assert_code(0);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some("demo")),
        "{}",
        list.stdout
    );

    // The documented --json shape.
    let first = env.dive(&["run", "workflow", "demo", "--json"]);
    first.assert_code(0);
    let run = first.json();
    for key in [
        "id",
        "workflow",
        "state",
        "params",
        "started_at",
        "finished_at",
        "phases",
    ] {
        assert!(run.get(key).is_some(), "no `{key}` in {run:#}");
    }
    assert_eq!(run["workflow"], "demo");
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["params"], serde_json::json!({"code": "FRA"}));
    assert!(run["finished_at"].is_string());
    let phases = run["phases"].as_array().expect("phases array");
    let ids: Vec<_> = phases.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "prepare",
            "database",
            "identity-provider",
            "configure",
            "verify"
        ]
    );
    let types: Vec<_> = phases.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["exec", "sleep", "sleep", "exec", "noop"]);
    for p in phases {
        for key in [
            "id",
            "type",
            "state",
            "attempts",
            "started_at",
            "finished_at",
            "error",
            "output",
        ] {
            assert!(p.get(key).is_some(), "no `{key}` in {p:#}");
        }
        assert_eq!(p["state"], "succeeded");
        assert_eq!(p["attempts"], 1);
        assert!(p["error"].is_null());
        assert!(p["started_at"].is_string() && p["finished_at"].is_string());
    }
    assert_eq!(phase(&run, "prepare")["output"]["stdout"], "prepared-FRA");
    assert_eq!(
        phase(&run, "configure")["output"]["stdout"],
        "configured prepared-FRA"
    );
    // Independent branches ran at the same time.
    let db = phase(&run, "database");
    let idp = phase(&run, "identity-provider");
    assert!(
        ts(&idp["started_at"]) < ts(&db["finished_at"])
            && ts(&db["started_at"]) < ts(&idp["finished_at"]),
        "database and identity-provider did not overlap: {db:#} {idp:#}"
    );

    let second = env.dive(&["run", "workflow", "demo", "--param", "code=GBR", "--json"]);
    second.assert_code(0);
    assert_eq!(second.json()["params"]["code"], "GBR");

    let runs = env.list();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(runs[0]["id"], second.run_id().as_str(), "newest first");
    assert_eq!(runs[1]["id"], first.run_id().as_str());
    for r in &runs {
        for key in ["id", "workflow", "state", "started_at", "finished_at"] {
            assert!(r.get(key).is_some(), "no `{key}` in {r:#}");
        }
        assert_eq!(r["workflow"], "demo");
        assert_eq!(r["state"], "succeeded");
        assert!(r["finished_at"].is_string());
        assert!(r.get("orphaned").is_none_or(|o| o == false), "{r:#}");
    }
    assert!(ts(&runs[0]["started_at"]) >= ts(&runs[1]["started_at"]));

    // workflow show in every format.
    let show = |format: &str| {
        let out = env.dive(&["workflow", "show", "demo", "--format", format]);
        out.assert_code(0);
        out.stdout
    };
    let json: Value = serde_json::from_str(&show("json")).expect("show --format json parses");
    assert_eq!(json["workflow"], "demo");
    assert_eq!(json["phases"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["lock_keys"], serde_json::json!(["demo:FRA"]));
    let dot = show("dot");
    assert!(dot.trim_start().starts_with("digraph"), "{dot}");
    assert!(dot.trim_end().ends_with('}'), "{dot}");
    assert!(dot.contains("\"prepare\" -> \"database\""), "{dot}");
    let mermaid = show("mermaid");
    assert!(mermaid.starts_with("flowchart"), "{mermaid}");
    assert!(mermaid.contains("configure --> verify"), "{mermaid}");
    let text = show("text");
    for id in [
        "prepare",
        "database",
        "identity-provider",
        "configure",
        "verify",
    ] {
        assert!(text.contains(id), "{text}");
    }
    let pos = |id: &str| text.find(&format!("  {id} ")).expect(id);
    assert!(pos("prepare") < pos("configure") && pos("configure") < pos("verify"));
}

#[test]
fn rollback_failed_is_resumed_until_rolled_back() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "rollback-resume.yaml",
        &rollback_workflow(
            "echo b >> @DIR@/log; [ -e @DIR@/fixed ] || { echo b is stuck >&2; exit 1; }",
        ),
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    let id = out.run_id();
    assert_eq!(out.json()["state"], "rollback_failed");
    assert!(
        out.stderr.contains(&format!("dive resume {id}")),
        "a rollback_failed run is resumable; stderr should say how: {}",
        out.stderr
    );

    env.touch("fixed");
    let resumed = env.dive(&["resume", &id, "--json"]);
    resumed.assert_code(1);
    let run = resumed.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    assert_eq!(state_of(&run, "b"), "compensated");
    assert_eq!(state_of(&run, "c"), "compensated");
    assert_eq!(state_of(&run, "a"), "succeeded");
    assert_eq!(state_of(&run, "d"), "failed");
    assert_eq!(state_of(&run, "e"), "skipped");
    assert_eq!(
        env.lines("log"),
        ["c", "b", "b"],
        "only the compensation that failed runs again"
    );
    assert_eq!(
        env.count("a.count"),
        1,
        "resuming a rollback runs nothing forward"
    );
    assert_eq!(env.count("d.count"), 1);
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        !error.contains("left behind"),
        "the finished rollback still reports leftovers: {error}"
    );
}

#[test]
fn fatal_errors_are_not_retried() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "fatal.yaml",
        r#"
name: fatal
phases:
  - id: missing-program
    type: exec
    command: ["/nonexistent/dive-e2e-program"]
    breaker: tool
    retry: { max_attempts: 5, initial_delay: 10ms }
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    let run = out.json();
    assert_eq!(run["state"], "rolled_back");
    let p = phase(&run, "missing-program");
    assert_eq!(p["state"], "failed");
    assert_eq!(p["attempts"], 1, "a fatal error was retried: {p:#}");
    assert!(
        p["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot start `/nonexistent/dive-e2e-program`")),
        "{p:#}"
    );
    let transitions: Vec<_> = run["breaker_events"]
        .as_array()
        .expect("breaker_events")
        .iter()
        .map(|e| e["transition"].as_str().unwrap_or_default())
        .collect();
    assert!(
        !transitions.iter().any(|t| *t == "open" || *t == "rejected"),
        "a fatal error says nothing about the dependency's health: {transitions:?}"
    );
}

#[test]
fn concurrency_limit_is_respected() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "fan.yaml",
        r#"
name: fan
phases:
  - { id: s1, type: sleep, duration: 400ms }
  - { id: s2, type: sleep, duration: 400ms }
  - { id: s3, type: sleep, duration: 400ms }
"#,
    );
    let spans = |run: &Value| {
        let mut spans: Vec<_> = ["s1", "s2", "s3"]
            .iter()
            .map(|id| {
                let p = phase(run, id);
                (ts(&p["started_at"]), ts(&p["finished_at"]))
            })
            .collect();
        spans.sort();
        spans
    };
    let serial = env.dive(&["run", "workflow", &wf, "--concurrency", "1", "--json"]);
    serial.assert_code(0);
    let s = spans(&serial.json());
    assert!(
        s[0].1 <= s[1].0 && s[1].1 <= s[2].0,
        "with --concurrency 1 phases overlapped: {s:?}"
    );

    let parallel = env.dive(&["run", "workflow", &wf, "--json"]);
    parallel.assert_code(0);
    let p = spans(&parallel.json());
    assert!(
        p[1].0 < p[0].1 && p[2].0 < p[0].1,
        "independent phases did not run in parallel: {p:?}"
    );
    assert!(
        parallel.elapsed < serial.elapsed,
        "parallel {:?} vs serial {:?}",
        parallel.elapsed,
        serial.elapsed
    );
}

/// `dive bench engine` runs its chain and fan against the real state database and prints
/// figures that agree with each other (how fast they are is the benchmark's business, not a
/// test's).
#[test]
fn bench_engine_prints_consistent_figures() {
    let env = TestEnv::new();
    let out = env.dive(&[
        "bench",
        "engine",
        "--chain",
        "20",
        "--parallel",
        "4",
        "--concurrency",
        "2",
    ]);
    out.assert_code(0);
    let doc = out.json();
    let chain = &doc["chain"];
    assert_eq!(chain["phases"], 20, "{doc}");
    let per_phase = chain["per_phase_ms"].as_f64().unwrap();
    assert!(per_phase > 0.0, "{doc}");
    let floor = &doc["floor"];
    assert_eq!(floor["commits"], 20, "{doc}");
    let per_commit = floor["per_commit_ms"].as_f64().unwrap();
    assert!(per_commit > 0.0, "{doc}");
    let ratio = floor["per_phase_to_floor"].as_f64().unwrap();
    assert!(
        (ratio - per_phase / per_commit).abs() <= 0.01 * ratio.max(1.0),
        "ratio {ratio} is not per phase / floor: {doc}"
    );
    assert!(
        floor["after_100ms_idle_ms"].as_f64().unwrap() > 0.0,
        "{doc}"
    );
    let fan = &doc["parallel"];
    // Four 100 ms sleeps two at a time: two waves.
    assert_eq!(fan["ideal_ms"], 200.0, "{doc}");
    assert!(fan["wall_ms"].as_f64().unwrap() >= 200.0, "{doc}");
    assert!(doc["peak_rss_mb"].as_f64().unwrap() > 1.0, "{doc}");
    // Both runs are recorded as succeeded, like any other.
    let runs = env.dive(&["runs", "list", "--json"]).json();
    let benches: Vec<&Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["workflow"]
                .as_str()
                .is_some_and(|w| w.starts_with("bench-"))
        })
        .collect();
    assert_eq!(benches.len(), 2, "{runs}");
    assert!(benches.iter().all(|r| r["state"] == "succeeded"), "{runs}");
}

#[test]
fn a_breaker_that_never_trips_records_no_transition() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "quiet-breaker.yaml",
        r#"
name: quiet-breaker
phases:
  - { id: call, type: exec, breaker: healthy, command: ["echo", "fine"] }
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(0);
    let run = env.show(&out.run_id());
    assert_eq!(
        run["breaker_events"],
        serde_json::json!([]),
        "the breaker never changed state, yet transitions were recorded"
    );
    let text = env.dive(&["runs", "show", &out.run_id()]);
    text.assert_code(0);
    assert!(
        !text.stdout.contains("BREAKER TRANSITIONS"),
        "{}",
        text.stdout
    );
}

#[test]
fn exec_timeout_kills_the_command() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "exec-timeout.yaml",
        r#"
name: exec-timeout
phases:
  - id: hang
    type: exec
    command: ["sh", "-c", "echo $$ > @DIR@/hang.pid; sleep 20; echo late >> @DIR@/late"]
    timeout: 300ms
"#,
    );
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(1);
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    let run = out.json();
    assert_eq!(run["state"], "rolled_back");
    assert!(
        phase(&run, "hang")["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 300ms")),
        "{run:#}"
    );
    // Killed, not merely abandoned: nothing of the command runs once dive has exited.
    let pgid = read_pgid(&env.path("hang.pid"));
    let alive = live_in_group(pgid);
    kill_group(pgid);
    assert!(
        alive.is_empty(),
        "the timed-out command's processes {alive:?} are still running"
    );
}

/// Each exec phase checks, from inside its command, that its own `running` checkpoint for this
/// very attempt is already committed.
#[test]
fn running_checkpoint_is_committed_before_the_phase_runs() {
    let env = TestEnv::new();
    let psql = ["/usr/bin/psql", "/usr/lib/postgresql/15/bin/psql"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("psql");
    let check = "s=$(\\\"$PSQL\\\" -XAtq -d \\\"$URL\\\" -c \\\"SELECT state || '/' || attempt FROM phases WHERE run_id = '$DIVE_RUN_ID' AND phase_id = '$DIVE_PHASE_ID'\\\"); echo $DIVE_PHASE_ID:$s >> @DIR@/seen; [ \\\"$s\\\" = running/$DIVE_ATTEMPT ]";
    let yaml = format!(
        r#"
name: checkpoint-first
phases:
  - id: one
    type: exec
    env: {{ PSQL: "{psql}", URL: "{url}" }}
    command: ["sh", "-c", "{check}"]
  - id: two
    type: exec
    after: [one]
    env: {{ PSQL: "{psql}", URL: "{url}" }}
    command: ["sh", "-c", "{check} && [ $DIVE_ATTEMPT -ge 2 ]"]
    retry: {{ max_attempts: 2, initial_delay: 10ms }}
"#,
        url = env.url
    );
    let wf = env.workflow("checkpoint.yaml", &yaml);
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(0);
    assert_eq!(
        env.lines("seen"),
        ["one:running/1", "two:running/1", "two:running/2"]
    );
}

#[test]
fn a_run_with_several_lock_keys_blocks_each_of_them() {
    let env = TestEnv::new();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let parent = env.workflow(
        "multi-lock.yaml",
        &format!(
            r#"
name: multi-lock
lock: ["e2e-{tag}:${{params.spoke}}", "e2e-{tag}:${{params.hub}}", "e2e-{tag}:USA"]
params:
  hub: {{ default: "USA" }}
  spoke: {{ default: "FRA" }}
phases:
  - {{ id: hold, type: sleep, duration: 3s }}
"#
        ),
    );
    let single = |name: &str, key: &str| {
        env.workflow(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\nlock: \"e2e-{tag}:{key}\"\nphases:\n  - {{ id: quick, type: sleep, duration: 10ms }}\n"
            ),
        )
    };

    // `workflow show` prints the bound keys, sorted and deduplicated.
    let show = env.dive(&["workflow", "show", &parent]);
    show.assert_code(0);
    assert!(
        show.stdout
            .contains(&format!("lock      e2e-{tag}:FRA, e2e-{tag}:USA\n")),
        "{}",
        show.stdout
    );
    let json: Value = serde_json::from_str(
        &env.dive(&["workflow", "show", &parent, "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        json["lock_keys"],
        serde_json::json!([format!("e2e-{tag}:FRA"), format!("e2e-{tag}:USA")])
    );

    let mut first = env.spawn(&["run", "workflow", &parent, "--json"]);
    let first_id = env.wait_for_run("multi-lock");
    for key in ["USA", "FRA"] {
        let other = single(&format!("only-{}", key.to_lowercase()), key);
        let out = env.dive(&["run", "workflow", &other, "--json"]);
        out.assert_code(3);
        assert!(out.stderr.contains(&first_id), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("e2e-{tag}:{key}")),
            "{}",
            out.stderr
        );
    }
    // Another key runs meanwhile.
    let gbr = single("only-gbr", "GBR");
    env.dive(&["run", "workflow", &gbr, "--json"])
        .assert_code(0);
    assert!(first.is_running());
    let shown = env.show(&first_id);
    assert_eq!(
        shown["lock_keys"],
        serde_json::json!([format!("e2e-{tag}:FRA"), format!("e2e-{tag}:USA")])
    );
    assert!(
        shown.get("orphaned").is_none_or(|o| o == false),
        "{shown:#}"
    );
    let listed = env.list();
    let listed_first = listed
        .iter()
        .find(|r| r["id"] == first_id.as_str())
        .expect("listed");
    assert_eq!(listed_first["lock_keys"], shown["lock_keys"]);

    let out = first.wait(Duration::from_secs(20));
    out.assert_code(0);
    // Both keys are free again.
    let fra = single("only-fra-after", "FRA");
    env.dive(&["run", "workflow", &fra, "--json"])
        .assert_code(0);
    let usa = single("only-usa-after", "USA");
    env.dive(&["run", "workflow", &usa, "--json"])
        .assert_code(0);
}
