//! The live per-phase view on stderr: spinners on a terminal, plain timestamped lines otherwise
//! (CI logs, pipes). Driven only by engine events.

use dive_engine::{Event, EventSink};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Starts the view; drop the sink and await the handle to flush it.
pub fn start() -> (EventSink, JoinHandle<()>) {
    if crate::output::json_logs() {
        // The events are logged (as JSON lines); nothing else goes to stderr.
        return (EventSink::none(), tokio::spawn(async {}));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let live = std::io::stderr().is_terminal() && std::env::var_os("DIVE_PLAIN").is_none();
    (EventSink::new(tx), tokio::spawn(render(rx, live)))
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// One line describing an event, or None for events the view shows otherwise.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted {
            run_id,
            workflow,
            phases,
            resumed,
        } => format!(
            "{} run {run_id} of `{workflow}` ({} phases)",
            if *resumed { "resuming" } else { "starting" },
            phases.len()
        ),
        Event::PhaseReused { phase } => format!("{phase}: succeeded earlier, output reused"),
        Event::PhaseStarted { phase, attempt } if *attempt > 1 => {
            format!("{phase}: running (attempt {attempt})")
        }
        Event::PhaseStarted { phase, .. } => format!("{phase}: running"),
        Event::PhaseNote { phase, message } => format!("{phase}: {message}"),
        Event::PhaseSucceeded { phase, elapsed, .. } => {
            format!("{phase}: succeeded in {}", secs(*elapsed))
        }
        Event::PhaseFailed {
            phase,
            attempt,
            error,
            retry_in: Some(d),
        } => format!(
            "{phase}: attempt {attempt} failed: {error} — retrying in {}",
            secs(*d)
        ),
        Event::PhaseFailed {
            phase,
            attempt,
            error,
            retry_in: None,
        } => format!("{phase}: failed (attempt {attempt}): {error}"),
        Event::PhaseSkipped { phase } => format!("{phase}: skipped"),
        Event::Compensating { phase } => format!("{phase}: compensating"),
        Event::Compensated { phase, elapsed } => {
            format!("{phase}: compensated in {}", secs(*elapsed))
        }
        Event::CompensationFailed { phase, error } => {
            format!("{phase}: compensation failed: {error}")
        }
        Event::Breaker { key, transition } => format!("circuit breaker {key}: {transition}"),
        Event::DatabaseUnavailable {
            attempt,
            error,
            retry_in,
        } => format!(
            "state database unavailable ({error}); checkpoints wait — retry {attempt} in {}",
            secs(*retry_in)
        ),
        Event::DatabaseRestored => "state database reachable again; continuing".into(),
        Event::Cancelling => "cancelling: no new phases start; running ones are stopped".into(),
        Event::RunFinished { state, error } => match error {
            Some(e) => format!("run {state}: {e}"),
            None => format!("run {state}"),
        },
    })
}

async fn render(mut rx: mpsc::UnboundedReceiver<Event>, live: bool) {
    let start = Instant::now();
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
        .expect("static template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(event) = rx.recv().await {
        let Some(line) = describe(&event) else {
            continue;
        };
        if !live {
            eprintln!("[{:>8}] {line}", secs(start.elapsed()));
            continue;
        }
        match &event {
            Event::PhaseStarted { phase, .. } => {
                let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                bar.set_message(line);
                bar.enable_steady_tick(Duration::from_millis(120));
                if let Some(old) = bars.insert(phase.clone(), bar) {
                    old.finish_and_clear();
                }
            }
            Event::PhaseNote { phase, .. } => match bars.get(phase) {
                Some(bar) => bar.set_message(line),
                None => {
                    let _ = multi.println(line);
                }
            },
            Event::PhaseSucceeded { phase, .. } | Event::PhaseFailed { phase, .. } => {
                let mark = if matches!(event, Event::PhaseSucceeded { .. }) {
                    "✓"
                } else {
                    "✗"
                };
                match bars.remove(phase) {
                    Some(bar) => bar.finish_with_message(format!("{mark} {line}")),
                    None => {
                        let _ = multi.println(format!("{mark} {line}"));
                    }
                }
            }
            _ => {
                let _ = multi.println(line);
            }
        }
    }
    for bar in bars.into_values() {
        bar.finish_and_clear();
    }
}
