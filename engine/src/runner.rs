//! Executes a plan: schedules ready phases up to the concurrency limit, checkpoints every
//! transition (a phase's result and the next phases' start in one write), retries, breakers,
//! cancellation, and rollback in reverse dependency order.

use crate::breakers::{BreakerPolicy, Breakers, Transition};
use crate::error::EngineError;
use crate::events::{Event, EventSink};
use crate::interpolate;
use crate::phase::{PhaseContext, PhaseError};
use crate::plan::{Dag, Plan};
use crate::runconn::{Op, PhaseRow, RunConn};
use crate::services::Services;
use crate::state::{PhaseState, RunState};
use crate::store::{RunRecord, Store};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Joins a run's failure reason and the phases a rollback could not compensate.
const LEFT_BEHIND: &str = "; rollback left behind: ";

/// How often a run checks for `dive runs cancel` (and proves its connection alive).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// How one run is executed.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Most phases running at once.
    pub concurrency: usize,
    /// Leave a failed run `failed` and resumable instead of compensating.
    pub no_rollback: bool,
    pub events: EventSink,
    /// Cancelling it (Ctrl-C) stops the run as `dive runs cancel` would.
    pub cancel: CancellationToken,
    /// Lock keys that ancestor runs already hold on their own connections — set by a `workflow`
    /// phase for the child run it starts (from [`PhaseContext::held_lock_keys`]). The run does
    /// not take these keys itself (it would fail: another session holds them) but runs under
    /// its ancestors' locks; it takes only its other keys. Empty for a top-level run and on
    /// `dive resume` of a child, which then takes all of its keys itself.
    pub held_lock_keys: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 8,
            no_rollback: false,
            events: EventSink::none(),
            cancel: CancellationToken::new(),
            held_lock_keys: Vec::new(),
        }
    }
}

impl RunOptions {
    /// The keys of `lock_keys` this run takes on its own connection: those no ancestor holds.
    fn own_lock_keys(&self, lock_keys: &[String]) -> Vec<String> {
        lock_keys
            .iter()
            .filter(|k| !self.held_lock_keys.contains(k))
            .cloned()
            .collect()
    }

    /// Every key the run runs under: its own and its ancestors' (what its phases are told).
    fn all_lock_keys(&self, lock_keys: &[String]) -> Vec<String> {
        crate::plan::normalise_lock_keys(lock_keys.iter().chain(&self.held_lock_keys).cloned())
    }
}

/// How a run ended (or stopped).
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub run_id: Uuid,
    pub state: RunState,
    pub error: Option<String>,
}

/// Runs plans against a state database.
pub struct Engine {
    store: Store,
    services: Arc<Services>,
    breaker_policy: BreakerPolicy,
}

impl Engine {
    pub fn new(store: Store) -> Self {
        Engine {
            store,
            services: Arc::new(Services::default()),
            breaker_policy: BreakerPolicy::default(),
        }
    }

    pub fn with_services(mut self, services: Services) -> Self {
        self.services = Arc::new(services);
        self
    }

    /// Shares an existing set of services (a child run uses its parent's).
    pub fn with_shared_services(mut self, services: Arc<Services>) -> Self {
        self.services = services;
        self
    }

