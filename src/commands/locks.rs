//! `dive locks list|clean`.

use crate::cli::LocksCommand;
use crate::commands::print_json;
use crate::{database, exit, output};
use anyhow::Result;

pub async fn locks(cmd: LocksCommand) -> Result<u8> {
    let store = database::open().await?;
    match cmd {
        LocksCommand::List { json } => {
            let locks = store.locks().await?;
            if json {
                print_json(&locks)?;
            } else {
                print!("{}", output::locks_table(&locks));
            }
        }
        LocksCommand::Clean => {
            let removed = store.clean_locks().await?;
            if removed.is_empty() {
                note!("no stale locks");
            }
            for key in removed {
                note!("removed stale lock holder `{key}`");
            }
        }
    }
    Ok(exit::OK)
}
