//! End-to-end: runs that are interrupted — kill -9 and resume, `dive runs cancel`, Ctrl-C, lock
//! contention, and a PostgreSQL outage in the middle of a run.

mod common;

use common::{
    PrivateCluster, TestEnv, history, kill_group, live_in_group, phase, read_pgid, state_of,
    wait_until,
};
use dive_pgcluster::StopMode;
use std::time::{Duration, Instant};

#[test]
fn kill_9_mid_phase_then_resume() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "kill.yaml",
        r#"
name: kill-resume
phases:
  - id: a
    type: exec
    command: ["sh", "-c", "echo x >> @DIR@/a.count; echo from-a"]
  - id: b
    type: exec
    after: [a]
    command: ["sh", "-c", "echo x >> @DIR@/b.count; echo $$ > @DIR@/b.pid; touch @DIR@/started; [ -e @DIR@/fast ] || sleep 30; echo b-${phases.a.output.stdout}"]
  - id: c
    type: exec
    after: [b]
    command: ["sh", "-c", "echo x >> @DIR@/c.count; echo c-${phases.b.output.stdout}"]
"#,
    );
    let dive = env.spawn(&["run", "workflow", &wf]);
    wait_until("phase b started", Duration::from_secs(20), || {
        env.path("started").exists()
    });
    let run_id = env.wait_for_run("kill-resume");
    dive.signal(libc::SIGKILL);
    let killed = dive.wait(Duration::from_secs(10));
    assert_eq!(killed.code, None, "dive should have died of SIGKILL");
    // The exec phase runs its command in its own process group, which outlives dive: end it.
    let pgid = read_pgid(&env.path("b.pid"));
    kill_group(pgid);

    // The database notices the dead session and frees the lock: the run is orphaned.
    let mut listed = serde_json::Value::Null;
    wait_until(
        "`runs list` shows the run orphaned",
        Duration::from_secs(10),
        || {
            listed = env
                .list()
                .into_iter()
                .find(|r| r["id"] == run_id.as_str())
                .expect("the killed run is listed");
            listed["orphaned"] == true
        },
    );
    assert_eq!(listed["state"], "running", "{listed:#}");
    let table = env.dive(&["runs", "list"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&run_id) && l.contains("running (orphaned)")),
        "{}",
        table.stdout
    );

    env.touch("fast");
    let resumed = env.dive(&["resume", &run_id, "--json"]);
    resumed.assert_code(0);
    let run = resumed.json();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(env.count("a.count"), 1, "a ran once");
    assert_eq!(env.count("b.count"), 2, "b ran twice");
    assert_eq!(env.count("c.count"), 1, "c ran once");
    assert_eq!(phase(&run, "c")["output"]["stdout"], "c-b-from-a");

    let shown = env.show(&run_id);
    assert_eq!(shown["state"], "succeeded");
    assert!(shown.get("orphaned").is_none_or(|o| o == false));
    let b = phase(&shown, "b");
    assert_eq!(b["state"], "succeeded");
    assert_eq!(b["attempts"], 2);
    assert_eq!(
        history(b),
        [(1, "failed".to_string()), (2, "succeeded".to_string())]
    );
    let first = b["history"][0]["error"].as_str().unwrap_or_default();
    assert!(first.contains("interrupted"), "attempt 1 error: {first}");
    assert_eq!(phase(&shown, "a")["attempts"], 1);
    assert_eq!(phase(&shown, "c")["attempts"], 1);
}