    pub fn with_breaker_policy(mut self, policy: BreakerPolicy) -> Self {
        self.breaker_policy = policy;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a new run of `plan`. Takes its lock keys in sorted order (except those in
    /// [`RunOptions::held_lock_keys`]) and fails with [`EngineError::LockHeld`] at once, holding
    /// none of them, if another run holds one.
    pub async fn start(&self, plan: &Plan, opts: &RunOptions) -> Result<RunOutcome, EngineError> {
        if plan.lock_keys.is_empty() {
            return Err(crate::workflow::InvalidWorkflow {
                file: plan.source.clone(),
                problems: vec![crate::workflow::Problem {
                    phase: None,
                    message: "lock: the plan has no lock key".into(),
                }],
            }
            .into());
        }
        self.precheck(plan, opts).await?;
        let run_id = Uuid::now_v7();
        let mut conn = RunConn::acquire(
            self.store.url(),
            &opts.own_lock_keys(&plan.lock_keys),
            run_id,
            opts.events.clone(),
            opts.cancel.clone(),
        )
        .await?;
        conn.create_run(plan, opts.no_rollback).await?;
        let mut runner = Runner::new(self, plan, conn, opts);
        runner.announce(false);
        let outcome = runner.execute().await;
        runner.conn.release().await;
        outcome
    }

    /// Runs every phase's precheck that needs no other phase's output.
    async fn precheck(&self, plan: &Plan, opts: &RunOptions) -> Result<(), EngineError> {
        let mut problems = Vec::new();
        for p in &plan.phases {
            let needs_outputs = interpolate::references_in(&p.spec)
                .unwrap_or_default()
                .iter()
                .any(|r| matches!(r, interpolate::Reference::Output { .. }));
            if needs_outputs {
                continue;
            }
            let Ok(phase) = p.instantiate(&HashMap::new()) else {
                continue;
            };
            let ctx = PhaseContext {
                run_id: Uuid::nil(),
                phase_id: p.id.clone(),
                attempt: 0,
                cancel: CancellationToken::new(),
                services: self.services.clone(),
                events: EventSink::none(),
                held_lock_keys: opts.all_lock_keys(&plan.lock_keys),
            };
            if let Err(e) = phase.precheck(&ctx).await {
                problems.push(format!("{}: phase `{}`: {e}", plan.source, p.id));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Precheck(problems))
        }
    }

    /// Continues a run that stopped: succeeded phases keep their outputs and are not run again.
    /// Takes all the run's lock keys (but those in [`RunOptions::held_lock_keys`], which
    /// `dive resume` leaves empty: a child run resumed on its own holds its parent's keys too).
    pub async fn resume(&self, run_id: Uuid, opts: &RunOptions) -> Result<RunOutcome, EngineError> {
        let record = self.store.load_run(run_id).await?;
        check_resumable(&record)?;
        let conn = RunConn::acquire(
            self.store.url(),
            &opts.own_lock_keys(&record.lock_keys),
            run_id,
            opts.events.clone(),
            opts.cancel.clone(),
        )
        .await?;
        // Read again under the lock: the state may have moved while we waited for it.
        let record = self.store.load_run(run_id).await?;
        check_resumable(&record)?;
        let opts = RunOptions {
            no_rollback: opts.no_rollback || record.no_rollback,
            ..opts.clone()
        };
        let mut runner = Runner::new(self, &record.plan, conn, &opts);
        runner.restore(&record);
        runner.announce(true);
        let outcome = match record.state {
            RunState::RollingBack | RunState::RollbackFailed => {
                // The original failure, without what an earlier rollback attempt left behind.
                let reason = match record.error.as_deref() {
                    Some(e) => e.split(LEFT_BEHIND).next().unwrap_or(e).to_string(),
                    None => "rollback resumed".into(),
                };
                runner.rollback(reason).await
            }
            _ => runner.continue_run().await,
        };
        runner.conn.release().await;
        outcome
    }
}

fn check_resumable(record: &RunRecord) -> Result<(), EngineError> {
    if record.state.is_resumable() {
        Ok(())
    } else {
        Err(EngineError::NotResumable {
            run: record.id,
            state: record.state.to_string(),
            why: "it has ended; there is nothing to resume".into(),
        })
    }
}

/// What a phase task returns: its index and its result.
type TaskResult = (usize, Result<Value, PhaseError>);

struct Runner<'a> {
    plan: &'a Plan,
    dag: Dag,
    conn: RunConn,
    /// Every key the run runs under, its ancestors' included; phases see them.
    held_lock_keys: Vec<String>,
    opts: &'a RunOptions,
    services: Arc<Services>,
    breakers: Arc<Breakers>,
    breaker_rx: mpsc::UnboundedReceiver<Transition>,
    run_state: RunState,
    /// Latest checkpoint state of each phase.
    state: Vec<PhaseState>,
    /// Latest attempt number written for each phase (counts across resumes).
    attempt: Vec<u32>,
    /// Attempts made in this process, against the retry policy.
    tries: Vec<u32>,
    delays: Vec<Option<Box<dyn Iterator<Item = Duration> + Send>>>,
    /// A task or a retry timer exists for the phase.
    busy: Vec<bool>,
    queued: Vec<bool>,
    ready: VecDeque<usize>,
    started_at: Vec<Option<DateTime<Utc>>>,
    clock: Vec<Option<Instant>>,
    outputs: HashMap<String, Value>,
    rows: Vec<PhaseRow>,
    to_spawn: Vec<usize>,
    tasks: JoinSet<TaskResult>,
    task_phase: HashMap<Id, usize>,
    timers: JoinSet<usize>,
    phase_cancel: CancellationToken,
    failure: Option<String>,
    cancelled: Option<String>,
}

impl<'a> Runner<'a> {
    fn new(engine: &Engine, plan: &'a Plan, conn: RunConn, opts: &'a RunOptions) -> Self {
        let n = plan.phases.len();
        let (tx, breaker_rx) = mpsc::unbounded_channel();
        Runner {
            plan,
            dag: plan.dag(),
            conn,
            held_lock_keys: opts.all_lock_keys(&plan.lock_keys),
            opts,
            services: engine.services.clone(),
            breakers: Arc::new(Breakers::new(engine.breaker_policy, tx)),
            breaker_rx,
            run_state: RunState::Running,
            state: vec![PhaseState::Pending; n],
            attempt: vec![0; n],
            tries: vec![0; n],
            delays: (0..n).map(|_| None).collect(),
            busy: vec![false; n],
            queued: vec![false; n],
            ready: VecDeque::new(),
            started_at: vec![None; n],
            clock: vec![None; n],
            outputs: HashMap::new(),
            rows: Vec::new(),
            to_spawn: Vec::new(),
            tasks: JoinSet::new(),
            task_phase: HashMap::new(),
            timers: JoinSet::new(),
            phase_cancel: opts.cancel.child_token(),
            failure: None,
            cancelled: None,
        }
    }

