//! The pure scheduler, without a database: a simulated store applies its checkpoint actions, a
//! simulated clock-free world delivers attempt results, retry timers and compensations in an
//! order proptest chooses, and may crash the process between any two actions (then a new
//! scheduler is restored from the simulated store and resumed, as `dive resume` does).

use chrono::{DateTime, TimeZone, Utc};
use dive_engine::plan::{PlannedPhase, RetryPolicy};
use dive_engine::scheduler::{Action, Input, PhaseRow, Scheduler};
use dive_engine::{Event, PhaseError, PhaseState, Plan, RunState};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

const MAX_ATTEMPTS: u32 = 3;
const MAX_DELAY: Duration = Duration::from_millis(40);

/// How a test phase behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ok,
    /// Fails with a fatal error.
    Fatal,
    /// Fails with a retryable error on attempts 1..=n (n < MAX_ATTEMPTS), then succeeds.
    Flaky(u32),
}

#[derive(Debug, Clone)]
struct Spec {
    deps: Vec<usize>,
    kind: Kind,
    compensable: bool,
    /// Its compensation fails (fatally).
    comp_fails: bool,
    /// Its compensation also undoes a failed attempt (`Phase::compensates_failure`).
    compensates_failure: bool,
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap()
}

fn id(i: usize) -> String {
    format!("p{i}")
}

fn plan(specs: &[Spec]) -> Plan {
    Plan {
        workflow: "sim".into(),
        description: None,
        source: "test".into(),
        lock_keys: vec!["sim".into()],
        params: BTreeMap::new(),
        context: BTreeMap::new(),
        phases: specs
            .iter()
            .enumerate()
            .map(|(i, s)| PlannedPhase {
                id: id(i),
                kind: "sim".into(),
                description: None,
                after: s.deps.iter().map(|&d| id(d)).collect(),
                retry: RetryPolicy {
                    max_attempts: MAX_ATTEMPTS,
                    initial_delay: Duration::from_millis(10),
                    max_delay: MAX_DELAY,
                    multiplier: 2.0,
                    jitter: true,
                },
                timeout: Duration::from_secs(1),
                breaker: None,
                spec: json!({"type": "sim"}),
            })
            .collect(),
    }
}

fn scheduler(specs: &[Spec], concurrency: usize, no_rollback: bool) -> Scheduler<'static> {
    let compensable: Vec<(bool, bool)> = specs
        .iter()
        .map(|s| (s.compensable, s.compensates_failure))
        .collect();
    Scheduler::new(
        Uuid::nil(),
        &plan(specs),
        concurrency,
        no_rollback,
        Box::new(move |i, _, failed| compensable[i].0 && (!failed || compensable[i].1)),
    )
}

/// The simulated state database.
#[derive(Debug, Default, Clone)]
struct Db {
    run: Option<(RunState, Option<String>)>,
    phases: HashMap<usize, PhaseRow>,
}

impl Db {
    fn state(&self, i: usize) -> PhaseState {
        self.phases
            .get(&i)
            .map(|r| r.state)
            .unwrap_or(PhaseState::Pending)
    }
}

/// What the world did, for the assertions.
#[derive(Debug, Default)]
struct Log {
    /// (phase, attempt) in start order.
    starts: Vec<(usize, u32)>,
    /// Phases whose attempt succeeded.
    succeeded: Vec<usize>,
    /// Phases in the order their compensation ran.
    compensations: Vec<usize>,
    delays: Vec<Duration>,
    most_running: usize,
    crashes: usize,
}

