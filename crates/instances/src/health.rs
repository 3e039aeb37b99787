//! What an instance's services look like right now: each one's state in its runtime and, when
//! running, whether it answers the way its readiness check expects (PostgreSQL's port accepts
//! a connection, Keycloak's `/health/ready` says UP). Shared by `dive hub|spoke status` and the
//! runtime layer of federation drift detection.

use crate::{InstanceRecord, Ports};
use dive_runtime::health::{http_ok, tcp_ok};
use dive_runtime::{Runtime, ServiceState};
use dive_tls::Trust;
use serde::Serialize;

/// The services every instance runs, in start order.
pub const SERVICES: [&str; 2] = ["postgres", "keycloak"];

#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub name: String,
    /// `running`, `stopped`, `missing`, or `unknown` when the runtime could not say.
    pub state: String,
    /// `healthy`, `unhealthy`, or `unknown` (not running, or the runtime could not say).
    pub health: String,
    /// Why the state or health is what it is, when it is not the good one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ServiceHealth {
    pub fn is_ok(&self) -> bool {
        self.state == "running" && self.health == "healthy"
    }
}

/// Probes a running service the way its readiness check does (Keycloak's over HTTPS, trusting
/// the dive CA).
async fn probe(name: &str, ports: &Ports, trust: &Trust) -> Result<(), String> {
    match name {
        "keycloak" => http_ok(ports.management, "/health/ready", Some(trust)).await,
        _ => tcp_ok(ports.postgres).await,
    }
}

/// The state and health of every service of `rec`; `runtime` is the instance's runtime, or why
/// it could not be reached.
pub async fn service_health(
    runtime: Result<&dyn Runtime, &str>,
    trust: &Trust,
    rec: &InstanceRecord,
) -> Vec<ServiceHealth> {
    let code = rec.code_lower();
    let mut out = Vec::new();
    for name in SERVICES {
        let status = match runtime {
            Ok(rt) => rt.status(&code, name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push(match status {
            Ok(s) => {
                let state = match s.state {
                    ServiceState::Running => "running",
                    ServiceState::Stopped => "stopped",
                    ServiceState::Missing => "missing",
                };
                let (health, error) = match s.state {
                    ServiceState::Running => match probe(name, &rec.ports(), trust).await {
                        Ok(()) => ("healthy", None),
                        Err(e) => ("unhealthy", Some(e)),
                    },
                    _ => ("unknown", None),
                };
                ServiceHealth {
                    name: s.name,
                    state: state.into(),
                    health: health.into(),
                    error,
                }
            }
            Err(e) => ServiceHealth {
                name: name.into(),
                state: "unknown".into(),
                health: "unknown".into(),
                error: Some(e),
            },
        });
    }
    out
}
