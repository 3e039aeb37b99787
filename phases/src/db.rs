//! Errors from PostgreSQL (the state database or an instance's) as phase errors.

use dive_engine::PhaseError;

/// `what: error` as a phase error, retryable when [`dive_error::is_transient_sqlx`].
pub fn phase_error(e: &sqlx::Error, what: &str) -> PhaseError {
    let msg = format!("{what}: {e}");
    if dive_error::is_transient_sqlx(e) {
        PhaseError::retryable(msg)
    } else {
        PhaseError::fatal(msg)
    }
}