/// Runs a simulation: `choices` pick which pending event happens next (cycled); the process
/// crashes just before the actions numbered in `crash_at`; `cancel_at` cancels the run at that
/// step.
fn simulate(
    specs: &[Spec],
    concurrency: usize,
    no_rollback: bool,
    choices: &[usize],
    crash_at: &[usize],
    cancel_at: Option<usize>,
) -> (Db, Log) {
    let mut db = Db::default();
    let mut log = Log::default();
    let mut sched = scheduler(specs, concurrency, no_rollback);
    db.run = Some((RunState::Running, None));
    sched.begin();
    let mut running: Vec<(usize, u32)> = Vec::new();
    let mut timers: Vec<usize> = Vec::new();
    let mut comp: Option<usize> = None;
    let mut step = 0usize;
    let mut choice = choices.iter().cycle();
    let mut action_no = 0usize;
    'outer: loop {
        step += 1;
        assert!(step < 10_000, "the simulation does not end");
        let actions = sched.actions(now()).expect("legal transitions");
        // Inputs handed over while carrying out the actions (aborted attempts report back).
        let mut reported = false;
        for action in actions {
            action_no += 1;
            if crash_at.contains(&action_no) {
                // The process dies: nothing in flight survives; a new one resumes from the store.
                log.crashes += 1;
                running.clear();
                timers.clear();
                comp = None;
                let (run_state, error) = db.run.clone().unwrap();
                if !run_state.is_resumable() {
                    break 'outer;
                }
                sched = scheduler(specs, concurrency, no_rollback);
                sched.restore(
                    run_state,
                    (0..specs.len()).map(|i| match db.phases.get(&i) {
                        Some(r) => (r.state, r.attempt, r.started_at, r.output.clone()),
                        None => (PhaseState::Pending, 0, None, None),
                    }),
                );
                sched.resume(error.as_deref(), now()).expect("resumable");
                continue 'outer;
            }
            match action {
                Action::Notify(_) => {}
                Action::Checkpoint(rows) => {
                    let mut seen = std::collections::HashSet::new();
                    for row in rows {
                        assert!(
                            seen.insert(row.phase_id.clone()),
                            "a phase twice in a batch"
                        );
                        let i: usize = row.phase_id[1..].parse().unwrap();
                        let mut row = row;
                        // The store keeps a succeeded phase's output (it never goes back to null).
                        if row.output.is_none() {
                            row.output = db.phases.get(&i).and_then(|r| r.output.clone());
                        }
                        assert!(
                            db.state(i).can_become(row.state),
                            "{} -> {}",
                            db.state(i),
                            row.state
                        );
                        db.phases.insert(i, row);
                    }
                }
                Action::SetPhase { phase, state, .. } => {
                    let row = db
                        .phases
                        .get_mut(&phase)
                        .expect("a compensated phase has a row");
                    assert!(row.state.can_become(state));
                    row.state = state;
                }
                Action::SetRun { state, error, .. } => {
                    let (from, _) = db.run.clone().unwrap();
                    assert!(from.can_become(state), "run {from} -> {state}");
                    db.run = Some((state, error));
                }
                Action::Start { phase, attempt } => {
                    // The `running` record is durable before the side effect.
                    let row = &db.phases[&phase];
                    assert_eq!((row.state, row.attempt), (PhaseState::Running, attempt));
                    // Every dependency succeeded, durably.
                    for &d in &specs[phase].deps {
                        assert_eq!(db.state(d), PhaseState::Succeeded, "p{phase} before p{d}");
                    }
                    log.starts.push((phase, attempt));
                    running.push((phase, attempt));
                    log.most_running = log.most_running.max(running.len());
                }
                Action::RetryAfter { phase, delay } => {
                    log.delays.push(delay);
                    timers.push(phase);
                }
                Action::AbortAll => {
                    reported |= !running.is_empty();
                    for (phase, _) in running.drain(..) {
                        sched
                            .handle(
                                Input::Finished {
                                    phase,
                                    result: Err(PhaseError::fatal("cancelled")),
                                    elapsed: Duration::ZERO,
                                },
                                now(),
                            )
                            .unwrap();
                    }
                    timers.clear();
                }
                Action::Compensate { phase } => {
                    assert!(comp.is_none(), "one compensation at a time");
                    log.compensations.push(phase);
                    comp = Some(phase);
                }
                Action::Done { state, .. } => {
                    assert_eq!(db.run.as_ref().unwrap().0, state);
                    break 'outer;
                }
            }
        }
        if cancel_at == Some(step) {
            sched
                .handle(
                    Input::Cancel {
                        reason: "test".into(),
                    },
                    now(),
                )
                .unwrap();
            continue;
        }
        if reported {
            continue;
        }
        // Deliver one pending event, chosen by the test.
        let pending = running.len() + timers.len() + usize::from(comp.is_some());
        assert!(pending > 0, "the run waits for nothing but is not done");
        let k = choice.next().copied().unwrap_or(0) % pending;
        let input = if k < running.len() {
            let (phase, attempt) = running.remove(k);
            let result = match specs[phase].kind {
                Kind::Ok => Ok(json!({ "phase": phase })),
                Kind::Fatal => Err(PhaseError::fatal("told to fail")),
                Kind::Flaky(n) if attempt <= n => Err(PhaseError::retryable("flaky")),
                Kind::Flaky(_) => Ok(json!({ "phase": phase })),
            };
            if result.is_ok() {
                log.succeeded.push(phase);
            }
            Input::Finished {
                phase,
                result,
                elapsed: Duration::ZERO,
            }
        } else if k < running.len() + timers.len() {
            Input::RetryDue {
                phase: timers.remove(k - running.len()),
            }
        } else {
            let phase = comp.take().unwrap();
            let result = if specs[phase].comp_fails {
                Err(PhaseError::fatal("compensation told to fail"))
            } else {
                Ok(())
            };
            Input::Compensated {
                phase,
                result,
                elapsed: Duration::ZERO,
            }
        };
        sched.handle(input, now()).unwrap();
    }
    (db, log)
}

