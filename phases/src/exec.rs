//! `exec`: runs a command (no shell unless you name one). Output `{stdout, exit_code}`.
//! A non-zero exit is a retryable failure. Idempotency is the command's own: write commands
//! that check before they change. `compensate`, when given, is run on rollback with the
//! phase's stdout in `DIVE_PHASE_STDOUT`. The command's whole process group is killed when the
//! phase is cancelled or times out, so nothing it started lingers.

use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Stdio;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub compensate: Option<Vec<String>>,
}

/// Kills the process group if the phase future is dropped before the command ends.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the group we created; no memory involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// Last `max` characters of `text`, on a char boundary.
fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

async fn run_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    ctx: &PhaseContext,
) -> Result<(String, i32), PhaseError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| PhaseError::fatal("command is empty"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env)
        .env("DIVE_RUN_ID", ctx.run_id.to_string())
        .env("DIVE_PHASE_ID", &ctx.phase_id)
        .env("DIVE_ATTEMPT", ctx.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| PhaseError::fatal(format!("cannot start `{program}`: {e}")))?;
    let mut guard = GroupGuard(child.id().map(|p| p as i32));
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| PhaseError::retryable(format!("waiting for `{program}`: {e}")))?;
    guard.0 = None;
    let stdout = String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string();
    let code = out.status.code().unwrap_or(-1);
    if out.status.success() {
        Ok((stdout, code))
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(PhaseError::retryable(format!(
            "`{program}` exited with {}{}",
            out.status,
            match tail(stderr.trim(), 400) {
                "" => String::new(),
                t => format!(": {t}"),
            }
        )))
    }
}

#[typetag::serde(name = "exec")]
#[async_trait]
impl Phase for Exec {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let (stdout, exit_code) = run_command(&self.command, &self.env, ctx).await?;
        Ok(json!({ "stdout": stdout, "exit_code": exit_code }))
    }

    /// A command's effects cannot be known without running it: it is listed as one that would
    /// run, its output known after apply.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        Ok(PhasePlan::changes(
            vec![
                Change::new(
                    None,
                    format!("command {}", self.command.join(" ")),
                    Action::Run,
                )
                .because(format!("phase {} runs it", ctx.phase_id)),
            ],
            Value::Null,
        ))
    }

    fn has_compensation(&self) -> bool {
        self.compensate.is_some()
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let Some(argv) = &self.compensate else {
            return Ok(());
        };
        let mut env = self.env.clone();
        if let Some(stdout) = output.get("stdout").and_then(Value::as_str) {
            env.insert("DIVE_PHASE_STDOUT".into(), stdout.to_string());
        }
        run_command(argv, &env, ctx).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("ab", 10), "ab");
    }
}
