//! A plan is a workflow resolved with concrete parameters: what a run stores and what resume
//! executes, so a run never depends on its file staying the same.

use crate::interpolate::{self, Reference};
use crate::phase::Phase;
use petgraph::algo::toposort;
use petgraph::graph::DiGraph;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// How often and how patiently a phase is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub multiplier: f32,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// How long a compensation keeps trying a retryable failure. A rollback is worth waiting for —
/// a partner that is away for a moment comes back, and giving up leaves a run half undone —
/// so after the policy's own delays a compensation goes on trying at the policy's longest delay
/// (at least a second) until it has waited this long. A policy of one attempt means no retry,
/// for compensations too.
pub const COMPENSATION_PATIENCE: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// The delays between tries of a compensation: the policy's, then more up to
    /// [`COMPENSATION_PATIENCE`] — unless the policy allows no retry at all (`max_attempts: 1`).
    pub fn compensation_delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let policy: Vec<Duration> = self.delays().collect();
        let spent: Duration = policy.iter().sum();
        let tail = self.max_delay.max(Duration::from_secs(1));
        let more = if self.max_attempts <= 1 {
            0
        } else {
            COMPENSATION_PATIENCE
                .saturating_sub(spent)
                .as_secs_f64()
                .div_euclid(tail.as_secs_f64()) as usize
        };
        policy.into_iter().chain(std::iter::repeat_n(tail, more))
    }

    /// The delays between attempts, as backon computes them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        use backon::BackoffBuilder;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.multiplier)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

/// One phase of a plan: parameters substituted, output references still to resolve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedPhase {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub after: Vec<String>,
    pub retry: RetryPolicy,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// The phase type's own fields, with `type`, as typetag reads them.
    pub spec: Value,
}

impl PlannedPhase {
    /// The typed phase, with output references resolved from `outputs` (ancestors' outputs).
    pub fn instantiate(&self, outputs: &HashMap<String, Value>) -> Result<Box<dyn Phase>, String> {
        let spec = interpolate::substitute_all(&self.spec, &mut |r| match r {
            Reference::Output { phase, path } => {
                let output = outputs
                    .get(phase)
                    .ok_or_else(|| format!("output of phase `{phase}` is not available"))?;
                interpolate::lookup(output, path)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        format!(
                            "output of phase `{phase}` has no field `{}`",
                            path.join(".")
                        )
                    })
            }
            Reference::Param(_) => Ok(None),
        })?;
        typed(&spec)
    }
}

/// Deserialises a phase spec into its registered type.
pub(crate) fn typed(spec: &Value) -> Result<Box<dyn Phase>, String> {
    serde_json::from_value::<Box<dyn Phase>>(spec.clone()).map_err(|e| e.to_string())
}

/// A resolved workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub workflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the workflow came from (a path, or `builtin:NAME`).
    pub source: String,
    /// The run's advisory lock keys, sorted and without duplicates. Plans stored before a run
    /// could hold several keys have a single `lock_key` string; it reads as a one-key list.
    #[serde(alias = "lock_key", deserialize_with = "one_or_many")]
    pub lock_keys: Vec<String>,
    pub params: BTreeMap<String, String>,
    /// Settings of the caller that a resume must reuse (e.g. the runtime); opaque to the engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
    pub phases: Vec<PlannedPhase>,
}

/// A lock key list from a list of strings or (as older plans store it) a single string; the
/// result is sorted and deduplicated.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(key) => vec![key],
        OneOrMany::Many(keys) => normalise_lock_keys(keys),
    })
}

/// Sorts and deduplicates lock keys: the order every run takes them in, so two runs wanting
/// overlapping sets cannot each hold a key the other waits for.
pub fn normalise_lock_keys(keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = keys.into_iter().collect();
    set.into_iter().collect()
}

impl Plan {
    pub fn dag(&self) -> Dag {
        Dag::new(
            self.phases
                .iter()
                .map(|p| (p.id.as_str(), p.after.as_slice())),
        )
        .expect("a plan is validated before it is built")
    }

    pub fn phase(&self, id: &str) -> Option<&PlannedPhase> {
        self.phases.iter().find(|p| p.id == id)
    }
}