fn ancestors(specs: &[Spec], i: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = specs[i].deps.clone();
    while let Some(d) = stack.pop() {
        if !out.contains(&d) {
            out.push(d);
            stack.extend(specs[d].deps.iter().copied());
        }
    }
    out
}

fn arb_specs(kinds: impl Strategy<Value = Kind> + Clone) -> impl Strategy<Value = Vec<Spec>> {
    (1usize..9).prop_flat_map(move |n| {
        proptest::collection::vec((any::<u16>(), kinds.clone(), any::<bool>(), Just(false)), n)
            .prop_map(|raw| {
                raw.into_iter()
                    .enumerate()
                    .map(|(i, (mask, kind, compensable, comp_fails))| Spec {
                        deps: (0..i).filter(|d| mask & (1 << (d % 16)) != 0).collect(),
                        kind,
                        compensable,
                        comp_fails,
                        compensates_failure: false,
                    })
                    .collect()
            })
    })
}

fn succeeding() -> impl Strategy<Value = Kind> + Clone {
    prop_oneof![3 => Just(Kind::Ok), 1 => (1..MAX_ATTEMPTS).prop_map(Kind::Flaky)]
}

fn any_kind() -> impl Strategy<Value = Kind> + Clone {
    prop_oneof![
        4 => Just(Kind::Ok),
        1 => Just(Kind::Fatal),
        1 => (1..MAX_ATTEMPTS).prop_map(Kind::Flaky)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Every phase starts only once all its dependencies succeeded (checked at each start),
    /// never more than `concurrency` at once, and a run of phases that all end up succeeding
    /// succeeds with each succeeding exactly once.
    #[test]
    fn phases_start_only_after_their_dependencies(
        specs in arb_specs(succeeding()),
        concurrency in 1usize..4,
        choices in proptest::collection::vec(any::<usize>(), 1..64),
    ) {
        let (db, log) = simulate(&specs, concurrency, false, &choices, &[], None);
        prop_assert_eq!(db.run.clone().unwrap().0, RunState::Succeeded);
        prop_assert!(log.most_running <= concurrency);
        for i in 0..specs.len() {
            prop_assert_eq!(db.state(i), PhaseState::Succeeded);
        }
    }

    /// Retryable errors are retried with the policy's delays until they stop; fatal errors are
    /// not retried; no phase gets more than `max_attempts` attempts.
    #[test]
    fn retries_follow_the_policy_and_the_error_class(
        specs in arb_specs(any_kind()),
        choices in proptest::collection::vec(any::<usize>(), 1..64),
    ) {
        let (_, log) = simulate(&specs, 2, true, &choices, &[], None);
        for (i, spec) in specs.iter().enumerate() {
            let attempts = log.starts.iter().filter(|(p, _)| *p == i).count() as u32;
            prop_assert!(attempts <= MAX_ATTEMPTS);
            match spec.kind {
                Kind::Fatal => prop_assert!(attempts <= 1),
                // Reached and not cut short by another phase's failure: retried to success.
                Kind::Flaky(n) if attempts > 0 && !specs.iter().any(|s| s.kind == Kind::Fatal) => {
                    prop_assert_eq!(attempts, n + 1)
                }
                _ => {}
            }
        }
        for d in &log.delays {
            prop_assert!(*d <= MAX_DELAY, "{d:?}");
        }
    }

    /// A failed run compensates exactly the phases that succeeded and have a compensation, in
    /// reverse dependency order, marks the ones that never started skipped, and ends
    /// rolled back.
    #[test]
    fn rollback_compensates_succeeded_phases_in_reverse_dependency_order(
        specs in arb_specs(any_kind()),
        concurrency in 1usize..4,
        choices in proptest::collection::vec(any::<usize>(), 1..64),
    ) {
        prop_assume!(specs.iter().any(|s| s.kind == Kind::Fatal));
        let (db, log) = simulate(&specs, concurrency, false, &choices, &[], None);
        prop_assert_eq!(db.run.clone().unwrap().0, RunState::RolledBack);
        let started: Vec<usize> = log.starts.iter().map(|(p, _)| *p).collect();
        let mut expected: Vec<usize> = log
            .succeeded
            .iter()
            .copied()
            .filter(|&i| specs[i].compensable)
            .collect();
        expected.sort();
        let mut got = log.compensations.clone();
        got.sort();
        prop_assert_eq!(&got, &expected);
        for (i, spec) in specs.iter().enumerate() {
            let state = db.state(i);
            if state == PhaseState::Succeeded {
                prop_assert!(!spec.compensable, "p{i} succeeded with a compensation left");
            }
            prop_assert!(
                matches!(state, PhaseState::Succeeded | PhaseState::Compensated | PhaseState::Skipped | PhaseState::Failed),
                "p{i} ends {state}"
            );
            if !started.contains(&i) {
                prop_assert_eq!(state, PhaseState::Skipped);
            }
        }
        // A dependent is compensated before what it depends on.
        for (pos, &i) in log.compensations.iter().enumerate() {
            for a in ancestors(&specs, i) {
                if let Some(apos) = log.compensations.iter().position(|&c| c == a) {
                    prop_assert!(apos > pos, "p{a} compensated before its dependent p{i}");
                }
            }
        }
    }

    /// Crashes at any points followed by resumes reach the same final run state as a run
    /// without crashes; a phase whose success is durable is never started again.
    #[test]
    fn crashes_and_resumes_reach_the_same_final_state(
        specs in arb_specs(any_kind()),
        concurrency in 1usize..4,
        choices in proptest::collection::vec(any::<usize>(), 1..64),
        crash_at in proptest::collection::vec(1usize..60, 0..4),
    ) {
        let (calm, _) = simulate(&specs, concurrency, false, &choices, &[], None);
        let (db, log) = simulate(&specs, concurrency, false, &choices, &crash_at, None);
        let (state, _) = db.run.clone().unwrap();
        prop_assert_eq!(state, calm.run.unwrap().0);
        if specs.iter().all(|s| s.kind != Kind::Fatal) {
            for i in 0..specs.len() {
                prop_assert_eq!(db.state(i), PhaseState::Succeeded);
            }
        }
        for i in 0..specs.len() {
            prop_assert!(!matches!(db.state(i), PhaseState::Running | PhaseState::Compensating));
        }
        let _ = log.crashes;
    }
}

fn chain(kinds: &[Kind], compensable: bool) -> Vec<Spec> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| Spec {
            deps: if i == 0 { vec![] } else { vec![i - 1] },
            kind,
            compensable,
            comp_fails: false,
            compensates_failure: false,
        })
        .collect()
}

