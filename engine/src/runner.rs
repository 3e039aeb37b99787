//! Executes a plan: the [`Engine`] takes the run's locks and records it, then a thin I/O loop
//! carries out what the pure [`Scheduler`] decides — checkpoints (a phase's result and the next
//! phases' start in one write), attempts, retry timers, compensations — and feeds back what
//! happened, plus cancellation and breaker transitions.

use crate::breakers::{BreakerPolicy, Breakers, Transition};
use crate::error::EngineError;
use crate::events::{Event, EventSink};
use crate::interpolate;
use crate::lock_expand::{LockExpander, NoExpansion};
use crate::phase::{PhaseContext, PhaseError};
use crate::plan::Plan;
use crate::runconn::{Op, RunConn};
use crate::scheduler::{Action, Compensable, Input, Scheduler};
use crate::state::RunState;
use crate::store::{RunRecord, Store};
use crate::subflow::{NoWorkflows, WorkflowCatalog};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

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
    /// The run and key of the `workflow` phase that starts this run as its child (recorded,
    /// so a resumed parent finds the child again); `None` for a top-level run.
    pub parent: Option<(Uuid, String)>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 8,
            no_rollback: false,
            events: EventSink::none(),
            cancel: CancellationToken::new(),
            held_lock_keys: Vec::new(),
            parent: None,
        }
    }
}

impl RunOptions {
    /// The keys of `lock_keys` this run takes on its own connection: those no ancestor holds.
    pub(crate) fn own_lock_keys(&self, lock_keys: &[String]) -> Vec<String> {
        lock_keys
            .iter()
            .filter(|k| !self.held_lock_keys.contains(k))
            .cloned()
            .collect()
    }

    /// Every key the run runs under: its own and its ancestors' (what its phases are told).
    pub(crate) fn all_lock_keys(&self, lock_keys: &[String]) -> Vec<String> {
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
    catalog: Arc<dyn WorkflowCatalog>,
    services: Arc<dyn Any + Send + Sync>,
    lock_expander: Arc<dyn LockExpander>,
    breaker_policy: BreakerPolicy,
}

impl Engine {
    /// An engine on `store` with no workflow catalog and no services (enough for the engine's
    /// own phase types).
    pub fn new(store: Store) -> Self {
        Engine {
            store,
            catalog: Arc::new(NoWorkflows),
            services: Arc::new(()),
            lock_expander: Arc::new(NoExpansion),
            breaker_policy: BreakerPolicy::default(),
        }
    }

    /// Where `workflow` phases find their child workflows.
    pub fn with_catalog(mut self, catalog: Arc<dyn WorkflowCatalog>) -> Self {
        self.catalog = catalog;
        self
    }

    /// What other crates' phase types work with (see [`PhaseContext::services`]); a child run
    /// shares its parent's.
    pub fn with_services(mut self, services: Arc<dyn Any + Send + Sync>) -> Self {
        self.services = services;
        self
    }

    /// What lock keys stand for ([`LockExpander`]); a child run shares its parent's.
    pub fn with_lock_expander(mut self, expander: Arc<dyn LockExpander>) -> Self {
        self.lock_expander = expander;
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
        let plan = &self.checked_plan(plan, opts).await?;
        let run_id = Uuid::now_v7();
        let mut conn = RunConn::acquire(
            self.store.url(),
            &plan.workflow,
            &opts.own_lock_keys(&plan.lock_keys),
            run_id,
            opts.events.clone(),
            opts.cancel.clone(),
        )
        .await?;
        conn.create_run(plan, opts.no_rollback, opts.parent.as_ref())
            .await?;
        let trace = self.store.root_run(run_id).await?;
        let mut runner = Runner::new(self, plan, conn, opts, trace);
        runner.announce(false);
        runner.sched.begin();
        let outcome = runner.execute().await;
        runner.conn.release().await;
        outcome
    }

