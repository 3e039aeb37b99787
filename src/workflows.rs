//! Built-in workflows (embedded from `workflows/`) and loading a workflow by name or path.

use crate::InvalidInput;
use anyhow::Result;
use dive_engine::Workflow;
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
    let Some((name, text)) = builtin().find(|(n, _)| *n == name_or_path) else {
        let known: Vec<_> = builtin().map(|(n, _)| n).collect();
        return Err(InvalidInput(format!(
            "no built-in workflow `{name_or_path}` and no such file (built-in: {})",
            known.join(", ")
        ))
        .into());
    };
    Ok(Workflow::parse(&format!("{name} (built-in)"), text)?)
}

/// A workflow from a file.
pub fn load_file(path: &Path) -> Result<Workflow> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| InvalidInput(format!("{name}: cannot read workflow file: {e}")))?;
    Ok(Workflow::parse(&name, &text)?)
}

#[cfg(test)]
mod tests {
    use dive_runtime::RuntimeKind;

    /// `cleanup` removes what dive made on every runtime: one `runtime.cleanup` phase each.
    #[test]
    fn cleanup_has_a_phase_per_registered_runtime() {
        let (_, text) = super::builtin()
            .find(|(n, _)| *n == "cleanup")
            .expect("built-in cleanup");
        for kind in RuntimeKind::all() {
            assert!(
                text.contains(&format!("    runtime: {kind}\n")),
                "workflows/cleanup.yaml has no runtime.cleanup phase for runtime {kind}"
            );
        }
    }
}
