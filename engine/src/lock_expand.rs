//! Lock keys that stand for other keys. A workflow whose reach depends on the state of the
//! world — a secret rotation locks an instance *and every instance linked with it* — names one
//! key (`linked:FRA`) and the caller's [`LockExpander`] says which keys it stands for when the
//! run starts. The run records and holds the expanded keys, so a resume takes the same ones.
//! The engine knows no domain: what a key stands for is the expander's business.

use async_trait::async_trait;

#[async_trait]
pub trait LockExpander: Send + Sync {
    /// The keys `key` stands for, or `None` when it stands for itself. An `Err` stops the run
    /// before it starts (it says why the key cannot be resolved).
    async fn expand(&self, key: &str) -> Result<Option<Vec<String>>, String>;
}

/// Every key stands for itself.
pub struct NoExpansion;

#[async_trait]
impl LockExpander for NoExpansion {
    async fn expand(&self, _key: &str) -> Result<Option<Vec<String>>, String> {
        Ok(None)
    }
}

/// `keys` with every key replaced by what it stands for (sorted, without duplicates).
pub(crate) async fn expand_all(
    expander: &dyn LockExpander,
    keys: &[String],
) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        match expander.expand(key).await? {
            Some(expanded) => out.extend(expanded),
            None => out.push(key.clone()),
        }
    }
    Ok(crate::plan::normalise_lock_keys(out))
}