    /// `plan` with its lock keys expanded, once its prechecks passed: what a run starts from
    /// (and a dry run plans).
    pub(crate) async fn checked_plan<'p>(
        &self,
        plan: &'p Plan,
        opts: &RunOptions,
    ) -> Result<std::borrow::Cow<'p, Plan>, EngineError> {
        // Copied only when its lock keys change.
        let plan = match self.expand_lock_keys(plan).await? {
            Some(expanded) => std::borrow::Cow::Owned(expanded),
            None => std::borrow::Cow::Borrowed(plan),
        };
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
        self.precheck(&plan, opts).await?;
        Ok(plan)
    }

    pub(crate) fn catalog(&self) -> Arc<dyn WorkflowCatalog> {
        self.catalog.clone()
    }

    pub(crate) fn services(&self) -> Arc<dyn Any + Send + Sync> {
        self.services.clone()
    }

    pub(crate) fn lock_expander(&self) -> Arc<dyn LockExpander> {
        self.lock_expander.clone()
    }

    /// `plan` with its lock keys expanded ([`LockExpander`]), or `None` when none changes.
    async fn expand_lock_keys(&self, plan: &Plan) -> Result<Option<Plan>, EngineError> {
        let keys = crate::lock_expand::expand_all(self.lock_expander.as_ref(), &plan.lock_keys)
            .await
            .map_err(|e| EngineError::Precheck(vec![format!("{}: lock: {e}", plan.source)]))?;
        Ok((keys != plan.lock_keys).then(|| Plan {
            lock_keys: keys,
            ..plan.clone()
        }))
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
                store: self.store.clone(),
                catalog: self.catalog.clone(),
                services: self.services.clone(),
                lock_expander: self.lock_expander.clone(),
                events: EventSink::none(),
                held_lock_keys: opts.all_lock_keys(&plan.lock_keys),
                planned_outputs: crate::phase::no_planned_outputs(),
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
            &record.plan.workflow,
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
        let trace = self.store.root_run(run_id).await?;
        let mut runner = Runner::new(self, &record.plan, conn, &opts, trace);
        runner.sched.restore(
            record.state,
            record
                .phases
                .iter()
                .map(|p| (p.state, p.attempts, p.started_at, p.output.clone())),
        );
        runner.announce(true);
        let outcome = match runner.sched.resume(record.error.as_deref(), Utc::now()) {
            Ok(()) => runner.execute().await,
            Err(e) => Err(e),
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

/// What a task returns: the phase index, its result and how long it ran.
type TaskResult = (usize, Result<Value, PhaseError>, Duration);

/// The I/O loop around a [`Scheduler`]: writes its checkpoints, spawns attempts and
/// compensations, runs retry timers, watches for cancellation and records breaker transitions.
/// Every decision is the scheduler's.
struct Runner<'a> {
    /// The run's tracing span: run id, workflow, trace id.
    span: tracing::Span,
    plan: &'a Plan,
    sched: Scheduler<'a>,
    conn: RunConn,
    /// Every key the run runs under, its ancestors' included; phases see them.
    held_lock_keys: Vec<String>,
    opts: &'a RunOptions,
    store: Store,
    catalog: Arc<dyn WorkflowCatalog>,
    services: Arc<dyn Any + Send + Sync>,
    lock_expander: Arc<dyn LockExpander>,
    breakers: Arc<Breakers>,
    breaker_rx: mpsc::UnboundedReceiver<Transition>,
    tasks: JoinSet<TaskResult>,
    task_phase: HashMap<Id, usize>,
    compensations: JoinSet<TaskResult>,
    timers: JoinSet<usize>,
    phase_cancel: CancellationToken,
}

impl<'a> Runner<'a> {
    fn new(
        engine: &Engine,
        plan: &'a Plan,
        conn: RunConn,
        opts: &'a RunOptions,
        trace: Uuid,
    ) -> Self {
        let (tx, breaker_rx) = mpsc::unbounded_channel();
        let compensable: Compensable<'a> = Box::new(move |i, outputs, failed| {
            plan.phases[i]
                .instantiate(outputs)
                .map(|p| p.has_compensation() && (!failed || p.compensates_failure()))
                .unwrap_or(true)
        });
        // Every log line of the run (its phases' too) carries these; a child run's trace id
        // is its root run's id.
        let span = tracing::info_span!(
            "run",
            run_id = %conn.run_id,
            workflow = %plan.workflow,
            trace_id = %trace
        );
        Runner {
            span,
            plan,
            sched: Scheduler::new(
                conn.run_id,
                plan,
                opts.concurrency,
                opts.no_rollback,
                compensable,
            ),
            conn,
            held_lock_keys: opts.all_lock_keys(&plan.lock_keys),
            opts,
            store: engine.store.clone(),
            catalog: engine.catalog.clone(),
            services: engine.services.clone(),
            lock_expander: engine.lock_expander.clone(),
            breakers: Arc::new(Breakers::new(engine.breaker_policy, tx)),
            breaker_rx,
            tasks: JoinSet::new(),
            task_phase: HashMap::new(),
            compensations: JoinSet::new(),
            timers: JoinSet::new(),
            phase_cancel: opts.cancel.child_token(),
        }
    }

    fn run_id(&self) -> Uuid {
        self.conn.run_id
    }

    fn announce(&self, resumed: bool) {
        let _in_run = self.span.enter();
        self.opts.events.emit(Event::RunStarted {
            run_id: self.run_id(),
            workflow: self.plan.workflow.clone(),
            phases: self.sched.dag().ids.clone(),
            resumed,
        });
    }

    /// Runs until the scheduler says the run is over; on an error (the state database gone for
    /// good, a lost lock) stops every task, leaving the run resumable.
    async fn execute(&mut self) -> Result<RunOutcome, EngineError> {
        let span = self.span.clone();
        let result = self.drive().instrument(span).await;
        if result.is_err() {
            self.tasks.abort_all();
            self.compensations.abort_all();
            self.timers.abort_all();
        }
        result
    }

    async fn drive(&mut self) -> Result<RunOutcome, EngineError> {
        let cancel = self.opts.cancel.clone();
        let start = tokio::time::Instant::now() + HEARTBEAT;
        let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cancel_seen = false;
        loop {
            let actions = self.sched.actions(Utc::now())?;
            if let Some(outcome) = self.perform(actions).await? {
                return Ok(outcome);
            }
            let input = tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => {
                    let now = Utc::now();
                    self.handle_joined(joined, now)?;
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.handle_joined(joined, now)?;
                    }
                    continue;
                }
                Some(joined) = self.compensations.join_next() => match joined {
                    Ok((phase, result, elapsed)) => Input::Compensated {
                        phase,
                        result: result.map(|_| ()),
                        elapsed,
                    },
                    Err(e) => return Err(EngineError::Corrupt {
                        run: self.run_id(),
                        why: format!("compensation task failed: {e}"),
                    }),
                },
                Some(Ok(phase)) = self.timers.join_next() => Input::RetryDue { phase },
                Some(t) = self.breaker_rx.recv() => {
                    self.record_breakers(Some(t)).await?;
                    continue;
                }
                _ = heartbeat.tick() => {
                    if !self.conn.write(Op::PollCancel).await? {
                        continue;
                    }
                    Input::Cancel { reason: "cancelled by operator (dive runs cancel)".into() }
                }
                _ = cancel.cancelled(), if !cancel_seen => {
                    cancel_seen = true;
                    Input::Cancel { reason: "interrupted by the operator".into() }
                }
            };
            self.sched.handle(input, Utc::now())?;
        }
    }

    fn handle_joined(
        &mut self,
        joined: Result<(Id, TaskResult), JoinError>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let (phase, result, elapsed) = match joined {
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
                (i, Err(PhaseError::fatal(why)), Duration::ZERO)
            }
        };
        self.sched.handle(
            Input::Finished {
                phase,
                result,
                elapsed,
            },
            now,
        )
    }

    /// Carries out the scheduler's actions in order; returns the outcome once the run is over.
    async fn perform(&mut self, actions: Vec<Action>) -> Result<Option<RunOutcome>, EngineError> {
        for action in actions {
            match action {
                Action::Notify(event) => self.opts.events.emit(event),
                Action::Checkpoint(rows) => {
                    self.conn.write(Op::Phases(&rows)).await?;
                }
                Action::SetPhase {
                    phase,
                    state,
                    error,
                } => {
                    let phase_id = &self.sched.dag().ids[phase];
                    self.conn
                        .write(Op::PhaseState {
                            phase_id,
                            state,
                            error: error.as_deref(),
                        })
                        .await?;
                }
                Action::SetRun {
                    state,
                    error,
                    finished,
                } => {
                    if finished {
                        self.record_breakers(None).await?;
                    }
                    self.conn
                        .write(Op::RunState {
                            state,
                            error: error.as_deref(),
                            finished,
                        })
                        .await?;
                }
                Action::Start { phase, attempt } => self.spawn(phase, attempt),
                Action::RetryAfter { phase, delay } => {
                    self.timers.spawn(async move {
                        tokio::time::sleep(delay).await;
                        phase
                    });
                }
                Action::AbortAll => {
                    tracing::warn!("cancelling the run's phases");
                    self.phase_cancel.cancel();
                    self.tasks.abort_all();
                    self.timers.abort_all();
                }
                Action::Compensate { phase } => self.spawn_compensation(phase),
                Action::Done { state, error } => {
                    return Ok(Some(RunOutcome {
                        run_id: self.run_id(),
                        state,
                        error,
                    }));
                }
            }
        }
        Ok(None)
    }

    fn context(&self, phase_id: &str, attempt: u32, cancel: CancellationToken) -> PhaseContext {
        PhaseContext {
            run_id: self.run_id(),
            phase_id: phase_id.to_string(),
            attempt,
            cancel,
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            services: self.services.clone(),
            lock_expander: self.lock_expander.clone(),
            events: self.opts.events.clone(),
            held_lock_keys: self.held_lock_keys.clone(),
            planned_outputs: crate::phase::no_planned_outputs(),
        }
    }

    fn spawn(&mut self, i: usize, attempt: u32) {
        let planned = &self.plan.phases[i];
        let phase = planned.instantiate(self.sched.outputs());
        let key = planned
            .breaker
            .clone()
            .or_else(|| phase.as_ref().ok().and_then(|p| p.breaker_key()));
        let ctx = self.context(&planned.id, attempt, self.phase_cancel.clone());
        let timeout = planned.timeout;
        let breakers = self.breakers.clone();
        let span =
            tracing::info_span!("phase", phase = %ctx.phase_id, attempt, r#type = %planned.kind);
        let handle = self.tasks.spawn(
            async move {
                let started = Instant::now();
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
                (i, result, started.elapsed())
            }
            .instrument(span),
        );
        self.task_phase.insert(handle.id(), i);
    }

    /// Compensates phase `i` once (the scheduler decides about another try) in a task of its
    /// own, so the loop keeps answering heartbeats and breaker events meanwhile.
    fn spawn_compensation(&mut self, i: usize) {
        let planned = self.plan.phases[i].clone();
        let phase = planned.instantiate(self.sched.outputs());
        let output = self
            .sched
            .outputs()
            .get(&planned.id)
            .cloned()
            .unwrap_or(Value::Null);
        let attempt = self.sched.attempt(i);
        let ctx = self.context(&planned.id, attempt, CancellationToken::new());
        let span = tracing::info_span!("compensation", phase = %ctx.phase_id, attempt);
        self.compensations.spawn(
            async move {
                let started = Instant::now();
                let result = match phase {
                    Err(e) => Err(PhaseError::fatal(e)),
                    Ok(phase) => {
                        let call =
                            async { phase.compensate(&ctx, &output).await.map(|()| Value::Null) };
                        run_with_timeout(call, planned.timeout).await.map(|_| ())
                    }
                };
                (i, result.map(|()| Value::Null), started.elapsed())
            }
            .instrument(span),
        );
    }

    /// Records breaker transitions: `first` and whatever else is queued.
    async fn record_breakers(&mut self, first: Option<Transition>) -> Result<(), EngineError> {
        let mut batch: Vec<Transition> = first.into_iter().collect();
        while let Ok(t) = self.breaker_rx.try_recv() {
            batch.push(t);
        }
        if batch.is_empty() {
            return Ok(());
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