#[test]
fn same_lock_key_refuses_a_second_run() {
    let env = TestEnv::new();
    let holder = env.workflow(
        "holder.yaml",
        r#"
name: lock-holder
lock: "e2e:shared"
phases:
  - { id: hold, type: sleep, duration: 3s }
"#,
    );
    let other = env.workflow(
        "other.yaml",
        r#"
name: other-lock
lock: "e2e:other"
phases:
  - { id: quick, type: sleep, duration: 200ms }
"#,
    );
    let mut first = env.spawn(&["run", "workflow", &holder, "--json"]);
    let first_id = env.wait_for_run("lock-holder");

    let second = env.dive(&["run", "workflow", &holder, "--json"]);
    second.assert_code(3);
    assert!(
        second.elapsed < Duration::from_secs(2),
        "the second run waited {:?} instead of failing at once",
        second.elapsed
    );
    assert!(
        second.stderr.contains(&first_id),
        "stderr should name the holder {first_id}: {}",
        second.stderr
    );
    assert!(second.stderr.contains("e2e:shared"), "{}", second.stderr);
    assert!(second.stdout.is_empty(), "{}", second.stdout);

    // A different lock key runs meanwhile.
    let concurrent = env.dive(&["run", "workflow", &other, "--json"]);
    concurrent.assert_code(0);
    assert_eq!(concurrent.json()["state"], "succeeded");
    assert!(
        first.is_running(),
        "the other lock key should have run while the first run held its lock"
    );

    let listed = env.list();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let listed_first = listed
        .iter()
        .find(|r| r["id"] == first_id.as_str())
        .expect("the first run is listed");
    assert_eq!(listed_first["state"], "running");
    assert!(
        listed_first.get("orphaned").is_none_or(|o| o == false),
        "a run whose process holds the lock is not orphaned: {listed:#?}"
    );

    // Resuming the live run is refused the same way.
    let resume = env.dive(&["resume", &first_id]);
    resume.assert_code(3);
    assert!(resume.stderr.contains(&first_id), "{}", resume.stderr);

    let first = first.wait(Duration::from_secs(30));
    first.assert_code(0);
    assert_eq!(first.json()["state"], "succeeded");
    assert_eq!(first.run_id(), first_id);
    assert_eq!(
        env.psql("SELECT count(*) FROM runs WHERE workflow = 'lock-holder'"),
        "1",
        "the refused run wrote nothing"
    );
}

#[test]
fn database_outage_mid_run_pauses_and_continues() {
    let pg = PrivateCluster::new("outage");
    let env = TestEnv::on(&pg.cluster);
    let mut yaml = String::from("name: outage\nphases:\n");
    for i in 0..12 {
        let after = if i == 0 {
            String::new()
        } else {
            format!(", after: [p{}]", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ id: p{i}, type: sleep, duration: 250ms{after} }}\n"
        ));
    }
    let wf = env.workflow("outage.yaml", &yaml);
    let mut dive = env.spawn(&["run", "workflow", &wf]);
    let run_id = env.wait_for_run("outage");
    wait_until("two phases succeeded", Duration::from_secs(20), || {
        env.try_psql(&format!(
            "SELECT count(*) FROM phases WHERE run_id = '{run_id}' AND state = 'succeeded'"
        ))
        .is_ok_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2))
    });
    assert!(dive.is_running());
    pg.cluster
        .stop(StopMode::Immediate)
        .expect("stopping PostgreSQL");
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        dive.is_running(),
        "dive gave up while the database was down"
    );
    pg.cluster.start().expect("starting PostgreSQL again");
    eprintln!("database was down for {:?}", down.elapsed());

    let out = dive.wait(Duration::from_secs(60));
    out.assert_code(0);
    assert!(
        out.stderr.contains("state database unavailable"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("state database reachable again"),
        "stderr: {}",
        out.stderr
    );

    let run = env.show(&run_id);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    for i in 0..12 {
        let p = phase(&run, &format!("p{i}"));
        assert_eq!(p["state"], "succeeded", "{p:#}");
        // One process ran the whole run: a result is never lost, so nothing is run twice.
        assert_eq!(p["attempts"], 1, "{p:#}");
        assert_eq!(history(p), [(1, "succeeded".to_string())], "{p:#}");
    }
    assert_eq!(
        env.psql(&format!(
            "SELECT count(*) FROM phases WHERE run_id = '{run_id}'"
        )),
        "12"
    );
    assert_eq!(
        env.psql("SELECT count(*) FROM phase_attempts WHERE state = 'running'"),
        "0"
    );
    assert_eq!(
        env.psql("SELECT count(*) FROM locks"),
        "0",
        "the lock holder row was left"
    );
}

