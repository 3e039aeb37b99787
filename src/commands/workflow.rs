//! `dive workflow list|show|validate`.

use crate::cli::{ShowFormat, WorkflowCommand};
use crate::commands::{parse_params, print_json};
use crate::{exit, output, workflows};
use anyhow::Result;
use dive_engine::Workflow;

pub fn workflow(cmd: WorkflowCommand) -> Result<u8> {
    match cmd {
        WorkflowCommand::List { json } => {
            let list: Vec<Workflow> = workflows::builtin()
                .map(|(name, _)| workflows::load(name))
                .collect::<Result<_>>()?;
            if json {
                let docs: Vec<_> = list
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "name": w.name,
                            "description": w.description,
                            "params": w.params.keys().collect::<Vec<_>>(),
                            "phases": w.phases.len(),
                        })
                    })
                    .collect();
                print_json(&docs)?;
            } else {
                for w in list {
                    println!(
                        "{:<20} {:>3} phases  {}",
                        w.name,
                        w.phases.len(),
                        w.description.as_deref().unwrap_or("")
                    );
                }
            }
        }
        WorkflowCommand::Show {
            workflow,
            format,
            params,
        } => {
            let wf = workflows::load(&workflow)?;
            let plan = wf.plan(&parse_params(&params)?)?;
            match format {
                ShowFormat::Text => print!("{}", output::plan_text(&wf, &plan)),
                ShowFormat::Json => print_json(&plan)?,
                ShowFormat::Dot => print!("{}", output::plan_dot(&plan)),
                ShowFormat::Mermaid => print!("{}", output::plan_mermaid(&plan)),
            }
        }
        WorkflowCommand::Validate { path } => {
            let wf = workflows::load_file(&path)?;
            note!(
                "{}: valid workflow `{}` with {} phases",
                path.display(),
                wf.name,
                wf.phases.len()
            );
        }
    }
    Ok(exit::OK)
}
