//! Workflow files: YAML parsed into typed phases and checked before anything runs.
//! Every problem names the file, the phase and what is wrong.

use crate::interpolate::{self, Reference};
use crate::params;
use crate::plan::{self, Dag, DagError, Plan, PlannedPhase, RetryPolicy, normalise_lock_keys};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9._-]*$").expect("static regex"));
static PARAM_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex"));

/// Keys every phase has; everything else belongs to the phase type.
const COMMON_KEYS: [&str; 6] = ["id", "after", "retry", "timeout", "breaker", "description"];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub phase: Option<String>,
    pub message: String,
}

/// A workflow that cannot be used, with everything wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidWorkflow {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidWorkflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &p.phase {
                Some(id) => write!(f, "{}: phase `{id}`: {}", self.file, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

/// A parameter a workflow accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default, deserialize_with = "scalar_string")]
    pub default: Option<String>,
    #[serde(default, with = "serde_regex_opt")]
    pub pattern: Option<Regex>,
    #[serde(default)]
    pub description: Option<String>,
    /// A registered parameter type that checks and normalises the value.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl ParamSpec {
    /// What is wrong with the declaration itself: an unknown type or a default it refuses.
    fn declaration_problem(&self, name: &str) -> Option<String> {
        if let Some(kind) = &self.kind
            && params::param_type(kind).is_none()
        {
            Some(format!(
                "parameter `{name}`: unknown type `{kind}` (known: {})",
                params::known_types().join(", ")
            ))
        } else if let Some(d) = &self.default {
            self.check(name, d).err().map(|e| format!("default: {e}"))
        } else {
            None
        }
    }

    /// The value as the plan stores it, or what is wrong with it.
    fn check(&self, name: &str, value: &str) -> Result<String, String> {
        let value = match &self.kind {
            Some(kind) => match params::param_type(kind) {
                Some(check) => check(value).map_err(|e| format!("parameter `{name}`: {e}"))?,
                None => return Err(format!("parameter `{name}`: unknown type `{kind}`")),
            },
            None => value.to_string(),
        };
        match &self.pattern {
            Some(p) if !p.is_match(&value) => Err(format!(
                "parameter `{name}`: value `{value}` does not match pattern `{}`",
                p.as_str()
            )),
            _ => Ok(value),
        }
    }
}

mod serde_regex_opt {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                Regex::new(&s).map_err(|e| serde::de::Error::custom(format!("bad pattern: {e}")))
            })
            .transpose()
    }
}

fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
        Some(_) => {
            return Err(serde::de::Error::custom(
                "expected a string, number or boolean",
            ));
        }
    })
}

/// Retry settings as written in a file; missing fields come from the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    initial_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_delay: Option<Duration>,
    multiplier: Option<f32>,
    jitter: Option<bool>,
}

impl RetrySpec {
    fn over(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            initial_delay: self.initial_delay.unwrap_or(base.initial_delay),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.max_attempts == Some(0) {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self
            .multiplier
            .is_some_and(|m| !(m >= 1.0 && m.is_finite()))
        {
            return Err("retry.multiplier must be a number >= 1.0".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    retry: RetrySpec,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Makes this workflow a named variant of another one; see [`Workflow::parse_with`].
    #[serde(default)]
    extends: Option<Value>,
    /// One key or a list of keys; checked by [`lock_templates`].
    #[serde(default)]
    lock: Option<Value>,
    #[serde(default)]
    params: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    defaults: Option<Defaults>,
    #[serde(default)]
    phases: Option<Vec<Value>>,
}

/// `extends:` — the base workflow and the parameters the variant fixes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extends {
    workflow: String,
    #[serde(default, deserialize_with = "scalar_map")]
    params: BTreeMap<String, String>,
}

fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, Value>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok((k, v.to_string())),
            _ => Err(serde::de::Error::custom(format!(
                "params: `{k}`: expected a string, number or boolean"
            ))),
        })
        .collect()
}

/// Finds the base of an `extends`: its source (for messages) and its text, or why there is none.
pub type BaseResolver<'a> = &'a dyn Fn(&str) -> Result<(String, String), String>;