/// The dependency graph of a plan, by phase index.
#[derive(Debug, Clone)]
pub struct Dag {
    pub ids: Vec<String>,
    pub deps: Vec<Vec<usize>>,
    pub dependents: Vec<Vec<usize>>,
    /// Indices in an order where every phase comes after its dependencies.
    pub topo: Vec<usize>,
}

/// What is wrong with a dependency graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    DuplicateId(String),
    MissingDependency { phase: String, missing: String },
    Cycle { phase: String },
}

impl Dag {
    pub fn new<'a>(
        phases: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<Dag, DagError> {
        let phases: Vec<_> = phases.into_iter().collect();
        let mut index = HashMap::new();
        for (i, (id, _)) in phases.iter().enumerate() {
            if index.insert(*id, i).is_some() {
                return Err(DagError::DuplicateId(id.to_string()));
            }
        }
        let mut graph = DiGraph::<usize, ()>::with_capacity(phases.len(), phases.len());
        let nodes: Vec<_> = (0..phases.len()).map(|i| graph.add_node(i)).collect();
        let mut deps = vec![Vec::new(); phases.len()];
        let mut dependents = vec![Vec::new(); phases.len()];
        for (i, (id, after)) in phases.iter().enumerate() {
            for dep in after.iter() {
                let j = *index
                    .get(dep.as_str())
                    .ok_or_else(|| DagError::MissingDependency {
                        phase: id.to_string(),
                        missing: dep.clone(),
                    })?;
                if !deps[i].contains(&j) {
                    deps[i].push(j);
                    dependents[j].push(i);
                    graph.add_edge(nodes[j], nodes[i], ());
                }
            }
        }
        let topo = toposort(&graph, None)
            .map_err(|c| DagError::Cycle {
                phase: phases[graph[c.node_id()]].0.to_string(),
            })?
            .into_iter()
            .map(|n| graph[n])
            .collect();
        Ok(Dag {
            ids: phases.iter().map(|(id, _)| id.to_string()).collect(),
            deps,
            dependents,
            topo,
        })
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    /// All transitive dependencies of phase `i`.
    pub fn ancestors(&self, i: usize) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack = self.deps[i].clone();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                stack.extend(&self.deps[j]);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(edges: &[(&str, &[&str])]) -> Result<Dag, DagError> {
        let owned: Vec<(String, Vec<String>)> = edges
            .iter()
            .map(|(id, after)| {
                (
                    id.to_string(),
                    after.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        Dag::new(owned.iter().map(|(id, a)| (id.as_str(), a.as_slice())))
    }

    #[test]
    fn cycles_and_missing_dependencies_are_found() {
        assert!(matches!(
            dag(&[("a", &["b"]), ("b", &["a"])]),
            Err(DagError::Cycle { .. })
        ));
        assert_eq!(
            dag(&[("a", &["zz"])]).unwrap_err(),
            DagError::MissingDependency {
                phase: "a".into(),
                missing: "zz".into()
            }
        );
    }

    #[test]
    fn ancestors_are_transitive() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]).unwrap();
        assert_eq!(d.ancestors(2), HashSet::from([0, 1]));
        assert!(d.ancestors(3).is_empty());
    }

    fn stored_plan(lock: Value) -> Value {
        serde_json::json!({
            "workflow": "w",
            "source": "w.yaml",
            "lock_key": lock,
            "params": {},
            "phases": [],
        })
    }

    #[test]
    fn a_plan_stored_with_one_lock_key_still_loads() {
        let plan: Plan = serde_json::from_value(stored_plan("instance:FRA".into())).unwrap();
        assert_eq!(plan.lock_keys, ["instance:FRA"]);
        // Written back, it uses the new field.
        let v = serde_json::to_value(&plan).unwrap();
        assert_eq!(v["lock_keys"], serde_json::json!(["instance:FRA"]));
        assert!(v.get("lock_key").is_none());
    }

    #[test]
    fn lock_keys_load_sorted_and_deduplicated() {
        let mut v = stored_plan(Value::Null);
        v.as_object_mut().unwrap().remove("lock_key");
        v["lock_keys"] = serde_json::json!(["b", "a", "b"]);
        let plan: Plan = serde_json::from_value(v).unwrap();
        assert_eq!(plan.lock_keys, ["a", "b"]);
    }

    #[test]
    fn retry_delays_follow_the_policy() {
        let p = RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            multiplier: 2.0,
            jitter: false,
        };
        let delays: Vec<_> = p.delays().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 250]);
    }
}
