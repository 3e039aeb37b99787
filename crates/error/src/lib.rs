//! dive-error: one classification of failures shared by every crate. A domain crate's error type
//! says whether a retry can help (and, when a server said so, after how long); the engine turns
//! any such error into a phase error that keeps the whole cause chain. Domain crates depend on
//! this crate, not on the engine, so they stay usable without it.

use std::error::Error;
use std::time::Duration;

/// What a caller needs to know about a failure to decide what to do next.
pub trait Classify: Error + Send + Sync + 'static {
    /// Whether trying again later can help (a connection broke, a service is still starting, a
    /// server answered 5xx or 429). Bad input, refused credentials and invalid configuration
    /// are not retryable.
    fn is_retryable(&self) -> bool;

    /// How long the other side asked us to wait before trying again (HTTP `Retry-After`), if it
    /// did.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Whether the failure is dive's own state database being unavailable (a secret or a
    /// registry row could not be read), not the phase's target. The engine waits for that
    /// database as long as it takes for its checkpoints, so such a failure neither spends one
    /// of the phase's attempts nor counts against a breaker: a one-attempt login check must not
    /// fail because the state database restarted.
    fn is_state_db_unavailable(&self) -> bool {
        false
    }
}

/// The error's message followed by each cause that adds something to it, joined by `: ` —
/// `thiserror` messages often embed their source already, and it is not repeated.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Whether a PostgreSQL error is worth retrying: the database is unavailable for now
/// ([`is_db_unavailable`]) or the transaction was rolled back (class 40: serialisation,
/// deadlock). A refused login or bad SQL is not.
#[cfg(feature = "sqlx")]
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    is_db_unavailable(e)
        || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("40")))
}

/// Whether the database cannot serve for now, and waiting (and reconnecting) helps: no
/// connection, the server shutting down or restarting (SQLSTATE class 08, 57P), read-only
/// (25006: a standby, or a database set read-only), out of resources — connection slots, disk,
/// memory (class 53).
#[cfg(feature = "sqlx")]
pub fn is_db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "25006"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(Inner, bool);
    #[derive(Debug)]
    struct Inner(&'static str);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.1 {
                write!(f, "creating realm: {}", self.0)
            } else {
                write!(f, "creating realm")
            }
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Inner {}

    #[test]
    fn chain_appends_causes_the_message_lacks() {
        assert_eq!(
            chain(&Outer(Inner("connection refused"), false)),
            "creating realm: connection refused"
        );
    }

    #[test]
    fn chain_does_not_repeat_an_embedded_cause() {
        assert_eq!(
            chain(&Outer(Inner("connection refused"), true)),
            "creating realm: connection refused"
        );
    }
}
