//! dive-keycloak: a client for Keycloak's admin API ([`KeycloakAdmin`]) with the representations
//! it reads and writes ([`types`]), the readiness wait dive uses ([`wait_for_admin_token`]: the
//! admin API issues a token and answers with it, not a health endpoint), a scripted login for
//! checks ([`login_claims`]: a password grant on a public client, returning the ID token's
//! claims), and the names dive gives what it creates in a Keycloak (realm, admin, DIVE
//! attributes, test users). No engine types: the `keycloak.*` phase types that use this client
//! live in dive-phases.

mod admin;
mod keys;
mod login;
mod names;
mod rotation;
mod settle;
pub mod types;

pub use admin::{KeycloakAdmin, KeycloakError, enc, realm_path, wait_for_admin_token};
pub use keys::{RSA_PROVIDER, SigningKey};
pub use login::{decode_jwt_claims, login_claims};
pub use names::{
    ADMIN_USER, DIVE_ATTRIBUTES, TestUser, admin_password_secret, default_realm, test_users,
    user_password_secret,
};
pub use rotation::{
    PRIMARY_SECRET_LIFETIME, ROTATED_SECRET_LIFETIME, ROTATION_ATTRIBUTE, ROTATION_POLICY,
    ROTATION_PROFILE,
};
