//! Run and phase state machines. The same transitions are enforced by triggers in
//! `migrations/engine/` (runs: 0001; phases: 0013), so a bug in either place is caught by the other
//! (`engine/tests/schema.rs` compares the two, pair by pair).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(
    /// State of a run.
    RunState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        RollingBack => "rolling_back",
        RolledBack => "rolled_back",
        RollbackFailed => "rollback_failed",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// State of one phase within a run (its latest checkpoint).
    PhaseState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
        Compensating => "compensating",
        Compensated => "compensated",
        CompensationFailed => "compensation_failed",
    }
);

impl RunState {
    /// Whether the state machine allows `self -> next` (re-writing the same state is allowed so
    /// that a checkpoint write retried after a lost acknowledgement is harmless).
    pub fn can_become(self, next: RunState) -> bool {
        use RunState::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Running)
                    | (Running, Succeeded | Failed | RollingBack | Cancelled)
                    | (Failed | Cancelled, Running | RollingBack)
                    | (RollingBack, RolledBack | RollbackFailed | Cancelled)
                    | (RollbackFailed, RollingBack)
            )
    }

    /// A run in one of these states can be continued by `dive resume`.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            RunState::Running
                | RunState::Failed
                | RunState::Cancelled
                | RunState::RollingBack
                | RunState::RollbackFailed
        )
    }

    /// States in which a live process should hold the run's lock.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Running | RunState::RollingBack)
    }
}

impl PhaseState {
    /// Whether the state machine allows `self -> next` (same-state re-writes allowed, see
    /// [`RunState::can_become`]).
    pub fn can_become(self, next: PhaseState) -> bool {
        use PhaseState::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Running | Skipped)
                    | (Running, Succeeded | Failed)
                    | (Failed | Skipped, Running)
                    | (Succeeded | Failed, Compensating)
                    | (Compensating, Compensated | CompensationFailed)
                    | (CompensationFailed, Compensating)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_run_states_do_not_restart() {
        assert!(!RunState::Succeeded.can_become(RunState::Running));
        assert!(!RunState::RolledBack.can_become(RunState::Running));
        assert!(RunState::Failed.can_become(RunState::Running));
    }

    #[test]
    fn a_phase_must_run_before_it_succeeds() {
        assert!(!PhaseState::Pending.can_become(PhaseState::Succeeded));
        assert!(PhaseState::Running.can_become(PhaseState::Succeeded));
        // A failed phase may be compensated (its attempt may have done part of its work); one
        // that never ran may not.
        assert!(PhaseState::Failed.can_become(PhaseState::Compensating));
        assert!(!PhaseState::Skipped.can_become(PhaseState::Compensating));
        assert!(!PhaseState::Pending.can_become(PhaseState::Compensating));
    }

    #[test]
    fn names_round_trip() {
        for s in ["compensation_failed", "rolling_back"] {
            let parsed = s.parse::<PhaseState>().map(|p| p.to_string());
            let run = s.parse::<RunState>().map(|r| r.to_string());
            assert!(parsed.as_deref() == Ok(s) || run.as_deref() == Ok(s));
        }
    }
}
