//! `dive secrets list|show|ensure|rotate`, and the secret store that runs get in their services.

use crate::cli::{ExecArgs, SecretsCommand};
use crate::commands::print_json;
use crate::commands::run::run_named;
use crate::{InvalidInput, config, database, exit};
use anyhow::Result;
use dive_engine::Store;
use dive_instances::{InstanceRecord, normalize_code};
use dive_phases::rotation;
use dive_secrets::Alphabet;
use dive_secrets::{SecretError, SecretInfo, SecretStore};
use dive_tls::Trust;
use std::collections::BTreeMap;
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

/// What a command needs to talk to the instances' Keycloaks: the secret store (admin passwords,
/// certificates) and the dive CA, the only one dive's clients trust (created on first use).
pub struct Access {
    pub secrets: SecretStore,
    pub trust: Trust,
}

impl Access {
    pub async fn open(store: &Store) -> Result<Access> {
        let secrets = secret_store(store)?;
        let trust = authority(&secrets).await?.trust();
        Ok(Access { secrets, trust })
    }
}

/// The dive home's CA (created and stored on first use).
pub async fn authority(secrets: &SecretStore) -> Result<dive_tls::Authority> {
    dive_phases::tls::authority(secrets)
        .await
        .map_err(|e| match e {
            dive_phases::tls::CaError::Secrets(e) => classify(e),
            other => other.into(),
        })
}

/// `dive ca show`: the CA certificate, PEM (or JSON with its expiry).
pub async fn ca_show(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let authority = authority(&secret_store(&store)?).await?;
    if json {
        crate::commands::print_json(&serde_json::json!({
            "pem": authority.cert_pem(),
            "not_after": authority.not_after(),
        }))?;
    } else {
        print!("{}", authority.cert_pem());
    }
    Ok(exit::OK)
}

