//! A login probe: while something changes the federation (a secret rotation), background
//! workers log in without pause — brokered logins across the links and direct logins at the
//! instances — and count attempts and failures. A change that breaks logins even for a moment
//! shows up as a failure; how long logins kept failing measures a restart's downtime. Used by
//! `dive bench rotation` and the rotation tests.

use crate::{Endpoint, brokered_login};
use dive_secrets::SecretStore;
use dive_tls::Trust;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a probe login's password comes from.
#[derive(Clone)]
pub enum Password {
    /// This value, always.
    Fixed(String),
    /// The latest version of this secret, read at each attempt (what the store holds then),
    /// on the runtime the store's connections belong to: the probe's workers run their own.
    Stored {
        store: Arc<SecretStore>,
        name: String,
        runtime: tokio::runtime::Handle,
    },
}

impl Password {
    /// [`Password::Stored`] for a store of the current runtime.
    pub fn stored(store: Arc<SecretStore>, name: String) -> Password {
        Password::Stored {
            store,
            name,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    async fn get(&self) -> Result<String, String> {
        match self {
            Password::Fixed(p) => Ok(p.clone()),
            Password::Stored {
                store,
                name,
                runtime,
            } => {
                let (store, name) = (store.clone(), name.clone());
                let read = runtime.spawn(async move {
                    match store.get(&name).await {
                        Ok(Some((s, _))) => Ok(s.expose().to_string()),
                        Ok(None) => Err(format!("secret `{name}` is not in the store")),
                        Err(e) => Err(e.to_string()),
                    }
                });
                read.await
                    .map_err(|e| format!("reading the secret store: {e}"))?
            }
        }
    }
}

/// One login the probe repeats.
#[derive(Clone)]
pub enum Login {
    /// A user of `home` logs in at `target` through `target`'s provider `<home>-idp`.
    Brokered {
        home: Endpoint,
        target: Endpoint,
        user: String,
        password: Password,
    },
    /// A user of `at` logs in at its own realm (password grant on `dive-verify`).
    Direct {
        at: Endpoint,
        user: String,
        password: Password,
    },
}

impl Login {
    /// The instance whose user logs in.
    pub fn home(&self) -> &Endpoint {
        match self {
            Login::Brokered { home, .. } => home,
            Login::Direct { at, .. } => at,
        }
    }

    /// `X→P` or `direct X`.
    pub fn name(&self) -> String {
        match self {
            Login::Brokered { home, target, .. } => format!("{}→{}", home.code, target.code),
            Login::Direct { at, .. } => format!("direct {}", at.code),
        }
    }

    async fn attempt(&self, trust: &Trust) -> Result<(), String> {
        match self {
            Login::Brokered {
                home,
                target,
                user,
                password,
            } => brokered_login(trust, home, target, user, &password.get().await?)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Login::Direct { at, user, password } => dive_keycloak::login_claims(
                trust,
                &at.url,
                &at.realm(),
                crate::CLIENT_ID,
                user,
                &password.get().await?,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ProbeReport {
    pub attempts: u64,
    pub failures: u64,
    /// The first failures (login, error, and when after the probe started).
    pub failed: Vec<String>,
    pub worst: Duration,
    /// From the start of the first failed login to the end of the last one: how long logins
    /// were failing (a restart's downtime).
    pub failing_for: Option<Duration>,
    first_failure: Option<Instant>,
}

impl ProbeReport {
    /// `{attempts, failures, worst_ms, failing_for_ms, failed}` for JSON output.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "attempts": self.attempts,
            "failures": self.failures,
            "worst_ms": self.worst.as_millis() as u64,
            "failing_for_ms": self.failing_for.map(|d| d.as_millis() as u64),
            "failed": self.failed,
        })
    }
}

/// Workers logging in until [`Probe::stop`].
pub struct Probe {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<ProbeReport>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts `workers` workers, each going through `logins` in turn, from a different start;
    /// they trust the dive CA (`trust`) only.
    pub fn start(trust: &Trust, logins: Vec<Login>, workers: usize) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ProbeReport::default()));
        let begun = Instant::now();
        let threads = (0..workers)
            .map(|w| {
                let (stop, report, logins) = (stop.clone(), report.clone(), logins.clone());
                let trust = trust.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("probe runtime");
                    rt.block_on(async {
                        let mut i = w;
                        while !stop.load(Ordering::Relaxed) {
                            let login = &logins[i % logins.len()];
                            i += 1;
                            let started = Instant::now();
                            let result = login.attempt(&trust).await;
                            let took = started.elapsed();
                            let failed = {
                                let mut r = report.lock().unwrap();
                                r.attempts += 1;
                                r.worst = r.worst.max(took);
                                if let Err(e) = &result {
                                    let first = *r.first_failure.get_or_insert(started);
                                    r.failing_for = Some(Instant::now() - first);
                                    r.failures += 1;
                                    if r.failed.len() < 10 {
                                        let at = (started - begun).as_secs_f64();
                                        r.failed
                                            .push(format!("{}: {e} (at +{at:.1}s)", login.name()));
                                    }
                                }
                                result.is_err()
                            };
                            if failed {
                                // A refused connection answers at once: do not spin.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    });
                })
            })
            .collect();
        Probe {
            stop,
            report,
            threads,
        }
    }

    /// What the probe counted so far.
    pub fn snapshot(&self) -> ProbeReport {
        self.report.lock().unwrap().clone()
    }

    /// Waits until the probe made `attempts` logins in all (at most `limit`).
    pub fn wait_for(&self, attempts: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.snapshot().attempts < attempts && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the workers (each finishes its login) and returns the counts.
    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("probe worker panicked");
        }
        self.report.lock().unwrap().clone()
    }
}