const CANCELLABLE: &str = r#"
name: cancellable
phases:
  - id: setup
    type: exec
    command: ["sh", "-c", "echo made"]
    compensate: ["sh", "-c", "echo undo-$DIVE_PHASE_STDOUT >> @DIR@/log"]
  - id: wait
    type: sleep
    after: [setup]
    duration: 30s
  - id: after-wait
    type: noop
    after: [wait]
"#;

/// Starts the cancellable workflow and returns once its long phase runs.
fn start_cancellable(env: &TestEnv) -> (common::Running, String) {
    let wf = env.workflow("cancel.yaml", CANCELLABLE);
    let dive = env.spawn(&["run", "workflow", &wf, "--json"]);
    let run_id = env.wait_for_run("cancellable");
    env.wait_for_phase(&run_id, "wait", "running");
    (dive, run_id)
}

/// The run was stopped and rolled back: the exec phase compensated, the sleep failed, the rest
/// skipped.
#[track_caller]
fn assert_rolled_back(env: &TestEnv, out: &common::Output, reason: &str) {
    out.assert_code(1);
    let run = out.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    assert_eq!(state_of(&run, "setup"), "compensated");
    assert_eq!(state_of(&run, "wait"), "failed");
    assert_eq!(state_of(&run, "after-wait"), "skipped");
    assert_eq!(env.lines("log"), ["undo-made"]);
    assert!(
        run["error"].as_str().is_some_and(|e| e.contains(reason)),
        "run error should say `{reason}`: {run:#}"
    );
    assert_eq!(phase(&run, "wait")["attempts"], 1, "no retry after cancel");
}

#[test]
fn runs_cancel_stops_and_rolls_back() {
    let env = TestEnv::new();
    let (dive, run_id) = start_cancellable(&env);
    let cancel = env.dive(&["runs", "cancel", &run_id]);
    cancel.assert_code(0);
    assert!(
        cancel.stderr.contains("cancellation requested"),
        "{}",
        cancel.stderr
    );
    let asked = Instant::now();
    let out = dive.wait(Duration::from_secs(20));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the run took {:?} to stop after `runs cancel`",
        asked.elapsed()
    );
    assert_rolled_back(&env, &out, "cancelled by operator");
    assert_eq!(env.show(&run_id)["state"], "rolled_back");
}

#[test]
fn ctrl_c_stops_and_rolls_back() {
    let env = TestEnv::new();
    let (dive, run_id) = start_cancellable(&env);
    dive.signal(libc::SIGINT);
    let asked = Instant::now();
    let out = dive.wait(Duration::from_secs(20));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the run took {:?} to stop after SIGINT",
        asked.elapsed()
    );
    assert_rolled_back(&env, &out, "interrupted by the operator");
    assert!(out.stderr.contains("interrupt"), "{}", out.stderr);
    assert_eq!(env.show(&run_id)["state"], "rolled_back");
}

#[test]
fn cancel_with_no_rollback_leaves_the_run_resumable() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "cancel-resume.yaml",
        r#"
name: cancel-resume
phases:
  - id: setup
    type: exec
    command: ["sh", "-c", "echo x >> @DIR@/setup.count; echo made"]
    compensate: ["sh", "-c", "echo undo >> @DIR@/log"]
  - id: long
    type: exec
    after: [setup]
    command: ["sh", "-c", "echo x >> @DIR@/long.count; echo $$ > @DIR@/long.pid; [ -e @DIR@/fast ] || sleep 30"]
  - id: last
    type: noop
    after: [long]
