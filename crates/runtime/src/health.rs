//! Readiness checks shared by both runtimes: HTTP and TCP probes against 127.0.0.1, and the
//! wait loop that polls a check until it passes or the readiness timeout runs out.

use crate::RuntimeError;
use dive_tls::Trust;
use std::future::Future;
use std::time::{Duration, Instant};

/// One GET of `https://127.0.0.1:<port><path>`, the certificate checked against `tls` (plain
/// `http://` without it); Ok when the answer is 2xx.
pub async fn http_ok(port: u16, path: &str, tls: Option<&Trust>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    url_ok(&format!("{scheme}://127.0.0.1:{port}{path}"), tls).await
}

/// A service's `Health::Http` check: HTTPS against `trust` when `tls`, which then must be there.
pub async fn http_check(
    port: u16,
    path: &str,
    tls: bool,
    trust: Option<&Trust>,
) -> Result<(), String> {
    match (tls, trust) {
        (false, _) => http_ok(port, path, None).await,
        (true, Some(trust)) => http_ok(port, path, Some(trust)).await,
        (true, None) => {
            Err("an HTTPS health check needs the dive CA, and none was configured".into())
        }
    }
}

/// One GET of `url` (3 s at most), trusting only the dive CA when `tls` is given; Ok when the
/// answer is 2xx.
pub async fn url_ok(url: &str, tls: Option<&Trust>) -> Result<(), String> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(3));
    if let Some(trust) = tls {
        builder = trust.client(builder);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("GET {url} answered {}", r.status())),
        Err(e) => Err(match dive_tls::certificate_problem(&e) {
            Some(problem) => format!("GET {url}: {}: {problem}", dive_tls::CERTIFICATE_REFUSED),
            None => format!("GET {url}: {}", reqwest_reason(&e)),
        }),
    }
}

/// The innermost cause of a request error ("Connection refused"), which reqwest's own message
/// hides behind "error sending request".
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    if e.is_timeout() {
        "timed out".into()
    } else {
        source.to_string()
    }
}

/// One TCP connect.
pub async fn tcp_ok(port: u16) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect 127.0.0.1:{port}: {e}")),
        Err(_) => Err(format!("connect 127.0.0.1:{port}: timed out")),
    }
}

/// Polls `check` until it passes. `alive` is asked between polls so that a service that died
/// fails at once (with its log tail) instead of after the whole timeout.
pub async fn wait_ready<C, CF, A, AF>(
    service: &str,
    timeout: Duration,
    mut check: C,
    mut alive: A,
) -> Result<Duration, RuntimeError>
where
    C: FnMut() -> CF,
    CF: Future<Output = Result<(), String>>,
    A: FnMut() -> AF,
    AF: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let last = match check().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if let Err(why) = alive().await {
            return Err(RuntimeError::Service {
                service: service.to_string(),
                message: format!("stopped while starting: {why}"),
            });
        }
        if start.elapsed() >= timeout {
            return Err(RuntimeError::Service {
                service: service.to_string(),
                message: format!(
                    "not ready after {} (last check: {last})",
                    humantime::format_duration(timeout)
                ),
            });
        }
        tracing::debug!(service, %last, "waiting for readiness");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