    fn run_id(&self) -> Uuid {
        self.conn.run_id
    }

    fn announce(&self, resumed: bool) {
        tracing::info!(run.id = %self.run_id(), workflow = %self.plan.workflow, resumed, "run started");
        self.opts.events.emit(Event::RunStarted {
            run_id: self.run_id(),
            workflow: self.plan.workflow.clone(),
            phases: self.dag.ids.clone(),
            resumed,
        });
    }

    /// Loads checkpoints of a stopped run.
    fn restore(&mut self, record: &RunRecord) {
        self.run_state = record.state;
        for (i, p) in record.phases.iter().enumerate() {
            self.state[i] = p.state;
            self.attempt[i] = p.attempts;
            self.started_at[i] = p.started_at;
            if let Some(output) = &p.output {
                self.outputs.insert(p.id.clone(), output.clone());
            }
        }
    }

    /// Resumes the forward path: interrupted attempts are closed, then everything not
    /// succeeded runs.
    async fn continue_run(&mut self) -> Result<RunOutcome, EngineError> {
        self.set_run(RunState::Running, None, false).await?;
        for i in 0..self.state.len() {
            match self.state[i] {
                PhaseState::Succeeded => self.opts.events.emit(Event::PhaseReused {
                    phase: self.dag.ids[i].clone(),
                }),
                PhaseState::Running => {
                    self.advance(i, PhaseState::Failed)?;
                    self.rows.push(self.row(
                        i,
                        PhaseState::Failed,
                        None,
                        Some("interrupted: the run stopped during this attempt".into()),
                    ));
                }
                _ => {}
            }
        }
        self.execute().await
    }

    async fn execute(&mut self) -> Result<RunOutcome, EngineError> {
        let result = self.drive().await;
        if result.is_err() {
            self.tasks.abort_all();
            self.timers.abort_all();
        }
        result?;
        self.record_breakers().await?;
        self.finish().await
    }

