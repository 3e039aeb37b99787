//! `dive secrets list|show`, and the secret store that runs get in their services.

use crate::cli::SecretsCommand;
use crate::commands::print_json;
use crate::{InvalidInput, config, database, exit};
use anyhow::Result;
use dive_engine::Store;
use dive_secrets::{SecretError, SecretInfo, SecretStore};
use std::fmt::Write;

/// Input the operator can fix (bad name, malformed key) becomes exit code 2.
pub(crate) fn classify(e: SecretError) -> anyhow::Error {
    if e.is_invalid_input() {
        InvalidInput(e.to_string()).into()
    } else {
        e.into()
    }
}

/// The secret store on `store`'s database, under the configured master key. A malformed key
/// fails here, before any run starts; a wrong key fails at the first secret operation, before
/// anything is written.
pub fn secret_store(store: &Store) -> Result<SecretStore> {
    let key = config::get().master_key().map_err(classify)?;
    Ok(SecretStore::new(store.pool().clone(), key))
}

pub async fn secrets(cmd: SecretsCommand) -> Result<u8> {
    let store = database::open().await?;
    let secrets = secret_store(&store)?;
    match cmd {
        SecretsCommand::List { json } => {
            let list = secrets.list().await.map_err(classify)?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                eprintln!("no secrets stored");
            } else {
                print!("{}", table(&list));
            }
        }
        SecretsCommand::Show {
            name,
            reveal,
            secret_version: version,
        } => {
            let missing = || InvalidInput(format!("no secret named `{name}`"));
            if !reveal {
                let info = secrets.info(&name).await.map_err(classify)?;
                let info = info.ok_or_else(missing)?;
                print!("{}", details(&info));
                eprintln!(
                    "the value is not shown: add --reveal to print it on stdout (and --secret-version N for an older version)"
                );
                return Ok(exit::OK);
            }
            let value = match version {
                Some(v) => secrets.get_version(&name, v).await.map_err(classify)?,
                None => secrets.get(&name).await.map_err(classify)?.map(|(s, _)| s),
            };
            let Some(value) = value else {
                return Err(match version {
                    Some(v) => InvalidInput(format!("secret `{name}` has no version {v}")),
                    None => missing(),
                }
                .into());
            };
            println!("{}", value.expose());
        }
    }
    Ok(exit::OK)
}

fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn table(list: &[SecretInfo]) -> String {
    let width = list.iter().map(|s| s.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<width$}  {:>8}  {:>6}  {:<19}  {:<19}\n",
        "NAME", "VERSIONS", "LATEST", "CREATED", "UPDATED"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>6}  {:<19}  {:<19}",
            s.name,
            s.versions,
            s.latest,
            when(&s.created_at),
            when(&s.updated_at)
        );
    }
    out
}

fn details(s: &SecretInfo) -> String {
    format!(
        "name      {}\nversions  {}\nlatest    {}\ncreated   {}\nupdated   {}\n",
        s.name,
        s.versions,
        s.latest,
        when(&s.created_at),
        when(&s.updated_at)
    )
}
