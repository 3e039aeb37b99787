//! Errors from PostgreSQL (the state database or an instance's): which are worth retrying.

use dive_engine::PhaseError;

/// Whether trying again later can help: the connection broke or timed out (class 08, I/O, pool
/// timeout), the transaction was rolled back (class 40: serialisation, deadlock), or the server
/// is shutting down or starting (57P). A refused login or bad SQL is not.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("40") || c.starts_with("57P")),
        _ => false,
    }
}

/// `what: error` as a phase error, retryable when [`is_transient`].
pub fn phase_error(e: &sqlx::Error, what: &str) -> PhaseError {
    let msg = format!("{what}: {e}");
    if is_transient(e) {
        PhaseError::retryable(msg)
    } else {
        PhaseError::fatal(msg)
    }
}
