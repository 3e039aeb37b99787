//! Named parameter types (`params: { code: { type: country-code } }`): checks that other crates
//! register, so a workflow can ask for domain validation (a known ISO country code, say) and
//! get it before anything runs, without the engine knowing the domain.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

/// Checks a value and returns it normalised (e.g. upper-cased), or says what is wrong.
pub type ParamCheck = fn(&str) -> Result<String, String>;

static TYPES: LazyLock<RwLock<HashMap<String, ParamCheck>>> = LazyLock::new(Default::default);

/// Registers (or replaces) a parameter type.
pub fn register_param_type(name: &str, check: ParamCheck) {
    TYPES
        .write()
        .expect("param types poisoned")
        .insert(name.to_string(), check);
}

pub(crate) fn param_type(name: &str) -> Option<ParamCheck> {
    TYPES
        .read()
        .expect("param types poisoned")
        .get(name)
        .copied()
}

pub(crate) fn known_types() -> Vec<String> {
    let mut names: Vec<String> = TYPES
        .read()
        .expect("param types poisoned")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}
