//! toxiproxy (github.com/Shopify/toxiproxy v2.12.0), a TCP proxy whose faults — toxics — are
//! added and removed over its HTTP API. The suite starts a server of its own on 127.0.0.1 and
//! puts a proxy in front of each link it breaks.

use crate::ChaosError;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The group the proxy runs as (`nogroup`): iptables tells its connections apart by it.
pub const PROXY_GID: u32 = 65534;

/// A toxiproxy server of this run's own. Killed on drop.
pub struct Toxiproxy {
    child: Child,
    api: String,
    http: reqwest::blocking::Client,
}

/// A free TCP port on 127.0.0.1 right now.
pub fn free_port() -> Result<u16, ChaosError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ChaosError::Setup(format!("a free port: {e}")))
}

impl Toxiproxy {
    /// Starts `binary` on a free loopback port and waits until its API answers.
    pub fn start(binary: &Path, dir: &Path) -> Result<Toxiproxy, ChaosError> {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("toxiproxy.log"))
            .map_err(|e| ChaosError::Setup(format!("toxiproxy's log: {e}")))?;
        // Group `nogroup` marks the proxy's own connections, so that the routes that send other
        // traffic through it (faults::route) leave them alone.
        let child = Command::new("setpriv")
            .arg(format!("--regid={PROXY_GID}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                ChaosError::Setup(format!(
                    "starting toxiproxy ({}): {e}; scripts/setup builds it",
                    binary.display()
                ))
            })?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ChaosError::Setup(format!("an HTTP client: {e}")))?;
        let proxy = Toxiproxy {
            child,
            api: format!("http://127.0.0.1:{port}"),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy
            .http
            .get(format!("{}/version", proxy.api))
            .send()
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(ChaosError::Setup("toxiproxy's API did not answer".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(), String> {
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .map_err(|e| format!("toxiproxy {path}: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "toxiproxy {path}: {} {}",
                response.status(),
                response.text().unwrap_or_default()
            ))
        }
    }

    /// A proxy named `name` on a free loopback port in front of 127.0.0.1:`upstream` (one made
    /// earlier under that name is replaced); returns the port it listens on.
    pub fn create(&self, name: &str, upstream: u16) -> Result<u16, ChaosError> {
        let _ = self.call(reqwest::Method::DELETE, &format!("/proxies/{name}"), None);
        let listen = free_port()?;
        self.call(
            reqwest::Method::POST,
            "/proxies",
            Some(json!({
                "name": name,
                "listen": format!("127.0.0.1:{listen}"),
                "upstream": format!("127.0.0.1:{upstream}"),
                "enabled": true,
            })),
        )
        .map_err(ChaosError::Setup)?;
        Ok(listen)
    }

    /// Adds toxic `toxic` (`latency`, `timeout`, `reset_peer`, `bandwidth`, `slicer`,
    /// `limit_data`…) with `attributes` to both directions of proxy `proxy`.
    pub fn add(&self, proxy: &str, toxic: &str, attributes: Value) -> Result<(), String> {
        for stream in ["upstream", "downstream"] {
            self.call(
                reqwest::Method::POST,
                &format!("/proxies/{proxy}/toxics"),
                Some(json!({
                    "name": format!("{toxic}-{stream}"),
                    "type": toxic,
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": attributes,
                })),
            )?;
        }
        Ok(())
    }

    /// Enables or disables proxy `proxy`: disabled, it closes every connection and refuses new
    /// ones (a partition).
    pub fn set_enabled(&self, proxy: &str, enabled: bool) -> Result<(), String> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}"),
            Some(json!({ "enabled": enabled })),
        )
    }

    /// Removes every toxic and enables every proxy.
    pub fn reset(&self) -> Result<(), String> {
        self.call(reqwest::Method::POST, "/reset", None)
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
