//! Built-in workflows (embedded from `workflows/`) and loading a workflow by name or path.

use crate::InvalidInput;
use anyhow::Result;
use dive_engine::{InvalidWorkflow, Workflow};
use include_dir::{Dir, include_dir};
use std::path::Path;

static BUILTIN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/workflows");

/// Built-in workflows: (name, YAML text).
pub fn builtin() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILTIN.files().filter_map(|f| {
        let name = f.path().file_stem()?.to_str()?;
        let ext = f.path().extension()?.to_str()?;
        (ext == "yaml" || ext == "yml").then_some((name, f.contents_utf8()?))
    })
}

/// A workflow by built-in name, or by path if the argument names a file.
/// Errors are [`InvalidInput`] or [`dive_engine::InvalidWorkflow`] (exit code 2).
pub fn load(name_or_path: &str) -> Result<Workflow> {
    let path = Path::new(name_or_path);
    if path.is_file() || name_or_path.contains('/') || name_or_path.ends_with(".yaml") {
        return load_file(path);
    }
    let Some(found) = load_builtin(name_or_path) else {
        let known: Vec<_> = builtin().map(|(n, _)| n).collect();
        return Err(InvalidInput(format!(
            "no built-in workflow `{name_or_path}` and no such file (built-in: {})",
            known.join(", ")
        ))
        .into());
    };
    Ok(found?)
}

/// A built-in workflow by name (`None` if there is none), its `extends` resolved among the
/// built-in workflows. The one way built-in workflows are parsed: `dive run workflow`,
/// `dive workflow list|show` and child runs all come here.
pub fn load_builtin(name: &str) -> Option<Result<Workflow, InvalidWorkflow>> {
    let (source, text) = builtin_source(name).ok()?;
    Some(Workflow::parse_with(&source, &text, &builtin_source))
}

/// A workflow from a file; its `extends` may name a built-in workflow.
pub fn load_file(path: &Path) -> Result<Workflow> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| InvalidInput(format!("{name}: cannot read workflow file: {e}")))?;
    Ok(Workflow::parse_with(&name, &text, &builtin_source)?)
}

/// The base an `extends` names: a built-in workflow's source name and text.
fn builtin_source(name: &str) -> Result<(String, String), String> {
    builtin()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| (format!("{n} (built-in)"), text.to_string()))
        .ok_or_else(|| {
            let known: Vec<_> = builtin().map(|(n, _)| n).collect();
            format!(
                "no built-in workflow `{name}` (built-in: {})",
                known.join(", ")
            )
        })
}
