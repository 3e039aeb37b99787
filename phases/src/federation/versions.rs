//! Which version of a direction's client secret each side holds. Keycloak shows neither side's
//! secret to compare (the provider's is masked), so the link phases record the version they
//! installed — `dive.secret.version` on X's client and in P's provider config — and this compares
//! those markers with the store's latest version.

use super::idp::idp_path;
use super::{SECRET_VERSION_KEY, admin_with, client_id, client_secret_name, idp_alias};
use dive_instances::InstanceRecord;
use dive_secrets::SecretStore;
use serde::Serialize;
use serde_json::Value;

/// The secret versions of direction X→P.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecretVersions {
    /// Latest version of `federation/<x>/<p>/client-secret` in the store.
    pub secret_version: Option<u32>,
    /// The marker on client `federation-<p>` in X's realm.
    pub client_secret_version: Option<String>,
    /// The marker in the config of provider `<x>-idp` in P's realm.
    pub provider_secret_version: Option<String>,
    /// All three agree: true; a side differs or lacks its object: false; unknown: null.
    pub secrets_agree: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_unknown_because: Option<String>,
}

/// Reads the store and both sides; never fails, what could not be read is explained.
pub async fn secret_versions(
    secrets: &SecretStore,
    trust: &dive_tls::Trust,
    x: &InstanceRecord,
    p: &InstanceRecord,
) -> SecretVersions {
    let mut out = SecretVersions::default();
    let name = client_secret_name(&x.code, &p.code);
    match secrets.info(&name).await {
        Ok(Some(info)) => out.secret_version = Some(info.latest),
        Ok(None) => {
            out.secrets_unknown_because = Some(format!("no secret `{name}` in the store"));
            return out;
        }
        Err(e) => {
            out.secrets_unknown_because = Some(format!("secret `{name}`: {e}"));
            return out;
        }
    }
    let client = async {
        let admin = admin_with(secrets, trust, x).await?;
        let cid = client_id(&p.code);
        let c = admin.client_by_client_id(&x.realm(), &cid).await?;
        Ok::<_, dive_engine::PhaseError>(c.map(|c| {
            c.attributes
                .and_then(|a| a.get(SECRET_VERSION_KEY).cloned())
                .unwrap_or_default()
        }))
    };
    let provider = async {
        let admin = admin_with(secrets, trust, p).await?;
        let idp: Option<Value> = admin
            .get_opt(&idp_path(&p.realm(), &idp_alias(&x.code)))
            .await?;
        Ok::<_, dive_engine::PhaseError>(idp.map(|i| {
            i["config"][SECRET_VERSION_KEY]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }))
    };
    let (client, provider) = futures::join!(client, provider);
    let want = out.secret_version.map(|v| v.to_string());
    let mut agree = Some(true);
    let mut why = Vec::new();
    for (what, got, slot) in [
        (
            format!("client {} in {}", client_id(&p.code), x.realm()),
            client,
            &mut out.client_secret_version,
        ),
        (
            format!("provider {} in {}", idp_alias(&x.code), p.realm()),
            provider,
            &mut out.provider_secret_version,
        ),
    ] {
        match got {
            Ok(Some(v)) => {
                if Some(&v) != want.as_ref() {
                    agree = Some(false);
                }
                *slot = Some(v).filter(|v| !v.is_empty());
            }
            Ok(None) => {
                agree = Some(false);
                why.push(format!("no {what}"));
            }
            Err(e) => {
                if agree == Some(true) {
                    agree = None;
                }
                why.push(format!("{what}: {e}"));
            }
        }
    }
    out.secrets_agree = agree;
    out.secrets_unknown_because = (!why.is_empty()).then(|| why.join("; "));
    out
}
