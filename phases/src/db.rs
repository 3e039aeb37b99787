//! Errors from PostgreSQL (the state database or an instance's) as phase errors.

use dive_engine::PhaseError;

/// `what: error` for a query on an instance's PostgreSQL, retryable when
/// [`dive_error::is_transient_sqlx`].
pub fn phase_error(e: &sqlx::Error, what: &str) -> PhaseError {
    let msg = format!("{what}: {e}");
    if dive_error::is_transient_sqlx(e) {
        PhaseError::retryable(msg)
    } else {
        PhaseError::fatal(msg)
    }
}

/// `what: error` for a query on dive's state database: while it cannot serve, the phase waits
/// for it without spending attempts ([`PhaseError::state_db_unavailable`]).
pub fn state_db_error(e: &sqlx::Error, what: &str) -> PhaseError {
    if dive_error::is_db_unavailable(e) {
        PhaseError::state_db_unavailable(format!("{what}: {e}"))
    } else {
        phase_error(e, what)
    }
}