pub async fn secrets(cmd: SecretsCommand) -> Result<u8> {
    // A plan reads the store under the key it has, and creates neither.
    let dry_run = matches!(&cmd, SecretsCommand::Rotate { exec, .. } if exec.dry_run);
    let store = database::open_for(dry_run).await?;
    match cmd {
        SecretsCommand::List { json } => {
            let secrets = secret_store(&store)?;
            let list = secrets.list().await.map_err(classify)?;
            if json {
                let now = chrono::Utc::now();
                let docs: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        let mut doc = serde_json::json!(s);
                        doc["age_s"] = serde_json::json!(age(s, now).as_secs());
                        doc
                    })
                    .collect();
                print_json(&docs)?;
            } else if list.is_empty() {
                note!("no secrets stored");
            } else {
                print!("{}", table(&list));
            }
        }
        SecretsCommand::Show {
            name,
            reveal,
            secret_version: version,
        } => {
            let secrets = secret_store(&store)?;
            let missing = || InvalidInput(format!("no secret named `{name}`"));
            if !reveal {
                let info = secrets.info(&name).await.map_err(classify)?;
                let info = info.ok_or_else(missing)?;
                print!("{}", details(&info));
                note!(
                    "the value is not shown: add --reveal to print it on stdout (and --version N for an older version)"
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
        SecretsCommand::Ensure { code, json } => {
            let secrets = secret_store(&store)?;
            let code = normalize_code(&code).map_err(InvalidInput)?;
            registered(&store, &code).await?;
            let partners = rotation::partners(store.pool(), &code)
                .await
                .map_err(anyhow::Error::msg)?;
            let mut created = Vec::new();
            let mut kept = Vec::new();
            for need in rotation::needed_secrets(&code, &partners) {
                let (_, new) = secrets
                    .ensure(&need.name, need.length, Alphabet::Alphanumeric)
                    .await
                    .map_err(classify)?;
                if new { &mut created } else { &mut kept }.push(need.name);
            }
            if json {
                print_json(
                    &serde_json::json!({ "code": code, "created": created, "existing": kept }),
                )?;
            } else if created.is_empty() {
                note!("{code}: all {} secrets exist; nothing created", kept.len());
            } else {
                for name in &created {
                    println!("created {name}");
                }
                note!(
                    "{code}: created {}, {} existed already",
                    created.len(),
                    kept.len()
                );
            }
        }
        SecretsCommand::Rotate {
            code,
            all: _,
            only,
            older_than,
            keep,
            grace,
            exec,
        } => {
            if !dry_run {
                secret_store(&store)?;
            }
            let opts = RotateOptions {
                older_than,
                keep,
                grace,
            };
            return rotate(&store, code.as_deref(), &only, opts, exec).await;
        }
    }
    Ok(exit::OK)
}

/// The registered instance `code`, or exit 2 saying how to deploy it.
async fn registered(store: &Store, code: &str) -> Result<InstanceRecord> {
    config::get()
        .instances(store)
        .get(code)
        .await?
        .ok_or_else(|| {
            InvalidInput(format!(
                "instance {code} is not deployed: run `dive hub deploy --code {code}` or `dive spoke deploy {code}` first"
            ))
            .into()
        })
}

/// `dive secrets rotate`: the built-in workflow `secret-rotation` on the instance's runtime.
/// What `dive secrets rotate` passes on besides the instance and the kinds.
struct RotateOptions {
    older_than: Option<String>,
    keep: u32,
    grace: Option<String>,
}

async fn rotate(
    store: &Store,
    code: Option<&str>,
    only: &[String],
    opts: RotateOptions,
    mut exec: ExecArgs,
) -> Result<u8> {
    let only = if only.is_empty() {
        "all".to_string()
    } else {
        only.join(",")
    };
    rotation::check_kinds(&only).map_err(InvalidInput)?;
    let mut params = BTreeMap::from([
        ("only".to_string(), only),
        (
            "older_than".to_string(),
            opts.older_than.unwrap_or_else(|| "0s".into()),
        ),
        ("keep".to_string(), opts.keep.to_string()),
        (
            "grace".to_string(),
            opts.grace.unwrap_or_else(|| "auto".into()),
        ),
    ]);
    // `--all` when no code (clap requires one of the two).
    let Some(code) = code else {
        return run_named("secret-rotation-all", &params, false, &exec).await;
    };
    let code = normalize_code(code).map_err(InvalidInput)?;
    let rec = registered(store, &code).await?;
    if exec.runtime.is_none() {
        exec.runtime = Some(rec.runtime);
    }
    params.insert("code".to_string(), code);
    run_named("secret-rotation", &params, false, &exec).await
}

fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// How old the latest version of `s` is (what `--older-than` compares).
fn age(s: &SecretInfo, now: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    (now - s.updated_at).to_std().unwrap_or_default()
}

/// An age in its two largest units (`3d 4h`, `5m 2s`).
fn short_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(s, |rest, (n, unit)| {
            let v = *rest / n;
            *rest %= n;
            Some((v, unit))
        })
        .skip_while(|(v, _)| *v == 0)
        .take(2)
        .filter(|(v, _)| *v > 0)
        .map(|(v, unit)| format!("{v}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

fn table(list: &[SecretInfo]) -> String {
    let width = list.iter().map(|s| s.name.len()).max().unwrap_or(0).max(4);
    let now = chrono::Utc::now();
    let mut out = format!(
        "{:<width$}  {:>8}  {:>6}  {:<19}  {:<19}  {:>7}\n",
        "NAME", "VERSIONS", "LATEST", "CREATED", "UPDATED", "AGE"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>6}  {:<19}  {:<19}  {:>7}",
            s.name,
            s.versions,
            s.latest,
            when(&s.created_at),
            when(&s.updated_at),
            short_age(age(s, now))
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

#[cfg(test)]
mod tests {
    use super::short_age;
    use std::time::Duration;

    #[test]
    fn ages_show_their_two_largest_units() {
        assert_eq!(short_age(Duration::from_secs(0)), "0s");
        assert_eq!(short_age(Duration::from_secs(59)), "59s");
        assert_eq!(short_age(Duration::from_secs(3_600 + 5)), "1h");
        assert_eq!(
            short_age(Duration::from_secs(3 * 86_400 + 4 * 3_600 + 7)),
            "3d 4h"
        );
    }
}