#[test]
fn a_failed_phase_that_undoes_a_failed_attempt_is_compensated_first() {
    let mut specs = chain(&[Kind::Ok, Kind::Ok, Kind::Fatal], true);
    specs[2].compensates_failure = true;
    let (db, log) = simulate(&specs, 1, false, &[0], &[], None);
    assert_eq!(db.run.clone().unwrap().0, RunState::RolledBack);
    assert_eq!(log.compensations, vec![2, 1, 0]);
    assert_eq!(db.state(2), PhaseState::Compensated);

    // A phase that does not say so is left failed: its output is all a compensation knows.
    let specs = chain(&[Kind::Ok, Kind::Ok, Kind::Fatal], true);
    let (db, log) = simulate(&specs, 1, false, &[0], &[], None);
    assert_eq!(log.compensations, vec![1, 0]);
    assert_eq!(db.state(2), PhaseState::Failed);
}

#[test]
fn a_failed_compensation_ends_rollback_failed_naming_the_phase() {
    let mut specs = chain(&[Kind::Ok, Kind::Ok, Kind::Fatal], true);
    specs[0].comp_fails = true;
    let (db, log) = simulate(&specs, 1, false, &[0], &[], None);
    let (state, error) = db.run.clone().unwrap();
    assert_eq!(state, RunState::RollbackFailed);
    let error = error.unwrap();
    assert!(
        error.starts_with("phase `p2` failed: told to fail"),
        "{error}"
    );
    assert!(
        error.contains("rollback left behind: p0 (compensation told to fail)"),
        "{error}"
    );
    assert_eq!(log.compensations, vec![1, 0]);
    assert_eq!(db.state(0), PhaseState::CompensationFailed);
    assert_eq!(db.state(1), PhaseState::Compensated);
}