"#,
    );
    let dive = env.spawn(&["run", "workflow", &wf, "--no-rollback", "--json"]);
    let run_id = env.wait_for_run("cancel-resume");
    env.wait_for_phase(&run_id, "long", "running");
    wait_until("the long command started", Duration::from_secs(10), || {
        env.path("long.pid").exists()
    });
    env.dive(&["runs", "cancel", &run_id]).assert_code(0);
    let out = dive.wait(Duration::from_secs(20));
    out.assert_code(1);
    let run = out.json();
    assert_eq!(run["state"], "cancelled", "{run:#}");
    assert_eq!(
        state_of(&run, "setup"),
        "succeeded",
        "--no-rollback: no compensation"
    );
    assert_eq!(state_of(&run, "long"), "failed");
    assert_eq!(state_of(&run, "last"), "pending");
    assert!(env.lines("log").is_empty());
    assert!(
        out.stderr.contains(&format!("dive resume {run_id}")),
        "{}",
        out.stderr
    );
    // The cancelled command's process group was killed with it.
    let pgid = read_pgid(&env.path("long.pid"));
    let alive = live_in_group(pgid);
    kill_group(pgid);
    assert!(
        alive.is_empty(),
        "the cancelled command's processes {alive:?} are still running"
    );

    env.touch("fast");
    let resumed = env.dive(&["resume", &run_id, "--json"]);
    resumed.assert_code(0);
    let run = resumed.json();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(env.count("setup.count"), 1);
    assert_eq!(env.count("long.count"), 2);
    assert_eq!(
        history(phase(&run, "long")),
        [(1, "failed".to_string()), (2, "succeeded".to_string())]
    );
    assert!(env.lines("log").is_empty());
}

#[test]
fn kill_9_during_rollback_then_resume_finishes_it() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "kill-rollback.yaml",
        r#"
name: kill-rollback
phases:
  - id: a
    type: exec
    command: ["sh", "-c", "echo made-a"]
    compensate: ["sh", "-c", "echo a >> @DIR@/log"]
  - id: b
    type: exec
    after: [a]
    command: ["sh", "-c", "echo made-b"]
    compensate: ["sh", "-c", "echo b >> @DIR@/log; echo $$ > @DIR@/comp.pid; [ -e @DIR@/fast ] || sleep 30"]
  - id: c
    type: exec
    after: [b]
    command: ["sh", "-c", "exit 1"]
    retry: { max_attempts: 1 }
"#,
    );
    let dive = env.spawn(&["run", "workflow", &wf]);
    wait_until("b's compensation started", Duration::from_secs(20), || {
        env.path("comp.pid").exists()
    });
    let run_id = env.wait_for_run_in("kill-rollback", "rolling_back");
    dive.signal(libc::SIGKILL);
    assert_eq!(dive.wait(Duration::from_secs(10)).code, None);
    let pgid = read_pgid(&env.path("comp.pid"));
    kill_group(pgid);
    wait_until("the run is orphaned", Duration::from_secs(10), || {
        env.show(&run_id)["orphaned"] == true
    });
    let shown = env.show(&run_id);
    assert_eq!(shown["state"], "rolling_back");
    assert_eq!(state_of(&shown, "b"), "compensating");
    assert_eq!(state_of(&shown, "a"), "succeeded");

    env.touch("fast");
    let resumed = env.dive(&["resume", &run_id, "--json"]);
    resumed.assert_code(1);
    let run = resumed.json();
    assert_eq!(run["state"], "rolled_back", "{run:#}");
    assert_eq!(state_of(&run, "a"), "compensated");
    assert_eq!(state_of(&run, "b"), "compensated");
    assert_eq!(state_of(&run, "c"), "failed");
    assert_eq!(env.lines("log"), ["b", "b", "a"]);
}

#[test]
fn cancelling_an_orphaned_run_marks_it_cancelled_and_resumable() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "orphan-cancel.yaml",
        r#"
