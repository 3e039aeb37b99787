//! A login probe for rotation tests: while a rotation runs, background workers log in without
//! pause — a brokered login in each direction of each link and a direct login at each instance —
//! and count attempts and failures. A rotation that breaks logins even for a moment shows up as
//! a failure here.

use dive_verify::{Endpoint, brokered_login};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One login the probe repeats.
#[derive(Clone)]
pub enum Login {
    /// A user of `home` logs in at `target` through `target`'s provider `<home>-idp`.
    Brokered {
        home: Endpoint,
        target: Endpoint,
        user: String,
        password: String,
    },
    /// A user of `at` logs in at its own realm (password grant on `dive-verify`).
    Direct {
        at: Endpoint,
        user: String,
        password: String,
    },
}

impl Login {
    fn name(&self) -> String {
        match self {
            Login::Brokered { home, target, .. } => format!("{}→{}", home.code, target.code),
            Login::Direct { at, .. } => format!("direct {}", at.code),
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        match self {
            Login::Brokered {
                home,
                target,
                user,
                password,
            } => brokered_login(home, target, user, password)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Login::Direct { at, user, password } => {
                dive_keycloak::login_claims(&at.url, &at.realm(), "dive-verify", user, password)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ProbeReport {
    pub attempts: u64,
    pub failures: u64,
    /// The first failures (login and error).
    pub failed: Vec<String>,
    pub worst: Duration,
}

/// Workers logging in until [`Probe::stop`].
pub struct Probe {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<ProbeReport>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts `workers` workers, each going through `logins` in turn, from a different start.
    pub fn start(logins: Vec<Login>, workers: usize) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ProbeReport::default()));
        let threads = (0..workers)
            .map(|w| {
                let (stop, report, logins) = (stop.clone(), report.clone(), logins.clone());
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
                            let result = login.attempt().await;
                            let took = started.elapsed();
                            let mut r = report.lock().unwrap();
                            r.attempts += 1;
                            r.worst = r.worst.max(took);
                            if let Err(e) = result {
                                r.failures += 1;
                                if r.failed.len() < 10 {
                                    r.failed.push(format!("{}: {e}", login.name()));
                                }
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
