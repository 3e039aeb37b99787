//! A field that may hold a `${phases.ID.output.FIELD}` reference when the workflow is checked
//! and gets its typed value when the phase runs (a port from an earlier phase, say).

use dive_engine::PhaseError;
use serde::{Deserialize, Serialize};
use std::fmt::Display;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Late<T> {
    Now(T),
    /// An output reference, resolved by the engine before the phase runs; any other string is
    /// parsed as `T`.
    Text(String),
}

impl<T: std::str::FromStr + Clone> Late<T>
where
    T::Err: Display,
{
    /// The value, for a phase that is running (references are resolved by then).
    pub fn get(&self, field: &str) -> Result<T, PhaseError> {
        match self {
            Late::Now(v) => Ok(v.clone()),
            Late::Text(s) if s.contains("${") => Err(PhaseError::fatal(format!(
                "{field}: reference `{s}` was not resolved"
            ))),
            Late::Text(s) => s
                .parse()
                .map_err(|e| PhaseError::fatal(format!("{field}: `{s}` is not valid: {e}"))),
        }
    }
}