/// A parsed, checked workflow, not yet bound to parameters.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub source: String,
    /// The `lock` keys as written (parameters not yet bound), in file order; the workflow's name
    /// when the file has no `lock`. A plan binds, sorts and deduplicates them.
    pub locks: Vec<String>,
    pub params: BTreeMap<String, ParamSpec>,
    pub phases: Vec<PlannedPhase>,
}

impl Workflow {
    /// Parses and checks a workflow. `source` names the file in messages. A file with `extends`
    /// is refused: there is nothing to resolve its base with (see [`Workflow::parse_with`]).
    pub fn parse(source: &str, text: &str) -> Result<Workflow, InvalidWorkflow> {
        Self::parse_with(source, text, &|name| {
            Err(format!(
                "no workflow `{name}` to extend: bases are resolved only among built-in workflows"
            ))
        })
    }

    /// Parses and checks a workflow whose `extends` (if any) names a base that `resolve` finds.
    ///
    /// A variant has a `name`, optionally a `description`, `extends: {workflow, params}` and
    /// optionally `params`; nothing else. The result is an ordinary workflow: the variant's name,
    /// description (the base's if it has none) and source; the base's phases, lock and defaults
    /// with the fixed parameters (`extends.params`) substituted; the base's parameters minus the
    /// fixed ones, each replaced by the variant's declaration where it has one. One level only:
    /// a base that itself extends something is refused, so there are no chains and no cycles.
    pub fn parse_with(
        source: &str,
        text: &str,
        resolve: BaseResolver<'_>,
    ) -> Result<Workflow, InvalidWorkflow> {
        let fail = |phase: Option<&str>, message: String| InvalidWorkflow {
            file: source.to_string(),
            problems: vec![Problem {
                phase: phase.map(str::to_string),
                message,
            }],
        };
        let raw: Value = serde_yaml_ng::from_str(text).map_err(|e| fail(None, e.to_string()))?;
        let file: WorkflowFile =
            serde_json::from_value(raw).map_err(|e| fail(None, e.to_string()))?;
        if file.extends.is_some() {
            return Self::variant(source, file, resolve);
        }
        let Some(file_phases) = file.phases else {
            return Err(fail(None, "missing field `phases`".into()));
        };
        let file_defaults = file.defaults.unwrap_or_default();
        let mut problems = Vec::new();
        macro_rules! problem {
            ($phase:expr, $message:expr $(,)?) => {
                problems.push(Problem {
                    phase: $phase.map(|p: &str| p.to_string()),
                    message: $message,
                })
            };
        }
        if !NAME.is_match(&file.name) {
            problem!(
                None,
                format!(
                    "name `{}` must be lower case letters, digits, `.`, `_` or `-`",
                    file.name
                ),
            );
        }
        for (name, spec) in &file.params {
            if !PARAM_NAME.is_match(name) {
                problem!(
                    None,
                    format!("parameter name `{name}` is not an identifier")
                );
            }
            if let Some(message) = spec.declaration_problem(name) {
                problem!(None, message);
            }
        }
        if let Err(e) = file_defaults.retry.check() {
            problem!(None, format!("defaults: {e}"));
        }
        let base_retry = file_defaults.retry.over(&RetryPolicy::default());
        let base_timeout = file_defaults.timeout.unwrap_or(DEFAULT_TIMEOUT);

        let mut phases = Vec::new();
        for (n, raw) in file_phases.into_iter().enumerate() {
            match parse_phase(raw, &base_retry, base_timeout) {
                Ok(p) => phases.push(p),
                Err((id, message)) => problem!(
                    Some(id.as_deref().unwrap_or(&format!("#{}", n + 1))),
                    message,
                ),
            }
        }
        if phases.is_empty() && problems.is_empty() {
            problem!(None, "a workflow needs at least one phase".into());
        }

        let locks = match lock_templates(file.lock.as_ref()) {
            Ok(Some(locks)) => locks,
            Ok(None) => vec![file.name.clone()],
            Err(e) => {
                problem!(None, e);
                Vec::new()
            }
        };
        // `within`: the DAG and the phase whose spec `value` is (None: a value outside any
        // phase, where outputs cannot be referenced). Ancestors are computed only for a phase
        // that references an output: most do not, and a long chain has quadratically many.
        let check_refs = |problems: &mut Vec<Problem>,
                          phase: Option<&str>,
                          value: &Value,
                          within: Option<(&Dag, usize)>| {
            let mut ancestors = None;
            let mut problem = |message: String| {
                problems.push(Problem {
                    phase: phase.map(str::to_string),
                    message,
                })
            };
            let refs = match interpolate::references_in(value) {
                Ok(r) => r,
                Err(e) => return problem(e),
            };
            for r in refs {
                match r {
                    Reference::Param(name) if !file.params.contains_key(&name) => problem(format!(
                        "`${{params.{name}}}` refers to an undeclared parameter"
                    )),
                    Reference::Output { phase: dep, .. } => match within {
                        None => {
                            problem(format!("`${{phases.{dep}.output...}}` cannot be used here"))
                        }
                        Some((dag, i)) => {
                            let ancestors = ancestors.get_or_insert_with(|| dag.ancestors(i));
                            if !dag.index(&dep).is_some_and(|j| ancestors.contains(&j)) {
                                problem(format!(
                                    "`${{phases.{dep}.output...}}` refers to `{dep}`, which is not an ancestor of this phase (add it to `after`)"
                                ))
                            }
                        }
                    },
                    _ => {}
                }
            }
        };
        for lock in &locks {
            check_refs(&mut problems, None, &Value::String(lock.clone()), None);
        }
        match Dag::new(phases.iter().map(|p| (p.id.as_str(), p.after.as_slice()))) {
            Ok(dag) => {
                for (i, p) in phases.iter().enumerate() {
                    check_refs(&mut problems, Some(&p.id), &p.spec, Some((&dag, i)));
                }
            }
            Err(DagError::DuplicateId(id)) => {
                problem!(Some(id.as_str()), "phase id is used more than once".into())
            }
            Err(DagError::MissingDependency { phase, missing }) => problem!(
                Some(phase.as_str()),
                format!("`after` names `{missing}`, which is not a phase of this workflow"),
            ),
            Err(DagError::Cycle { phase }) => problem!(
                Some(phase.as_str()),
                "dependency cycle: this phase depends on itself through `after`".into(),
            ),
        }
        if !problems.is_empty() {
            return Err(InvalidWorkflow {
                file: source.to_string(),
                problems,
            });
        }
        let workflow = Workflow {
            name: file.name,
            description: file.description,
            source: source.to_string(),
            locks,
            params: file.params,
            phases,
        };
        workflow.check_default_types()?;
        Ok(workflow)
    }

