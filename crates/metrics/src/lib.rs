//! The OpenMetrics exposition of dive's state: everything is read from the state database at
//! scrape time (so runs made by any `dive` process count, not only the exporter's own), plus the
//! service health the caller measured. No engine types: the tables are read as data.
//!
//! Naming follows Prometheus conventions: the `dive_` prefix, the unit in the name
//! (`_seconds`), counters ending in `_total`.

mod encode;
mod settled;
mod snapshot;

pub use settled::Settled;
pub use snapshot::{ServiceUp, Snapshot};

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading the state database for metrics: {0}")]
    Database(#[from] sqlx::Error),
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// What a scraper asked for: OpenMetrics (Prometheus asks for it) or, by default, the classic
/// Prometheus text format (`promtool check metrics`, curl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Scrapes one state database. Keeps what no longer changes ([`Settled`]) between scrapes, so
/// keep one exporter for the life of the process.
pub struct Exporter {
    pool: sqlx::PgPool,
    settled: tokio::sync::Mutex<Settled>,
}

impl Exporter {
    pub fn new(pool: sqlx::PgPool) -> Exporter {
        Exporter {
            pool,
            settled: Default::default(),
        }
    }

    /// One scrape: the state database read now, with `services` (the caller's last health
    /// checks). Scrapes take turns (each brings the settled totals forward).
    pub async fn scrape(
        &self,
        services: &[ServiceUp],
        format: Format,
    ) -> Result<String, MetricsError> {
        let mut settled = self.settled.lock().await;
        let snapshot =
            Snapshot::read(&self.pool, chrono::Utc::now(), services, &mut settled).await?;
        drop(settled);
        let text = snapshot.encode()?;
        Ok(match format {
            Format::OpenMetrics => text,
            Format::Text => classic_text(&text),
        })
    }
}

/// OpenMetrics text in the classic Prometheus format: a counter family's name carries its
/// `_total` suffix (as its samples do), and there is no `# EOF`.
fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|l| l.strip_suffix(" counter"))
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_total() {
        let om = "# HELP dive_x Runs.\n# TYPE dive_x counter\ndive_x_total{a=\"b\"} 2\n\
                  # HELP dive_g Up.\n# TYPE dive_g gauge\ndive_g 1.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP dive_x_total Runs.\n# TYPE dive_x_total counter\ndive_x_total{a=\"b\"} 2\n\
             # HELP dive_g Up.\n# TYPE dive_g gauge\ndive_g 1.0\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_others_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}