    async fn drive(&mut self) -> Result<(), EngineError> {
        for &i in &self.dag.topo.clone() {
            self.enqueue_if_ready(i);
        }
        let cancel = self.opts.cancel.clone();
        let start = tokio::time::Instant::now() + HEARTBEAT;
        let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.failure.is_none() && self.cancelled.is_none() {
                self.schedule()?;
            }
            self.flush().await?;
            for i in std::mem::take(&mut self.to_spawn) {
                self.spawn(i);
            }
            if self.tasks.is_empty() && self.timers.is_empty() {
                return Ok(());
            }
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => {
                    self.on_joined(joined)?;
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.on_joined(joined)?;
                    }
                }
                Some(Ok(i)) = self.timers.join_next() => {
                    self.busy[i] = false;
                    self.enqueue_if_ready(i);
                }
                Some(t) = self.breaker_rx.recv() => {
                    self.record_breaker(t).await?;
                }
                _ = heartbeat.tick() => {
                    if self.conn.write(Op::PollCancel).await? {
                        self.cancel("cancelled by operator (dive runs cancel)");
                    }
                }
                _ = cancel.cancelled(), if self.cancelled.is_none() => {
                    self.cancel("interrupted by the operator");
                }
            }
        }
    }

    fn enqueue_if_ready(&mut self, i: usize) {
        let startable = matches!(
            self.state[i],
            PhaseState::Pending | PhaseState::Failed | PhaseState::Skipped | PhaseState::Running
        );
        if startable
            && !self.busy[i]
            && !self.queued[i]
            && self.dag.deps[i]
                .iter()
                .all(|&d| self.state[d] == PhaseState::Succeeded)
        {
            self.queued[i] = true;
            self.ready.push_back(i);
        }
    }

    /// Moves ready phases to `running` (written before they are spawned).
    fn schedule(&mut self) -> Result<(), EngineError> {
        while self.tasks.len() + self.to_spawn.len() < self.opts.concurrency.max(1) {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            self.queued[i] = false;
            self.busy[i] = true;
            self.tries[i] += 1;
            self.attempt[i] += 1;
            self.advance(i, PhaseState::Running)?;
            self.started_at[i] = Some(Utc::now());
            self.clock[i] = Some(Instant::now());
            if self.delays[i].is_none() {
                self.delays[i] = Some(Box::new(self.plan.phases[i].retry.delays()));
            }
            self.rows.push(self.row(i, PhaseState::Running, None, None));
            self.to_spawn.push(i);
        }
        Ok(())
    }

    /// Moves phase `i` to `next`, refusing a transition the state machine does not allow.
    fn advance(&mut self, i: usize, next: PhaseState) -> Result<(), EngineError> {
        let from = self.state[i];
        if !from.can_become(next) {
            return Err(EngineError::IllegalTransition {
                what: format!("phase `{}` of run {}", self.dag.ids[i], self.run_id()),
                from: from.to_string(),
                to: next.to_string(),
            });
        }
        self.state[i] = next;
        Ok(())
    }

    fn row(
        &self,
        i: usize,
        state: PhaseState,
        output: Option<Value>,
        error: Option<String>,
    ) -> PhaseRow {
        let finished = !matches!(
            state,
            PhaseState::Running | PhaseState::Pending | PhaseState::Skipped
        );
        PhaseRow {
            phase_id: self.dag.ids[i].clone(),
            state,
            attempt: self.attempt[i],
            started_at: self.started_at[i],
            finished_at: finished.then(Utc::now),
            output,
            error,
        }
    }

    /// Writes pending checkpoint rows: one statement, one commit (split only if a phase would
    /// appear twice).
    async fn flush(&mut self) -> Result<(), EngineError> {
        while !self.rows.is_empty() {
            let mut seen = HashSet::new();
            let split = self
                .rows
                .iter()
                .position(|r| !seen.insert(r.phase_id.as_str()))
                .unwrap_or(self.rows.len());
            let batch: Vec<PhaseRow> = self.rows.drain(..split).collect();
            self.conn.write(Op::Phases(&batch)).await?;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) {
        let planned = &self.plan.phases[i];
        let attempt = self.attempt[i];
        self.opts.events.emit(Event::PhaseStarted {
            phase: planned.id.clone(),
            attempt,
        });
        let phase = planned.instantiate(&self.outputs);
        let key = planned
            .breaker
            .clone()
            .or_else(|| phase.as_ref().ok().and_then(|p| p.breaker_key()));
        let ctx = PhaseContext {
            run_id: self.run_id(),
            phase_id: planned.id.clone(),
            attempt,
            cancel: self.phase_cancel.clone(),
            services: self.services.clone(),
            events: self.opts.events.clone(),
            held_lock_keys: self.held_lock_keys.clone(),
        };
        let timeout = planned.timeout;
        let breakers = self.breakers.clone();
        let span =
            tracing::info_span!("phase", run.id = %ctx.run_id, phase.id = %ctx.phase_id, attempt);
        let handle = self.tasks.spawn(
            async move {
                let result = match phase {
                    Err(e) => Err(PhaseError::fatal(e)),
                    Ok(phase) => {
                        let call = run_with_timeout(phase.run(&ctx), timeout);
                        match key {
                            Some(key) => breakers.guard(&key, call).await,
                            None => call.await,
                        }
                    }
                };
                (i, result)
            }
            .instrument(span),
        );
        self.task_phase.insert(handle.id(), i);
    }

    fn on_joined(
        &mut self,
        joined: Result<(Id, TaskResult), JoinError>,
    ) -> Result<(), EngineError> {
        let (i, result) = match joined {
            Ok((id, result)) => {
                self.task_phase.remove(&id);
                result
            }
            Err(e) => {
                let Some(i) = self.task_phase.remove(&e.id()) else {
                    return Ok(());
                };
                let why = if e.is_cancelled() {
                    "cancelled".to_string()
                } else {
                    format!("phase panicked: {e}")
                };
                (i, Err(PhaseError::fatal(why)))
            }
        };
        let id = self.dag.ids[i].clone();
        let attempt = self.attempt[i];
        let elapsed = self.clock[i].map(|c| c.elapsed()).unwrap_or_default();
        match result {
            Ok(output) => {
                self.busy[i] = false;
                self.advance(i, PhaseState::Succeeded)?;
                self.rows
                    .push(self.row(i, PhaseState::Succeeded, Some(output.clone()), None));
                self.outputs.insert(id.clone(), output);
                self.opts.events.emit(Event::PhaseSucceeded {
                    phase: id,
                    attempt,
                    elapsed,
                });
                for d in self.dag.dependents[i].clone() {
                    self.enqueue_if_ready(d);
                }
            }
            Err(error) => {
                self.advance(i, PhaseState::Failed)?;
                self.rows
                    .push(self.row(i, PhaseState::Failed, None, Some(error.to_string())));
                let may_retry = error.is_retryable()
                    && self.failure.is_none()
                    && self.cancelled.is_none()
                    && self.tries[i] < self.plan.phases[i].retry.max_attempts;
                let retry_in = may_retry
                    .then(|| self.delays[i].as_mut().and_then(|d| d.next()))
                    .flatten()
                    .map(|d| d.max(error.retry_after().unwrap_or_default()));
                tracing::warn!(run.id = %self.run_id(), phase.id = %id, attempt, %error, ?retry_in, "phase attempt failed");
                self.opts.events.emit(Event::PhaseFailed {
                    phase: id.clone(),
                    attempt,
                    error: error.to_string(),
                    retry_in,
                });
                match retry_in {
                    Some(delay) => {
                        self.timers.spawn(async move {
                            tokio::time::sleep(delay).await;
                            i
                        });
                    }
                    None => {
                        self.busy[i] = false;
                        if self.failure.is_none() && self.cancelled.is_none() {
                            self.failure = Some(format!("phase `{id}` failed: {error}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn cancel(&mut self, reason: &str) {
        tracing::warn!(run.id = %self.run_id(), reason, "cancelling run");
        self.cancelled = Some(reason.to_string());
        self.opts.events.emit(Event::Cancelling);
        self.phase_cancel.cancel();
        self.tasks.abort_all();
        self.timers.abort_all();
        for i in 0..self.busy.len() {
            if self.state[i] == PhaseState::Failed {
                self.busy[i] = false;
            }
        }
    }

    async fn record_breaker(&mut self, first: Transition) -> Result<(), EngineError> {
        let mut batch = vec![first];
        while let Ok(t) = self.breaker_rx.try_recv() {
            batch.push(t);
        }
        for (key, transition, _) in &batch {
            self.opts.events.emit(Event::Breaker {
                key: key.clone(),
                transition: transition.clone(),
            });
        }
        self.conn.write(Op::Breakers(&batch)).await?;
        Ok(())
    }

    async fn record_breakers(&mut self) -> Result<(), EngineError> {
        match self.breaker_rx.try_recv() {
            Ok(t) => self.record_breaker(t).await,
            Err(_) => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<RunOutcome, EngineError> {
        if self.state.iter().all(|s| *s == PhaseState::Succeeded) {
            return self.end(RunState::Succeeded, None).await;
        }
        let reason = self
            .failure
            .clone()
            .or_else(|| self.cancelled.clone())
            .unwrap_or_else(|| "the run stopped before all phases succeeded".into());
        match (self.opts.no_rollback, self.cancelled.is_some()) {
            (true, true) => self.end(RunState::Cancelled, Some(reason)).await,
            (true, false) => self.end(RunState::Failed, Some(reason)).await,
            (false, _) => self.rollback(reason).await,
        }
    }

    async fn end(
        &mut self,
        state: RunState,
        error: Option<String>,
    ) -> Result<RunOutcome, EngineError> {
        self.set_run(state, error.as_deref(), true).await?;
        tracing::info!(run.id = %self.run_id(), %state, "run finished");
        self.opts.events.emit(Event::RunFinished {
            state,
            error: error.clone(),
        });
        Ok(RunOutcome {
            run_id: self.run_id(),
            state,
            error,
        })
    }

    /// Compensates succeeded phases in reverse dependency order; phases that never started are
    /// marked skipped.
    async fn rollback(&mut self, reason: String) -> Result<RunOutcome, EngineError> {
        self.set_run(RunState::RollingBack, Some(&reason), false)
            .await?;
        for i in 0..self.state.len() {
            if self.state[i] == PhaseState::Pending {
                self.advance(i, PhaseState::Skipped)?;
                self.rows.push(self.row(i, PhaseState::Skipped, None, None));
                self.opts.events.emit(Event::PhaseSkipped {
                    phase: self.dag.ids[i].clone(),
                });
            }
        }
        self.flush().await?;
        let mut left = Vec::new();
        for &i in self.dag.topo.clone().iter().rev() {
            if !matches!(
                self.state[i],
                PhaseState::Succeeded | PhaseState::Compensating | PhaseState::CompensationFailed
            ) {
                continue;
            }
            let planned = &self.plan.phases[i];
            let id = planned.id.clone();
            let phase = match planned.instantiate(&self.outputs) {
                Ok(p) if !p.has_compensation() => continue,
                Ok(p) => Ok(p),
                Err(e) => Err(e),
            };
            self.set_phase(i, PhaseState::Compensating, None).await?;
            self.opts
                .events
                .emit(Event::Compensating { phase: id.clone() });
            let started = Instant::now();
            let result = match phase {
                Err(e) => Err(PhaseError::fatal(e)),
                Ok(phase) => {
                    let output = self.outputs.get(&id).cloned().unwrap_or(Value::Null);
                    let ctx = PhaseContext {
                        run_id: self.run_id(),
                        phase_id: id.clone(),
                        attempt: self.attempt[i],
                        cancel: CancellationToken::new(),
                        services: self.services.clone(),
                        events: self.opts.events.clone(),
                        held_lock_keys: self.held_lock_keys.clone(),
                    };
                    compensate_with_retry(&*phase, &ctx, &output, planned).await
                }
            };
            match result {
                Ok(()) => {
                    self.set_phase(i, PhaseState::Compensated, None).await?;
                    self.opts.events.emit(Event::Compensated {
                        phase: id,
                        elapsed: started.elapsed(),
                    });
                }
                Err(e) => {
                    let error = e.to_string();
                    self.set_phase(i, PhaseState::CompensationFailed, Some(&error))
                        .await?;
                    self.opts.events.emit(Event::CompensationFailed {
                        phase: id.clone(),
                        error: error.clone(),
                    });
                    left.push(format!("{id} ({error})"));
                }
            }
        }
        if left.is_empty() {
            self.end(RunState::RolledBack, Some(reason)).await
        } else {
            let error = format!("{reason}{LEFT_BEHIND}{}", left.join(", "));
            self.end(RunState::RollbackFailed, Some(error)).await
        }
    }

    /// Moves the run to `next` (checked against the state machine) and records it.
    async fn set_run(
        &mut self,
        next: RunState,
        error: Option<&str>,
        finished: bool,
    ) -> Result<(), EngineError> {
        if !self.run_state.can_become(next) {
            return Err(EngineError::IllegalTransition {
                what: format!("run {}", self.run_id()),
                from: self.run_state.to_string(),
                to: next.to_string(),
            });
        }
        self.conn
            .write(Op::RunState {
                state: next,
                error,
                finished,
            })
            .await?;
        self.run_state = next;
        Ok(())
    }

    async fn set_phase(
        &mut self,
        i: usize,
        state: PhaseState,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        self.advance(i, state)?;
        self.conn
            .write(Op::PhaseState {
                phase_id: &self.dag.ids[i],
                state,
                error,
            })
            .await?;
        Ok(())
    }
}

async fn run_with_timeout(
    call: impl std::future::Future<Output = Result<Value, PhaseError>>,
    timeout: Duration,
) -> Result<Value, PhaseError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(PhaseError::retryable(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ))),
    }
}

async fn compensate_with_retry(
    phase: &dyn crate::phase::Phase,
    ctx: &PhaseContext,
    output: &Value,
    planned: &crate::plan::PlannedPhase,
) -> Result<(), PhaseError> {
    let mut delays = planned.retry.delays();
    loop {
        let call = async { phase.compensate(ctx, output).await.map(|()| Value::Null) };
        match run_with_timeout(call, planned.timeout).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => match delays.next() {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}