#[test]
fn a_resumed_rollback_retries_what_failed_and_keeps_the_original_reason() {
    let mut specs = chain(&[Kind::Ok, Kind::Fatal], true);
    specs[0].comp_fails = true;
    let (db, _) = simulate(&specs, 1, false, &[0], &[], None);
    let (state, error) = db.run.clone().unwrap();
    assert_eq!(state, RunState::RollbackFailed);
    // Resume with a compensation that now works.
    specs[0].comp_fails = false;
    let mut sched = scheduler(&specs, 1, false);
    sched.restore(
        state,
        (0..2).map(|i| {
            let r = &db.phases[&i];
            (r.state, r.attempt, r.started_at, r.output.clone())
        }),
    );
    sched.resume(error.as_deref(), now()).unwrap();
    let actions = sched.actions(now()).unwrap();
    assert!(
        actions.contains(&Action::Compensate { phase: 0 }),
        "{actions:?}"
    );
    sched
        .handle(
            Input::Compensated {
                phase: 0,
                result: Ok(()),
                elapsed: Duration::ZERO,
            },
            now(),
        )
        .unwrap();
    let actions = sched.actions(now()).unwrap();
    let done = actions.last().unwrap();
    assert_eq!(
        done,
        &Action::Done {
            state: RunState::RolledBack,
            error: Some("phase `p1` failed: told to fail".into())
        }
    );
}

