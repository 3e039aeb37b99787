//! Writes of unknown outcome. An admin write that got no answer (a timeout, a reset after the
//! request went out) may still be applied: a request queued in a frozen Keycloak (a paused
//! container, a SIGSTOPped process) is read and applied when the server thaws — possibly after
//! a later, fresh request has been answered. Code that decides from what it reads (a retry that
//! looks before it creates, a compensation that deletes what its run created) would then act on
//! a state that is about to change, and for example leave behind a client created after its
//! rollback looked for it.
//!
//! So such a write is recorded here, per server, and the next [`KeycloakAdmin`] logged in to that
//! server waits [`SETTLE`] after the server answered it before anyone uses it. Process-wide: the
//! request is out there whichever client sent it.
//!
//! [`KeycloakAdmin`]: crate::KeycloakAdmin

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a server that answers again is given to apply what was queued while it was not
/// answering. A thawed Keycloak reads its queued requests at once and applies them in well
/// under a second (seen in chaos runs); five seconds leaves room for a slow database.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);

/// Server base URL → when its latest unsettled write was recorded.
static UNSETTLED: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Records that a write to `base` may or may not have been applied.
pub(crate) fn record(base: &str) {
    UNSETTLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(base.to_string(), Instant::now());
}

/// Whether `base` has a write of unknown outcome that no one has waited out yet.
#[cfg(test)]
fn pending(base: &str) -> bool {
    UNSETTLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(base)
}

/// Called once `base` has answered: when a write to it is unsettled, waits [`SETTLE`] and then
/// forgets that write (unless another was recorded meanwhile, which the next caller waits out).
/// Returns how long it waited.
pub(crate) async fn wait(base: &str) -> Duration {
    let Some(since) = UNSETTLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(base)
        .copied()
    else {
        return Duration::ZERO;
    };
    tracing::info!(keycloak = %base, wait = ?SETTLE,
        "an earlier admin write got no answer; giving the server time to apply it before reading");
    tokio::time::sleep(SETTLE).await;
    let mut unsettled = UNSETTLED.lock().unwrap_or_else(|e| e.into_inner());
    if unsettled.get(base) == Some(&since) {
        unsettled.remove(base);
    }
    SETTLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unsettled_write_is_waited_out_once() {
        let base = "http://settle.test:1";
        assert_eq!(wait(base).await, Duration::ZERO, "nothing to wait for");
        record(base);
        record(base);
        assert!(pending(base));
        assert!(!pending("http://settle.test:2"), "per server");
        let started = tokio::time::Instant::now();
        assert_eq!(wait(base).await, SETTLE);
        assert!(started.elapsed() >= SETTLE);
        assert!(!pending(base));
        assert_eq!(wait(base).await, Duration::ZERO, "settled");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_recorded_while_waiting_is_kept_for_the_next_caller() {
        let base = "http://settle.test:3";
        record(base);
        let waiting = tokio::spawn(async move { wait(base).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        record(base);
        assert_eq!(waiting.await.unwrap(), SETTLE);
        assert!(pending(base), "the newer write is not waited out yet");
        assert_eq!(wait(base).await, SETTLE);
        assert!(!pending(base));
    }
}
