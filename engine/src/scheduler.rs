//! The scheduler as a pure state machine: it is told what happened ([`Input`]) and says what to
//! do next ([`Action`]): write checkpoints, start attempts, wait before a retry, compensate,
//! finish. It does no I/O and reads no clock (the caller passes `now`), so its rules — a phase
//! starts only after all its dependencies succeeded, retries follow the policy and the error's
//! class, rollback compensates succeeded phases in reverse dependency order — are tested
//! without a database (`engine/tests/scheduler.rs`). The runner ([`crate::runner`]) is the thin
//! loop that carries the actions out.
//!
//! Ordering contract: the actions of one [`Scheduler::actions`] call are carried out in order,
//! and a [`Action::Checkpoint`] always comes before the [`Action::Start`] of a phase it marks
//! `running`, so no side effect happens before its `running` record is durable.

use crate::error::EngineError;
use crate::events::Event;
use crate::phase::PhaseError;
use crate::plan::{Dag, Plan, RetryPolicy};
use crate::state::{PhaseState, RunState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use uuid::Uuid;

/// Joins a run's failure reason and the phases a rollback could not compensate.
pub(crate) const LEFT_BEHIND: &str = "; rollback left behind: ";

/// One checkpoint row, as written in a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseRow {
    pub phase_id: String,
    pub state: PhaseState,
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

/// What happened, as the I/O loop reports it.
#[derive(Debug, Clone)]
pub enum Input {
    /// An attempt ended; `elapsed` is how long it ran.
    Finished {
        phase: usize,
        result: Result<Value, PhaseError>,
        elapsed: Duration,
    },
    /// The delay before a retry ran out.
    RetryDue { phase: usize },
    /// Stop scheduling (`dive runs cancel`, Ctrl-C).
    Cancel { reason: String },
    /// A compensation ended.
    Compensated {
        phase: usize,
        result: Result<(), PhaseError>,
        elapsed: Duration,
    },
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell the caller (progress view, logs).
    Notify(Event),
    /// Write these checkpoint rows in one round trip (no phase twice in a batch).
    Checkpoint(Vec<PhaseRow>),
    /// Move one phase to a compensation state, keeping its output.
    SetPhase {
        phase: usize,
        state: PhaseState,
        error: Option<String>,
    },
    /// Record the run's state (`finished`: also its end time).
    SetRun {
        state: RunState,
        error: Option<String>,
        finished: bool,
    },
    /// Run attempt `attempt` of a phase (its `running` row is already written).
    Start { phase: usize, attempt: u32 },
    /// Report [`Input::RetryDue`] for the phase after `delay` (a new attempt, or another try of
    /// the compensation under way).
    RetryAfter { phase: usize, delay: Duration },
    /// Stop every running attempt and pending retry: each attempt still reports
    /// [`Input::Finished`] (with an error); pending retries are forgotten.
    AbortAll,
    /// Run the phase's compensation once and report [`Input::Compensated`].
    Compensate { phase: usize },
    /// The run is over (its state is recorded).
    Done {
        state: RunState,
        error: Option<String>,
    },
}

/// How soon a phase that failed because the state database was unavailable is tried again.
const STATE_DB_RETRY: Duration = Duration::from_secs(1);

/// Per-phase bookkeeping.
struct Slot {
    state: PhaseState,
    /// Latest attempt number written (counts across resumes).
    attempt: u32,
    /// Attempts made by this scheduler, against the retry policy.
    tries: u32,
    started_at: Option<DateTime<Utc>>,
    delays: Option<Box<dyn Iterator<Item = Duration> + Send>>,
    /// An attempt is running.
    running: bool,
    /// A retry delay is pending.
    waiting: bool,
    queued: bool,
}

enum Mode {
    Forward,
    RollingBack {
        reason: String,
        /// Phases still to consider, next last.
        queue: Vec<usize>,
        current: Option<usize>,
        /// Delays before the next try of the current compensation (the phase's retry policy).
        delays: Option<Box<dyn Iterator<Item = Duration> + Send>>,
        left: Vec<String>,
    },
    Done,
}

/// Decides, for a phase and the outputs so far, whether it has a compensation to run — for a
/// phase that failed (`true`), whether its compensation also undoes a failed attempt. An error
/// building the phase counts as "has one", so the compensation is attempted and its failure
/// recorded.
pub type Compensable<'p> =
    Box<dyn Fn(usize, &HashMap<String, Value>, bool) -> bool + Send + Sync + 'p>;

/// The state of one run's schedule (`'p`: what its [`Compensable`] borrows, the plan).
pub struct Scheduler<'p> {
    run_id: Uuid,
    dag: Dag,
    retry: Vec<RetryPolicy>,
    concurrency: usize,
    no_rollback: bool,
    compensable: Compensable<'p>,
    run_state: RunState,
    slots: Vec<Slot>,
    /// How many slots are `running` and how many `waiting`: kept with the flags so the
    /// per-phase path never scans every slot.
    running: usize,
    waiting: usize,
    ready: VecDeque<usize>,
    outputs: HashMap<String, Value>,
    rows: Vec<PhaseRow>,
    out: Vec<Action>,
    mode: Mode,
    failure: Option<String>,
    cancelled: Option<String>,
}