#[test]
fn cancel_rolls_back_or_leaves_the_run_cancelled_with_no_rollback() {
    let specs = chain(&[Kind::Ok, Kind::Ok, Kind::Ok], true);
    // Cancel once the first phase runs (step 1): it is aborted, nothing else starts.
    let (db, log) = simulate(&specs, 1, false, &[0], &[], Some(1));
    assert_eq!(db.run.unwrap().0, RunState::RolledBack);
    assert_eq!(log.starts, vec![(0, 1)]);
    let (db, _) = simulate(&specs, 1, true, &[0], &[], Some(1));
    let (state, error) = db.run.unwrap();
    assert_eq!(state, RunState::Cancelled);
    assert_eq!(error.as_deref(), Some("test"));
}

#[test]
fn a_servers_retry_after_lengthens_the_policy_delay() {
    let specs = chain(&[Kind::Ok], false);
    let mut sched = scheduler(&specs, 1, false);
    sched.begin();
    let actions = sched.actions(now()).unwrap();
    assert!(matches!(
        actions.last(),
        Some(Action::Start {
            phase: 0,
            attempt: 1
        })
    ));
    let error: PhaseError = Throttled(Later).into();
    sched
        .handle(
            Input::Finished {
                phase: 0,
                result: Err(error),
                elapsed: Duration::ZERO,
            },
            now(),
        )
        .unwrap();
    let actions = sched.actions(now()).unwrap();
    let delay = actions.iter().find_map(|a| match a {
        Action::RetryAfter { delay, .. } => Some(*delay),
        _ => None,
    });
    assert_eq!(delay, Some(Duration::from_secs(3)));
    let failed = actions.iter().find_map(|a| match a {
        Action::Notify(Event::PhaseFailed { error, .. }) => Some(error.clone()),
        _ => None,
    });
    assert_eq!(failed.as_deref(), Some("throttled: try later"));
}

#[test]
fn a_result_and_the_next_start_share_one_checkpoint() {
    let specs = chain(&[Kind::Ok, Kind::Ok], false);
    let mut sched = scheduler(&specs, 1, false);
    sched.begin();
    sched.actions(now()).unwrap();
    sched
        .handle(
            Input::Finished {
                phase: 0,
                result: Ok(Value::Null),
                elapsed: Duration::ZERO,
            },
            now(),
        )
        .unwrap();
    let actions = sched.actions(now()).unwrap();
    let checkpoints: Vec<&Vec<PhaseRow>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Checkpoint(rows) => Some(rows),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints.len(), 1, "{actions:?}");
    let states: Vec<(String, PhaseState)> = checkpoints[0]
        .iter()
        .map(|r| (r.phase_id.clone(), r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("p0".into(), PhaseState::Succeeded),
            ("p1".into(), PhaseState::Running)
        ]
    );
    let start = actions
        .iter()
        .position(|a| matches!(a, Action::Start { .. }));
    let write = actions
        .iter()
        .position(|a| matches!(a, Action::Checkpoint(_)));
    assert!(write < start);
}

/// A failure because the state database is unavailable does not spend an attempt: the phase
/// is tried again every second for as long as it lasts, then the policy applies as before.
#[test]
fn a_state_database_outage_does_not_spend_attempts() {
    let specs = chain(&[Kind::Ok], false);
    let mut sched = scheduler(&specs, 1, false);
    sched.begin();
    sched.actions(now()).unwrap();
    let fail = |sched: &mut Scheduler, error: PhaseError| {
        sched
            .handle(
                Input::Finished {
                    phase: 0,
                    result: Err(error),
                    elapsed: Duration::ZERO,
                },
                now(),
            )
            .unwrap();
        let actions = sched.actions(now()).unwrap();
        let retry = actions.iter().find_map(|a| match a {
            Action::RetryAfter { phase: 0, delay } => Some(*delay),
            _ => None,
        });
        if retry.is_some() {
            sched.handle(Input::RetryDue { phase: 0 }, now()).unwrap();
            let actions = sched.actions(now()).unwrap();
            assert!(
                actions
                    .iter()
                    .any(|a| matches!(a, Action::Start { phase: 0, .. })),
                "{actions:?}"
            );
        }
        retry
    };
    let outages = MAX_ATTEMPTS + 2;
    for _ in 0..outages {
        let retry = fail(
            &mut sched,
            PhaseError::state_db_unavailable("secret store: pool timed out"),
        );
        assert_eq!(retry, Some(Duration::from_secs(1)));
    }
    for try_no in 1..=MAX_ATTEMPTS {
        let retry = fail(&mut sched, PhaseError::retryable("keycloak busy"));
        assert_eq!(retry.is_some(), try_no < MAX_ATTEMPTS, "try {try_no}");
    }
    assert_eq!(sched.attempt(0), outages + MAX_ATTEMPTS);
}