    /// Type-checks every phase, with default parameter values where there are some.
    fn check_default_types(&self) -> Result<(), InvalidWorkflow> {
        let defaults = self
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.default.clone()?)))
            .collect();
        self.check_types(&defaults)
    }

    /// A file with `extends`, resolved against its base.
    fn variant(
        source: &str,
        file: WorkflowFile,
        resolve: BaseResolver<'_>,
    ) -> Result<Workflow, InvalidWorkflow> {
        let invalid = |messages: Vec<String>| InvalidWorkflow {
            file: source.to_string(),
            problems: messages
                .into_iter()
                .map(|message| Problem {
                    phase: None,
                    message,
                })
                .collect(),
        };
        let extends: Extends =
            serde_json::from_value(file.extends.expect("a variant has `extends`"))
                .map_err(|e| invalid(vec![format!("extends: {e}")]))?;
        let mut problems = Vec::new();
        if !NAME.is_match(&file.name) {
            problems.push(format!(
                "name `{}` must be lower case letters, digits, `.`, `_` or `-`",
                file.name
            ));
        }
        for (field, present) in [
            ("phases", file.phases.is_some()),
            ("lock", file.lock.is_some()),
            ("defaults", file.defaults.is_some()),
        ] {
            if present {
                problems.push(format!(
                    "{field}: a workflow with `extends` takes its {field} from `{}`; leave `{field}` out",
                    extends.workflow
                ));
            }
        }
        if extends.workflow == file.name {
            problems.push(format!(
                "extends.workflow: `{}` cannot extend itself",
                file.name
            ));
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let (base_source, base_text) = resolve(&extends.workflow)
            .map_err(|e| invalid(vec![format!("extends.workflow: {e}")]))?;
        if let Ok(Value::Object(raw)) = serde_yaml_ng::from_str::<Value>(&base_text)
            && let Some(further) = raw.get("extends")
        {
            let further = further
                .get("workflow")
                .and_then(Value::as_str)
                .unwrap_or("another workflow");
            return Err(invalid(vec![format!(
                "extends.workflow: `{}` itself extends `{further}`; only one level of `extends` is allowed",
                extends.workflow
            )]));
        }
        let base = Self::parse(&base_source, &base_text).map_err(|e| {
            invalid(vec![format!(
                "extends.workflow: `{}` is not a valid base: {e}",
                extends.workflow
            )])
        })?;

        let mut fixed = BTreeMap::new();
        for (name, value) in &extends.params {
            match base.params.get(name) {
                None => problems.push(format!(
                    "extends.params: `{name}` is not a parameter of `{}` (it takes: {})",
                    base.name,
                    known_params(&base.params)
                )),
                Some(spec) => match spec.check(name, value) {
                    Ok(v) => {
                        fixed.insert(name.clone(), v);
                    }
                    Err(e) => problems.push(format!("extends.params: {e}")),
                },
            }
        }
        let mut params: BTreeMap<String, ParamSpec> = base
            .params
            .into_iter()
            .filter(|(name, _)| !extends.params.contains_key(name))
            .collect();
        for (name, spec) in file.params {
            if extends.params.contains_key(&name) {
                problems.push(format!(
                    "params: `{name}` is fixed by `extends.params`; it cannot also be declared"
                ));
            } else if let Some(declared) = params.get_mut(&name) {
                problems.extend(spec.declaration_problem(&name));
                *declared = spec;
            } else {
                problems.push(format!(
                    "params: `{name}` is not a parameter of `{}` (a variant can only redeclare its base's parameters)",
                    base.name
                ));
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let bind = |text: &str| as_text(bind_params(&Value::String(text.to_string()), &fixed));
        let workflow = Workflow {
            name: file.name,
            description: file
                .description
                .or_else(|| base.description.as_deref().map(bind)),
            source: source.to_string(),
            locks: base.locks.iter().map(|l| bind(l)).collect(),
            params,
            phases: base
                .phases
                .into_iter()
                .map(|p| PlannedPhase {
                    spec: bind_params(&p.spec, &fixed),
                    breaker: p.breaker.as_deref().map(bind),
                    description: p.description.as_deref().map(bind),
                    ..p
                })
                .collect(),
        };
        workflow.check_default_types()?;
        Ok(workflow)
    }

    /// Binds parameters (`--param k=v`) and produces the plan a run stores.
    pub fn plan(&self, given: &BTreeMap<String, String>) -> Result<Plan, InvalidWorkflow> {
        let mut problems = Vec::new();
        for name in given.keys() {
            if !self.params.contains_key(name) {
                problems.push(format!(
                    "unknown parameter `{name}` (this workflow takes: {})",
                    known_params(&self.params)
                ));
            }
        }
        let mut params = BTreeMap::new();
        for (name, spec) in &self.params {
            match given.get(name).or(spec.default.as_ref()) {
                None => problems.push(format!(
                    "parameter `{name}` is required (--param {name}=VALUE)"
                )),
                Some(v) => match spec.check(name, v) {
                    Err(e) => problems.push(e),
                    Ok(v) => {
                        params.insert(name.clone(), v);
                    }
                },
            }
        }
        if !problems.is_empty() {
            return Err(InvalidWorkflow {
                file: self.source.clone(),
                problems: problems
                    .into_iter()
                    .map(|message| Problem {
                        phase: None,
                        message,
                    })
                    .collect(),
            });
        }
        let bind = |value: &Value| bind_params(value, &params);
        let plan = Plan {
            workflow: self.name.clone(),
            description: self
                .description
                .as_ref()
                .map(|d| as_text(bind(&d.clone().into()))),
            source: self.source.clone(),
            lock_keys: normalise_lock_keys(
                self.locks
                    .iter()
                    .map(|l| as_text(bind(&Value::String(l.clone())))),
            ),
            params: params.clone(),
            context: BTreeMap::new(),
            phases: self
                .phases
                .iter()
                .map(|p| PlannedPhase {
                    spec: bind(&p.spec),
                    breaker: p.breaker.as_ref().map(|b| as_text(bind(&b.clone().into()))),
                    ..p.clone()
                })
                .collect(),
        };
        self.check_types(&params)?;
        Ok(plan)
    }

    /// Deserialises every phase into its type, parameters bound where known.
    fn check_types(&self, params: &BTreeMap<String, String>) -> Result<(), InvalidWorkflow> {
        let problems: Vec<Problem> = self
            .phases
            .iter()
            .filter_map(|p| {
                let spec = bind_params(&p.spec, params);
                let unbound = interpolate::references_in(&spec)
                    .unwrap_or_default()
                    .iter()
                    .any(|r| matches!(r, Reference::Param(_)));
                if unbound {
                    return None;
                }
                plan::typed(&spec).err().map(|message| Problem {
                    phase: Some(p.id.clone()),
                    message: describe_type_error(&p.kind, message),
                })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidWorkflow {
                file: self.source.clone(),
                problems,
            })
        }
    }
}

/// The parameter names, for messages.
fn known_params(params: &BTreeMap<String, ParamSpec>) -> String {
    if params.is_empty() {
        "none".into()
    } else {
        params.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The `lock` field: a key or a non-empty list of keys (`None` when the file has none).
fn lock_templates(lock: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    const EXPECTED: &str = "expected a key (string) or a list of keys";
    let keys = match lock {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(key)) => vec![key.clone()],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(
                "lock: the list is empty; give at least one key, or leave `lock` out to lock on the workflow name"
                    .into(),
            );
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(key) => Ok(key.clone()),
                other => Err(format!(
                    "lock: element {} (`{other}`) is not a string; {EXPECTED}",
                    i + 1
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("lock: `{other}` is not a string; {EXPECTED}")),
    };
    if keys.iter().any(|k| k.trim().is_empty()) {
        return Err("lock: a key must not be empty".into());
    }
    Ok(Some(keys))
}

fn bind_params(value: &Value, params: &BTreeMap<String, String>) -> Value {
    interpolate::substitute_all(value, &mut |r| match r {
        Reference::Param(name) => Ok(params.get(name).cloned().map(Value::String)),
        Reference::Output { .. } => Ok(None),
    })
    .unwrap_or_else(|_| value.clone())
}

fn as_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn describe_type_error(kind: &str, message: String) -> String {
    // typetag reports an unknown `type` as an unknown variant naming it; an enum field inside
    // a known type says "unknown variant" too, but names its own value.
    if message.starts_with(&format!("unknown variant `{kind}`")) {
        let known = message.split("expected one of ").nth(1).unwrap_or("");
        format!("unknown phase type `{kind}` (known types: {known})")
    } else {
        format!("type `{kind}`: {message}")
    }
}

/// Splits one phase mapping into its common fields and its type's own spec.
fn parse_phase(
    raw: Value,
    base_retry: &RetryPolicy,
    base_timeout: Duration,
) -> Result<PlannedPhase, (Option<String>, String)> {
    let Value::Object(mut map) = raw else {
        return Err((None, "a phase must be a mapping".into()));
    };
    let id = match map.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err((None, "`id` must be a string".into())),
        None => return Err((None, "phase has no `id`".into())),
    };
    let err = |m: String| (Some(id.clone()), m);
    if !NAME.is_match(&id) {
        return Err(err(
            "id must be lower case letters, digits, `.`, `_` or `-`".into(),
        ));
    }
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(err("`type` must be a string".into())),
        None => return Err(err("phase has no `type`".into())),
    };
    let field = |map: &mut Map<String, Value>, key: &str| map.remove(key).unwrap_or(Value::Null);
    let after: Vec<String> = Option::<Vec<String>>::deserialize(field(&mut map, "after"))
        .map_err(|e| err(format!("after: {e} (expected a list of phase ids)")))?
        .unwrap_or_default();
    let retry: RetrySpec = Option::<RetrySpec>::deserialize(field(&mut map, "retry"))
        .map_err(|e| err(format!("retry: {e}")))?
        .unwrap_or_default();
    retry.check().map_err(err)?;
    let timeout = match field(&mut map, "timeout") {
        Value::Null => base_timeout,
        Value::String(s) => humantime::parse_duration(&s).map_err(|e| {
            err(format!(
                "timeout: `{s}` is not a duration ({e}); write e.g. 30s, 2m, 500ms"
            ))
        })?,
        other => {
            return Err(err(format!(
                "timeout: `{other}` is not a duration; write e.g. 30s, 2m, 500ms"
            )));
        }
    };
    if timeout.is_zero() {
        return Err(err("timeout must be greater than zero".into()));
    }
    let breaker = Option::<String>::deserialize(field(&mut map, "breaker"))
        .map_err(|e| err(format!("breaker: {e}")))?;
    let description = Option::<String>::deserialize(field(&mut map, "description"))
        .map_err(|e| err(format!("description: {e}")))?;
    debug_assert!(COMMON_KEYS.iter().all(|k| !map.contains_key(*k)));
    Ok(PlannedPhase {
        id,
        kind,
        description,
        after,
        retry: retry.over(base_retry),
        timeout,
        breaker,
        spec: Value::Object(map),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper3(v: &str) -> Result<String, String> {
        if v.len() == 3 && v.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(v.to_ascii_uppercase())
        } else {
            Err(format!("`{v}` is not a three-letter code"))
        }
    }

    const WF: &str = "name: t\nparams:\n  code: { type: test-upper3 }\nphases:\n  - { id: a, type: unknown-here }\n";

    #[test]
    fn registered_parameter_types_check_and_normalise() {
        crate::params::register_param_type("test-upper3", upper3);
        let wf = Workflow {
            name: "t".into(),
            description: None,
            source: "t.yaml".into(),
            locks: vec!["t:${params.code}".into()],
            params: BTreeMap::from([(
                "code".to_string(),
                serde_json::from_value::<ParamSpec>(serde_json::json!({"type": "test-upper3"}))
                    .unwrap(),
            )]),
            phases: vec![],
        };
        let plan = wf
            .plan(&BTreeMap::from([("code".to_string(), "fra".to_string())]))
            .unwrap();
        assert_eq!(plan.params["code"], "FRA");
        assert_eq!(plan.lock_keys, ["t:FRA"]);
        let err = wf
            .plan(&BTreeMap::from([(
                "code".to_string(),
                "fr4nce".to_string(),
            )]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameter `code`: `fr4nce` is not a three-letter code"),
            "{err}"
        );
    }

    #[test]
    fn outputs_can_be_referenced_from_ancestors_only() {
        let err = Workflow::parse(
            "refs.yaml",
            "name: refs\nlock: \"x:${phases.a.output.id}\"\nphases:\n  \
             - { id: a, type: unknown-here }\n  \
             - { id: b, type: unknown-here, after: [a], v: \"${phases.a.output.id}\" }\n  \
             - { id: c, type: unknown-here, after: [b], v: \"${phases.a.output.id}\" }\n  \
             - { id: d, type: unknown-here, v: \"${phases.a.output.id}\" }\n",
        )
        .unwrap_err();
        let problems: Vec<(Option<&str>, &str)> = err
            .problems
            .iter()
            .map(|p| (p.phase.as_deref(), p.message.as_str()))
            .collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].0.is_none() && problems[0].1.contains("cannot be used here"));
        assert_eq!(problems[1].0, Some("d"));
        assert!(problems[1].1.contains("not an ancestor"), "{problems:#?}");
    }

    #[test]
    fn an_unknown_parameter_type_is_reported() {
        let err = Workflow::parse("t.yaml", &WF.replace("test-upper3", "no-such-type"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameter `code`: unknown type `no-such-type`"),
            "{err}"
        );
    }

    fn lock_of(lock_yaml: &str) -> Result<Plan, String> {
        let text = format!(
            "name: locky\n{lock_yaml}params:\n  hub: {{ default: USA }}\n  code: {{ default: FRA }}\nphases:\n  - {{ id: a, type: workflow, workflow: other }}\n"
        );
        Workflow::parse("locky.yaml", &text)
            .and_then(|w| w.plan(&BTreeMap::new()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn lock_is_a_string_or_a_list_of_strings() {
        assert_eq!(
            lock_of("lock: \"instance:${params.code}\"\n")
                .unwrap()
                .lock_keys,
            ["instance:FRA"]
        );
        // Bound, sorted and deduplicated.
        assert_eq!(
            lock_of("lock: [\"instance:${params.code}\", \"instance:${params.hub}\", \"instance:FRA\"]\n")
                .unwrap()
                .lock_keys,
            ["instance:FRA", "instance:USA"]
        );
        assert_eq!(
            lock_of("lock:\n  - b\n  - a\n").unwrap().lock_keys,
            ["a", "b"]
        );
        // No `lock`: the workflow's name.
        assert_eq!(lock_of("").unwrap().lock_keys, ["locky"]);
    }

    #[test]
    fn a_bad_lock_is_a_validation_error_naming_the_file_and_field() {
        let err = lock_of("lock: []\n").unwrap_err();
        assert!(
            err.starts_with("locky.yaml: lock: the list is empty"),
            "{err}"
        );
        let err = lock_of("lock: [a, 42]\n").unwrap_err();
        assert!(
            err.contains("locky.yaml: lock: element 2 (`42`) is not a string"),
            "{err}"
        );
        let err = lock_of("lock: { a: b }\n").unwrap_err();
        assert!(err.contains("locky.yaml: lock: "), "{err}");
        let err = lock_of("lock: [a, \"\"]\n").unwrap_err();
        assert!(
            err.contains("locky.yaml: lock: a key must not be empty"),
            "{err}"
        );
        let err = lock_of("lock: [\"x:${params.nope}\"]\n").unwrap_err();
        assert!(err.contains("undeclared parameter"), "{err}");
    }

    const BASE: &str = r#"name: deploy
description: "Deploy a ${params.role}"
lock: "instance:${params.code}"
params:
  code: { pattern: "^[A-Z]{3}$", description: "any code" }
  role: { pattern: "^(hub|spoke)$" }
  size: { default: "1" }
defaults:
  timeout: 7s
phases:
  - id: register
    type: workflow
    description: "register a ${params.role}"
    breaker: "b-${params.role}"
    workflow: "register-${params.role}"
    params: { code: "${params.code}", size: "${params.size}" }
"#;

    fn resolve(name: &str) -> Result<(String, String), String> {
        match name {
            "deploy" => Ok(("deploy (built-in)".into(), BASE.into())),
            "chained" => Ok((
                "chained (built-in)".into(),
                "name: chained\nextends: { workflow: deploy, params: { role: hub } }\n".into(),
            )),
            "broken" => Ok((
                "broken (built-in)".into(),
                "name: broken\nphases: []\n".into(),
            )),
            _ => Err(format!("no built-in workflow `{name}`")),
        }
    }

    fn variant(text: &str) -> Result<Workflow, String> {
        Workflow::parse_with("hub.yaml", text, &resolve).map_err(|e| e.to_string())
    }

    const HUB: &str = "name: hub\ndescription: The hub\nextends:\n  workflow: deploy\n  params: { role: hub }\nparams:\n  code: { default: USA, pattern: \"^[A-Z]{3}$\" }\n";

    #[test]
    fn extends_makes_a_named_variant_with_fixed_parameters() {
        let wf = variant(HUB).unwrap();
        assert_eq!(wf.name, "hub");
        assert_eq!(wf.description.as_deref(), Some("The hub"));
        assert_eq!(wf.source, "hub.yaml");
        assert_eq!(wf.locks, ["instance:${params.code}"]);
        assert_eq!(wf.params.keys().collect::<Vec<_>>(), ["code", "size"]);
        assert_eq!(wf.params["code"].default.as_deref(), Some("USA"));
        let p = &wf.phases[0];
        assert_eq!(p.timeout, Duration::from_secs(7), "the base's defaults");
        assert_eq!(p.description.as_deref(), Some("register a hub"));
        assert_eq!(p.breaker.as_deref(), Some("b-hub"));
        assert_eq!(p.spec["workflow"], "register-hub");

        let plan = wf.plan(&BTreeMap::new()).unwrap();
        assert_eq!(plan.workflow, "hub");
        assert_eq!(plan.lock_keys, ["instance:USA"]);
        assert_eq!(plan.params.keys().collect::<Vec<_>>(), ["code", "size"]);
        assert_eq!(
            plan.phases[0].spec,
            serde_json::json!({"type": "workflow", "workflow": "register-hub", "params": {"code": "USA", "size": "1"}})
        );
        // Callers cannot set a fixed parameter.
        let err = wf
            .plan(&BTreeMap::from([("role".to_string(), "spoke".to_string())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hub.yaml: unknown parameter `role` (this workflow takes: code, size)"),
            "{err}"
        );

        // Without a redeclaration the base's declaration (no default) holds.
        let spoke =
            variant("name: spoke\nextends: { workflow: deploy, params: { role: spoke } }\n")
                .unwrap();
        assert_eq!(spoke.description.as_deref(), Some("Deploy a spoke"));
        let err = spoke.plan(&BTreeMap::new()).unwrap_err().to_string();
        assert_eq!(
            err,
            "hub.yaml: parameter `code` is required (--param code=VALUE)"
        );

        // The base itself still runs, the fixed parameter then its caller's to set.
        let (src, text) = resolve("deploy").unwrap();
        let base = Workflow::parse(&src, &text).unwrap();
        let err = base
            .plan(&BTreeMap::from([
                ("code".to_string(), "FRA".to_string()),
                ("role".to_string(), "boss".to_string()),
            ]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parameter `role`: value `boss`"), "{err}");
    }

    #[test]
    fn extends_errors_name_the_file_and_field() {
        let cases = [
            (
                HUB.replace("workflow: deploy", "workflow: nope"),
                "hub.yaml: extends.workflow: no built-in workflow `nope`",
            ),
            (
                HUB.replace("role: hub", "rank: hub"),
                "hub.yaml: extends.params: `rank` is not a parameter of `deploy` (it takes: code, role, size)",
            ),
            (
                HUB.replace("role: hub", "role: boss"),
                "hub.yaml: extends.params: parameter `role`: value `boss` does not match pattern `^(hub|spoke)$`",
            ),
            (
                format!("{HUB}  role: {{ default: hub }}\n"),
                "hub.yaml: params: `role` is fixed by `extends.params`; it cannot also be declared",
            ),
            (
                format!("{HUB}  colour: {{ default: red }}\n"),
                "hub.yaml: params: `colour` is not a parameter of `deploy`",
            ),
            (
                HUB.replace("default: USA", "default: usa"),
                "hub.yaml: default: parameter `code`: value `usa` does not match pattern",
            ),
            (
                format!("{HUB}phases: []\n"),
                "hub.yaml: phases: a workflow with `extends` takes its phases from `deploy`",
            ),
            (
                format!("{HUB}lock: x\n"),
                "hub.yaml: lock: a workflow with `extends` takes its lock from `deploy`",
            ),
            (
                format!("{HUB}defaults: {{ timeout: 1s }}\n"),
                "hub.yaml: defaults: a workflow with `extends` takes its defaults from `deploy`",
            ),
            (
                HUB.replace("workflow: deploy", "workflow: chained"),
                "hub.yaml: extends.workflow: `chained` itself extends `deploy`; only one level of `extends` is allowed",
            ),
            (
                HUB.replace("workflow: deploy", "workflow: hub"),
                "hub.yaml: extends.workflow: `hub` cannot extend itself",
            ),
            (
                HUB.replace("workflow: deploy", "workflow: broken"),
                "hub.yaml: extends.workflow: `broken` is not a valid base: broken (built-in): a workflow needs at least one phase",
            ),
            (
                HUB.replace("params: { role: hub }", "params: { role: [hub] }"),
                "hub.yaml: extends: params: `role`: expected a string, number or boolean",
            ),
            (
                HUB.replace("  workflow: deploy\n", ""),
                "hub.yaml: extends: missing field `workflow`",
            ),
        ];
        for (text, expected) in cases {
            let err = variant(&text).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{text}\ngave: {err}\nexpected: {expected}"
            );
        }
        // Without a resolver there is nothing to extend.
        let err = Workflow::parse("hub.yaml", HUB).unwrap_err().to_string();
        assert!(
            err.starts_with("hub.yaml: extends.workflow: no workflow `deploy` to extend"),
            "{err}"
        );
        // A file without `extends` still needs phases.
        let err = Workflow::parse("x.yaml", "name: x\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.yaml: missing field `phases`");
    }
}