impl<'p> Scheduler<'p> {
    pub fn new(
        run_id: Uuid,
        plan: &Plan,
        concurrency: usize,
        no_rollback: bool,
        compensable: Compensable<'p>,
    ) -> Scheduler<'p> {
        let dag = plan.dag();
        let slots = (0..dag.ids.len())
            .map(|_| Slot {
                state: PhaseState::Pending,
                attempt: 0,
                tries: 0,
                started_at: None,
                delays: None,
                running: false,
                waiting: false,
                queued: false,
            })
            .collect();
        Scheduler {
            run_id,
            retry: plan.phases.iter().map(|p| p.retry.clone()).collect(),
            dag,
            concurrency: concurrency.max(1),
            no_rollback,
            compensable,
            run_state: RunState::Running,
            slots,
            running: 0,
            waiting: 0,
            ready: VecDeque::new(),
            outputs: HashMap::new(),
            rows: Vec::new(),
            out: Vec::new(),
            mode: Mode::Forward,
            failure: None,
            cancelled: None,
        }
    }

    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// Outputs of the phases that succeeded, by phase id (what later phases' references read).
    pub fn outputs(&self) -> &HashMap<String, Value> {
        &self.outputs
    }

    pub fn phase_state(&self, i: usize) -> PhaseState {
        self.slots[i].state
    }

    /// The latest attempt number of phase `i` (counts across resumes).
    pub fn attempt(&self, i: usize) -> u32 {
        self.slots[i].attempt
    }

    /// Loads the checkpoints of a stopped run: `(state, attempts, started_at, output)` per phase,
    /// in plan order.
    pub fn restore(
        &mut self,
        run_state: RunState,
        phases: impl IntoIterator<Item = (PhaseState, u32, Option<DateTime<Utc>>, Option<Value>)>,
    ) {
        self.run_state = run_state;
        for (i, (state, attempt, started_at, output)) in phases.into_iter().enumerate() {
            let slot = &mut self.slots[i];
            slot.state = state;
            slot.attempt = attempt;
            slot.started_at = started_at;
            if let Some(output) = output {
                self.outputs.insert(self.dag.ids[i].clone(), output);
            }
        }
    }

    /// A new run: schedules what is ready.
    pub fn begin(&mut self) {
        for &i in &self.dag.topo.clone() {
            self.enqueue_if_ready(i);
        }
    }

    /// A resumed run: an interrupted rollback goes on (with the original `reason`); otherwise
    /// attempts found `running` are closed as interrupted and everything not succeeded runs.
    pub fn resume(&mut self, reason: Option<&str>, now: DateTime<Utc>) -> Result<(), EngineError> {
        if matches!(
            self.run_state,
            RunState::RollingBack | RunState::RollbackFailed
        ) {
            // The original failure, without what an earlier rollback attempt left behind.
            let reason = match reason {
                Some(e) => e.split(LEFT_BEHIND).next().unwrap_or(e).to_string(),
                None => "rollback resumed".into(),
            };
            return self.start_rollback(reason, now);
        }
        self.set_run(RunState::Running, None, false)?;
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                PhaseState::Succeeded => self.out.push(Action::Notify(Event::PhaseReused {
                    phase: self.dag.ids[i].clone(),
                })),
                PhaseState::Running => {
                    self.advance(i, PhaseState::Failed)?;
                    self.push_row(
                        i,
                        None,
                        Some("interrupted: the run stopped during this attempt".into()),
                        now,
                    );
                }
                _ => {}
            }
        }
        self.begin();
        Ok(())
    }

    /// Takes in one thing that happened. Several inputs may be handled before [`Self::actions`]
    /// (their checkpoints then share one write).
    pub fn handle(&mut self, input: Input, now: DateTime<Utc>) -> Result<(), EngineError> {
        match input {
            Input::Finished {
                phase,
                result,
                elapsed,
            } => self.on_finished(phase, result, elapsed, now),
            Input::RetryDue { phase } => {
                match &self.mode {
                    // The current compensation is tried again.
                    Mode::RollingBack {
                        current: Some(c), ..
                    } if *c == phase => self.out.push(Action::Compensate { phase }),
                    _ if self.slots[phase].waiting => {
                        self.slots[phase].waiting = false;
                        self.waiting -= 1;
                        self.enqueue_if_ready(phase);
                    }
                    _ => {}
                }
                Ok(())
            }
            Input::Cancel { reason } => {
                if self.cancelled.is_none() && matches!(self.mode, Mode::Forward) {
                    self.cancelled = Some(reason);
                    self.out.push(Action::Notify(Event::Cancelling));
                    self.out.push(Action::AbortAll);
                    for slot in &mut self.slots {
                        slot.waiting = false;
                        slot.queued = false;
                    }
                    self.waiting = 0;
                    self.ready.clear();
                }
                Ok(())
            }
            Input::Compensated {
                phase,
                result,
                elapsed,
            } => self.on_compensated(phase, result, elapsed),
        }
    }

    /// What to do now, in order. Empty while the run waits for attempts or retries; ends with
    /// [`Action::Done`] when the run is over.
    pub fn actions(&mut self, now: DateTime<Utc>) -> Result<Vec<Action>, EngineError> {
        loop {
            match self.mode {
                Mode::Done => break,
                Mode::Forward => {
                    let starts = if self.failure.is_none() && self.cancelled.is_none() {
                        self.schedule(now)?
                    } else {
                        Vec::new()
                    };
                    self.flush_rows();
                    self.out.extend(starts);
                    if self.is_idle() {
                        self.finish(now)?;
                        continue;
                    }
                    break;
                }
                Mode::RollingBack {
                    current: Some(_), ..
                } => break,
                Mode::RollingBack { .. } => {
                    self.next_compensation()?;
                    if matches!(
                        self.mode,
                        Mode::RollingBack {
                            current: Some(_),
                            ..
                        }
                    ) {
                        break;
                    }
                }
            }
        }
        self.flush_rows();
        Ok(std::mem::take(&mut self.out))
    }

    /// Nothing runs or waits, and nothing more will start.
    fn is_idle(&self) -> bool {
        let stopping = self.failure.is_some() || self.cancelled.is_some();
        self.running == 0 && self.waiting == 0 && (self.ready.is_empty() || stopping)
    }

    fn enqueue_if_ready(&mut self, i: usize) {
        let slot = &self.slots[i];
        let startable = matches!(
            slot.state,
            PhaseState::Pending | PhaseState::Failed | PhaseState::Skipped
        );
        if startable
            && !slot.running
            && !slot.waiting
            && !slot.queued
            && self.dag.deps[i]
                .iter()
                .all(|&d| self.slots[d].state == PhaseState::Succeeded)
        {
            self.slots[i].queued = true;
            self.ready.push_back(i);
        }
    }

    /// Moves ready phases to `running`, up to the concurrency limit; returns their starts.
    fn schedule(&mut self, now: DateTime<Utc>) -> Result<Vec<Action>, EngineError> {
        let mut starts = Vec::new();
        while self.running < self.concurrency {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            self.advance(i, PhaseState::Running)?;
            let slot = &mut self.slots[i];
            slot.queued = false;
            slot.running = true;
            self.running += 1;
            slot.tries += 1;
            slot.attempt += 1;
            slot.started_at = Some(now);
            let attempt = slot.attempt;
            self.push_row(i, None, None, now);
            starts.push(Action::Notify(Event::PhaseStarted {
                phase: self.dag.ids[i].clone(),
                attempt,
            }));
            starts.push(Action::Start { phase: i, attempt });
        }
        Ok(starts)
    }

    fn on_finished(
        &mut self,
        i: usize,
        result: Result<Value, PhaseError>,
        elapsed: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        if !self.slots[i].running {
            return Ok(());
        }
        self.slots[i].running = false;
        self.running -= 1;
        let id = self.dag.ids[i].clone();
        let attempt = self.slots[i].attempt;
        match result {
            Ok(output) => {
                self.advance(i, PhaseState::Succeeded)?;
                self.push_row(i, Some(output.clone()), None, now);
                self.outputs.insert(id.clone(), output);
                self.out.push(Action::Notify(Event::PhaseSucceeded {
                    phase: id,
                    attempt,
                    elapsed,
                }));
                for d in self.dag.dependents[i].clone() {
                    self.enqueue_if_ready(d);
                }
            }
            Err(error) => {
                self.advance(i, PhaseState::Failed)?;
                self.push_row(i, None, Some(error.to_string()), now);
                let retry_in = self.retry_delay(i, &error);
                self.out.push(Action::Notify(Event::PhaseFailed {
                    phase: id.clone(),
                    attempt,
                    error: error.to_string(),
                    retry_in,
                }));
                match retry_in {
                    Some(delay) => {
                        self.slots[i].waiting = true;
                        self.waiting += 1;
                        self.out.push(Action::RetryAfter { phase: i, delay });
                    }
                    None => {
                        if self.failure.is_none() && self.cancelled.is_none() {
                            self.failure = Some(format!("phase `{id}` failed: {error}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The delay before the next attempt, or `None` when the phase fails for good: a fatal
    /// error, the run already failing or cancelled, or no attempts left. A server's
    /// `Retry-After` lengthens the policy's delay.
    fn retry_delay(&mut self, i: usize, error: &PhaseError) -> Option<Duration> {
        if self.failure.is_some() || self.cancelled.is_some() {
            return None;
        }
        // The state database being down is waited out, as the checkpoints wait for it: the
        // attempt is given back and the phase tried again once a second.
        if error.is_state_db_unavailable() {
            self.slots[i].tries = self.slots[i].tries.saturating_sub(1);
            return Some(STATE_DB_RETRY);
        }
        let may_retry = error.is_retryable() && self.slots[i].tries < self.retry[i].max_attempts;
        if !may_retry {
            return None;
        }
        let retry = &self.retry[i];
        let delay = self.slots[i]
            .delays
            .get_or_insert_with(|| Box::new(retry.delays()))
            .next()?;
        Some(delay.max(error.retry_after().unwrap_or_default()))
    }

    /// Ends the forward path: succeeded, or failed / cancelled (with `--no-rollback`), or rollback.
    fn finish(&mut self, now: DateTime<Utc>) -> Result<(), EngineError> {
        if self.slots.iter().all(|s| s.state == PhaseState::Succeeded) {
            return self.end(RunState::Succeeded, None);
        }
        let reason = self
            .failure
            .clone()
            .or_else(|| self.cancelled.clone())
            .unwrap_or_else(|| "the run stopped before all phases succeeded".into());
        match (self.no_rollback, self.cancelled.is_some()) {
            (true, true) => self.end(RunState::Cancelled, Some(reason)),
            (true, false) => self.end(RunState::Failed, Some(reason)),
            (false, _) => self.start_rollback(reason, now),
        }
    }

    /// Marks phases that never started `skipped` and queues every phase that succeeded (or
    /// whose compensation was interrupted or failed, or that failed and undoes a failed
    /// attempt) for compensation, in reverse dependency order.
    fn start_rollback(&mut self, reason: String, now: DateTime<Utc>) -> Result<(), EngineError> {
        self.flush_rows();
        self.set_run(RunState::RollingBack, Some(reason.clone()), false)?;
        for i in 0..self.slots.len() {
            if self.slots[i].state == PhaseState::Pending {
                self.advance(i, PhaseState::Skipped)?;
                self.push_row(i, None, None, now);
                self.out.push(Action::Notify(Event::PhaseSkipped {
                    phase: self.dag.ids[i].clone(),
                }));
            }
        }
        self.flush_rows();
        // Reverse topological order, kept as a stack: the next to compensate is last.
        let queue = self.dag.topo.clone();
        self.mode = Mode::RollingBack {
            reason,
            queue,
            current: None,
            delays: None,
            left: Vec::new(),
        };
        Ok(())
    }

    /// Starts the next compensation, or ends the rollback when none is left.
    fn next_compensation(&mut self) -> Result<(), EngineError> {
        loop {
            let Mode::RollingBack { queue, .. } = &mut self.mode else {
                return Ok(());
            };
            let Some(i) = queue.pop() else {
                let Mode::RollingBack { reason, left, .. } =
                    std::mem::replace(&mut self.mode, Mode::Forward)
                else {
                    unreachable!("checked above");
                };
                return if left.is_empty() {
                    self.end(RunState::RolledBack, Some(reason))
                } else {
                    let error = format!("{reason}{LEFT_BEHIND}{}", left.join(", "));
                    self.end(RunState::RollbackFailed, Some(error))
                };
            };
            let needs = match self.slots[i].state {
                PhaseState::Succeeded
                | PhaseState::Compensating
                | PhaseState::CompensationFailed => (self.compensable)(i, &self.outputs, false),
                // Its attempt may have done part of its work.
                PhaseState::Failed => (self.compensable)(i, &self.outputs, true),
                _ => false,
            };
            if !needs {
                continue;
            }
            self.advance(i, PhaseState::Compensating)?;
            self.out.push(Action::SetPhase {
                phase: i,
                state: PhaseState::Compensating,
                error: None,
            });
            self.out.push(Action::Notify(Event::Compensating {
                phase: self.dag.ids[i].clone(),
            }));
            self.out.push(Action::Compensate { phase: i });
            let policy_delays = Box::new(self.retry[i].compensation_delays());
            if let Mode::RollingBack {
                current, delays, ..
            } = &mut self.mode
            {
                *current = Some(i);
                *delays = Some(policy_delays);
            }
            return Ok(());
        }
    }

    fn on_compensated(
        &mut self,
        i: usize,
        result: Result<(), PhaseError>,
        elapsed: Duration,
    ) -> Result<(), EngineError> {
        let Mode::RollingBack {
            current, delays, ..
        } = &mut self.mode
        else {
            return Ok(());
        };
        if *current != Some(i) {
            return Ok(());
        }
        // A retryable failure is tried again after the policy's next delay (never sooner than
        // a server's Retry-After), the phase staying `compensating`.
        if let Err(e) = &result
            && e.is_retryable()
            && let Some(delay) = delays.as_mut().and_then(|d| d.next())
        {
            let delay = delay.max(e.retry_after().unwrap_or_default());
            tracing::warn!(phase = %self.dag.ids[i], error = %e, ?delay, "compensation failed; trying again");
            self.out.push(Action::RetryAfter { phase: i, delay });
            return Ok(());
        }
        *current = None;
        let id = self.dag.ids[i].clone();
        match result {
            Ok(()) => {
                self.advance(i, PhaseState::Compensated)?;
                self.out.push(Action::SetPhase {
                    phase: i,
                    state: PhaseState::Compensated,
                    error: None,
                });
                self.out
                    .push(Action::Notify(Event::Compensated { phase: id, elapsed }));
            }
            Err(e) => {
                let error = e.to_string();
                self.advance(i, PhaseState::CompensationFailed)?;
                self.out.push(Action::SetPhase {
                    phase: i,
                    state: PhaseState::CompensationFailed,
                    error: Some(error.clone()),
                });
                self.out.push(Action::Notify(Event::CompensationFailed {
                    phase: id.clone(),
                    error: error.clone(),
                }));
                if let Mode::RollingBack { left, .. } = &mut self.mode {
                    left.push(format!("{id} ({error})"));
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, state: RunState, error: Option<String>) -> Result<(), EngineError> {
        self.flush_rows();
        self.set_run(state, error.clone(), true)?;
        self.out.push(Action::Notify(Event::RunFinished {
            state,
            error: error.clone(),
        }));
        self.out.push(Action::Done { state, error });
        self.mode = Mode::Done;
        Ok(())
    }

    /// Moves the run to `next`, refusing a transition its state machine does not allow.
    fn set_run(
        &mut self,
        next: RunState,
        error: Option<String>,
        finished: bool,
    ) -> Result<(), EngineError> {
        if !self.run_state.can_become(next) {
            return Err(EngineError::IllegalTransition {
                what: format!("run {}", self.run_id),
                from: self.run_state.to_string(),
                to: next.to_string(),
            });
        }
        self.run_state = next;
        self.out.push(Action::SetRun {
            state: next,
            error,
            finished,
        });
        Ok(())
    }

    /// Moves phase `i` to `next`, refusing a transition the state machine does not allow.
    fn advance(&mut self, i: usize, next: PhaseState) -> Result<(), EngineError> {
        let from = self.slots[i].state;
        if !from.can_become(next) {
            return Err(EngineError::IllegalTransition {
                what: format!("phase `{}` of run {}", self.dag.ids[i], self.run_id),
                from: from.to_string(),
                to: next.to_string(),
            });
        }
        self.slots[i].state = next;
        Ok(())
    }

    /// Queues the checkpoint row of phase `i` in its current state.
    fn push_row(
        &mut self,
        i: usize,
        output: Option<Value>,
        error: Option<String>,
        now: DateTime<Utc>,
    ) {
        let slot = &self.slots[i];
        let finished = !matches!(
            slot.state,
            PhaseState::Running | PhaseState::Pending | PhaseState::Skipped
        );
        self.rows.push(PhaseRow {
            phase_id: self.dag.ids[i].clone(),
            state: slot.state,
            attempt: slot.attempt,
            started_at: slot.started_at,
            finished_at: finished.then_some(now),
            output,
            error,
        });
    }

    /// Turns queued rows into checkpoint writes: one per batch, split only where a phase would
    /// appear twice.
    fn flush_rows(&mut self) {
        while !self.rows.is_empty() {
            let mut seen = HashSet::new();
            let split = self
                .rows
                .iter()
                .position(|r| !seen.insert(r.phase_id.clone()))
                .unwrap_or(self.rows.len());
            let batch: Vec<PhaseRow> = self.rows.drain(..split).collect();
            self.out.push(Action::Checkpoint(batch));
        }
    }
}
