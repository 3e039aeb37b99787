//! `${params.NAME}` and `${phases.ID.output.FIELD}` references inside workflow strings.
//! Only these two namespaces are recognised, so a shell's own `${VAR}` passes through untouched.

use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

static REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\{\s*(params|phases)\.([^}]*?)\s*\}").expect("static regex"));

/// One reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Param(String),
    Output { phase: String, path: Vec<String> },
}

impl Reference {
    fn parse(namespace: &str, rest: &str) -> Result<Self, String> {
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("malformed reference `${{{namespace}.{rest}}}`"));
        }
        match namespace {
            "params" if parts.len() == 1 => Ok(Reference::Param(parts[0].to_string())),
            "params" => Err(format!(
                "malformed reference `${{params.{rest}}}`: expected ${{params.NAME}}"
            )),
            _ if parts.len() >= 3 && parts[1] == "output" => Ok(Reference::Output {
                phase: parts[0].to_string(),
                path: parts[2..].iter().map(|s| s.to_string()).collect(),
            }),
            _ => Err(format!(
                "malformed reference `${{phases.{rest}}}`: expected ${{phases.ID.output.FIELD}}"
            )),
        }
    }
}

/// All references in `text`, or the first malformed one.
pub fn references(text: &str) -> Result<Vec<Reference>, String> {
    REFERENCE
        .captures_iter(text)
        .map(|c| Reference::parse(&c[1], &c[2]))
        .collect()
}

/// Replaces every reference in `text` using `resolve`; `None` leaves the reference as it is.
/// A string that is exactly one reference becomes the referenced JSON value itself (so a number
/// stays a number); otherwise values are spliced in as text.
pub fn substitute(
    text: &str,
    resolve: &mut dyn FnMut(&Reference) -> Result<Option<Value>, String>,
) -> Result<Value, String> {
    if let Some(c) = REFERENCE.captures(text)
        && c.get(0).is_some_and(|m| m.as_str().len() == text.len())
    {
        let reference = Reference::parse(&c[1], &c[2])?;
        return Ok(resolve(&reference)?.unwrap_or_else(|| Value::String(text.to_string())));
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for c in REFERENCE.captures_iter(text) {
        let m = c.get(0).expect("group 0");
        out.push_str(&text[last..m.start()]);
        match resolve(&Reference::parse(&c[1], &c[2])?)? {
            Some(Value::String(s)) => out.push_str(&s),
            Some(other) => out.push_str(&other.to_string()),
            None => out.push_str(m.as_str()),
        }
        last = m.end();
    }
    out.push_str(&text[last..]);
    Ok(Value::String(out))
}

/// Applies [`substitute`] to every string inside `value`, recursively.
pub fn substitute_all(
    value: &Value,
    resolve: &mut dyn FnMut(&Reference) -> Result<Option<Value>, String>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => substitute(s, resolve)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_all(v, resolve))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_all(v, resolve)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Every reference inside `value`, recursively.
pub fn references_in(value: &Value) -> Result<Vec<Reference>, String> {
    let mut found = Vec::new();
    substitute_all(value, &mut |r| {
        found.push(r.clone());
        Ok(None)
    })?;
    Ok(found)
}

/// Looks up `path` inside a phase output.
pub fn lookup<'a>(output: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(output, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_reference_keeps_its_type() {
        let v = substitute("${phases.a.output.port}", &mut |_| Ok(Some(json!(8080)))).unwrap();
        assert_eq!(v, json!(8080));
    }

    #[test]
    fn embedded_references_become_text_and_shell_vars_pass() {
        let v = substitute("x=${params.code} ${HOME}", &mut |_| Ok(Some(json!("FRA")))).unwrap();
        assert_eq!(v, json!("x=FRA ${HOME}"));
    }

    #[test]
    fn malformed_references_are_reported() {
        assert!(references("${phases.a.stdout}").is_err());
        assert!(references("${params.a.b}").is_err());
        assert_eq!(
            references("${phases.a.output.x.y}").unwrap(),
            vec![Reference::Output {
                phase: "a".into(),
                path: vec!["x".into(), "y".into()]
            }]
        );
    }
}