/// A domain error that says "try again in 3 s", with a cause.
#[derive(Debug, thiserror::Error)]
#[error("throttled")]
struct Throttled(#[source] Later);

#[derive(Debug, thiserror::Error)]
#[error("try later")]
struct Later;

impl dive_engine::Classify for Throttled {
    fn is_retryable(&self) -> bool {
        true
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }
}

/// A compensation that fails retryably is tried again after the policy's delays, the phase
/// staying `compensating`, and gives up after `max_attempts` tries.
#[test]
fn a_retryable_compensation_failure_is_tried_again_by_the_policy() {
    let specs = chain(&[Kind::Ok, Kind::Fatal], true);
    // The policy's tries, then more until a minute of waiting: a rollback is worth the wait.
    let policy = &plan(&specs).phases[0].retry;
    let tries = policy.compensation_delays().count() as u32 + 1;
    assert!(tries > MAX_ATTEMPTS, "{tries}");
    let waited: Duration = policy.compensation_delays().sum();
    assert!(waited <= dive_engine::COMPENSATION_PATIENCE, "{waited:?}");
    assert!(
        waited + Duration::from_secs(1) > dive_engine::COMPENSATION_PATIENCE,
        "{waited:?}"
    );
    let mut sched = scheduler(&specs, 1, false);
    sched.begin();
    let finish = |sched: &mut Scheduler, phase, result| {
        sched
            .handle(
                Input::Finished {
                    phase,
                    result,
                    elapsed: Duration::ZERO,
                },
                now(),
            )
            .unwrap();
        sched.actions(now()).unwrap()
    };
    sched.actions(now()).unwrap();
    finish(&mut sched, 0, Ok(json!({})));
    let actions = finish(&mut sched, 1, Err(PhaseError::fatal("told to fail")));
    assert!(
        actions.contains(&Action::Compensate { phase: 0 }),
        "{actions:?}"
    );
    for try_no in 1..=tries {
        sched
            .handle(
                Input::Compensated {
                    phase: 0,
                    result: Err(PhaseError::retryable("keycloak busy")),
                    elapsed: Duration::ZERO,
                },
                now(),
            )
            .unwrap();
        let actions = sched.actions(now()).unwrap();
        let retry = actions
            .iter()
            .any(|a| matches!(a, Action::RetryAfter { phase: 0, delay } if *delay <= Duration::from_secs(1)));
        if try_no < tries {
            assert!(retry, "try {try_no}: {actions:?}");
            assert!(
                !actions.iter().any(|a| matches!(a, Action::SetPhase { .. })),
                "the phase stays compensating: {actions:?}"
            );
            assert_eq!(sched.phase_state(0), PhaseState::Compensating);
            sched.handle(Input::RetryDue { phase: 0 }, now()).unwrap();
            let again = sched.actions(now()).unwrap();
            assert_eq!(again, vec![Action::Compensate { phase: 0 }]);
        } else {
            assert!(!retry, "no try beyond the patience: {actions:?}");
            assert!(matches!(
                actions.last(),
                Some(Action::Done {
                    state: RunState::RollbackFailed,
                    ..
                })
            ));
            assert_eq!(sched.phase_state(0), PhaseState::CompensationFailed);
        }
    }
}