name: orphan-cancel
phases:
  - id: long
    type: exec
    command: ["sh", "-c", "echo x >> @DIR@/long.count; echo $$ > @DIR@/long.pid; [ -e @DIR@/fast ] || sleep 30"]
  - id: next
    type: exec
    after: [long]
    command: ["sh", "-c", "echo x >> @DIR@/next.count"]
"#,
    );
    let dive = env.spawn(&["run", "workflow", &wf]);
    wait_until("long started", Duration::from_secs(20), || {
        env.path("long.pid").exists()
    });
    let run_id = env.wait_for_run("orphan-cancel");
    dive.signal(libc::SIGKILL);
    assert_eq!(dive.wait(Duration::from_secs(10)).code, None);
    let pgid = read_pgid(&env.path("long.pid"));
    kill_group(pgid);
    wait_until("the run is orphaned", Duration::from_secs(10), || {
        env.show(&run_id)["orphaned"] == true
    });

    let cancel = env.dive(&["runs", "cancel", &run_id]);
    cancel.assert_code(0);
    assert!(
        cancel.stderr.contains("marked cancelled"),
        "{}",
        cancel.stderr
    );
    let shown = env.show(&run_id);
    assert_eq!(shown["state"], "cancelled", "{shown:#}");
    assert!(shown.get("orphaned").is_none_or(|o| o == false));

    env.touch("fast");
    let resumed = env.dive(&["resume", &run_id, "--json"]);
    resumed.assert_code(0);
    assert_eq!(resumed.json()["state"], "succeeded");
    assert_eq!(env.count("long.count"), 2);
    assert_eq!(env.count("next.count"), 1);
}

#[test]
fn locks_list_and_clean_show_holders() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "locks.yaml",
        r#"
name: locks
lock: "e2e:locks"
phases:
  - { id: hold, type: sleep, duration: 30s }
"#,
    );
    let dive = env.spawn(&["run", "workflow", &wf]);
    let run_id = env.wait_for_run("locks");

    // While the run lives, its lock is held and names it.
    let locks = env.dive(&["locks", "list", "--json"]);
    locks.assert_code(0);
    let locks = locks.json();
    assert_eq!(locks.as_array().map(Vec::len), Some(1), "{locks:#}");
    assert_eq!(locks[0]["key"], "e2e:locks");
    assert_eq!(locks[0]["run_id"], run_id.as_str());
    assert_eq!(locks[0]["held"], true);
    assert_eq!(locks[0]["run_state"], "running");
    assert_eq!(locks[0]["pid"], dive.pid());
    let text = env.dive(&["locks", "list"]);
    text.assert_code(0);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("e2e:locks") && l.contains(&run_id) && l.contains("held")),
        "{}",
        text.stdout
    );
    let clean = env.dive(&["locks", "clean"]);
    clean.assert_code(0);
    assert!(clean.stderr.contains("no stale locks"), "{}", clean.stderr);

    // Once its process is killed the database frees the lock: the holder row is stale.
    dive.signal(libc::SIGKILL);
    assert_eq!(dive.wait(Duration::from_secs(10)).code, None);
    wait_until("the lock is free", Duration::from_secs(10), || {
        env.dive(&["locks", "list", "--json"]).json()[0]["held"] == false
    });
    let locks = env.dive(&["locks", "list", "--json"]).json();
    assert_eq!(locks[0]["run_id"], run_id.as_str());
    assert_eq!(locks[0]["run_state"], "running");
    let clean = env.dive(&["locks", "clean"]);
    clean.assert_code(0);
    assert!(
        clean
            .stderr
            .contains("removed stale lock holder `e2e:locks`"),
        "{}",
        clean.stderr
    );
    assert_eq!(env.psql("SELECT count(*) FROM locks"), "0");
    assert_eq!(
        env.dive(&["locks", "list", "--json"]).json(),
        serde_json::json!([])
    );
}
