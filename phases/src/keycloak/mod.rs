//! Keycloak: an admin client ([`KeycloakAdmin`]) and the phase types that set up an instance's
//! realm for dive (see DESIGN.md, "Stacks and names").
//!
//! | type                    | ensures                                                        |
//! |-------------------------|----------------------------------------------------------------|
//! | `keycloak.realm`        | realm `dive-<code>`, enabled, display name `DIVE <CODE>`       |
//! | `keycloak.user-profile` | the four DIVE attributes declared in the realm's user profile  |
//! | `keycloak.client-scope` | scope `dive-attributes` with four claim mappers, realm default |
//! | `keycloak.client`       | public PKCE client `dive-verify` for scripted logins           |
//! | `keycloak.users`        | test users `testuser-<code>-1..4`, passwords in the store      |
//!
//! Every phase takes `instance` (ISO 3166-1 alpha-3 code, any case), `url` (the Keycloak base
//! URL, usually `${phases.ID.output.keycloak_url}`) and an optional `realm` (default
//! `dive-<code>`). They log in as `admin` with the password in secret
//! `<code>/keycloak/admin-password`, share the breaker `keycloak:<CODE>`, and report
//! `changed: false` when a run found everything as wanted. Each module documents its idempotency
//! and its compensation.
//!
//! Also here: [`wait_for_admin_token`] (readiness = the admin API issues a token and answers
//! with it, not a health endpoint) and [`login_claims`] (a password grant on a public client,
//! returning the ID token's claims, for checks).
//!
//! ```yaml
//! - id: realm
//!   type: keycloak.realm
//!   after: [keycloak]
//!   instance: "${params.code}"
//!   url: "${phases.keycloak.output.keycloak_url}"
//! ```

mod admin;
pub(crate) mod client;
pub(crate) mod client_scope;
mod common;
mod login;
mod realm;
pub mod types;
mod user_profile;
mod users;

pub use admin::{KeycloakAdmin, KeycloakError, wait_for_admin_token};
pub use client::KeycloakClient;
pub use client_scope::{KeycloakClientScope, SCOPE_NAME};
pub use common::{ADMIN_USER, DIVE_ATTRIBUTES, admin_password_secret, default_realm};
pub use login::{decode_jwt_claims, login_claims};
pub use realm::KeycloakRealm;
pub use user_profile::{CLEARANCES, KeycloakUserProfile};
pub use users::{KeycloakUsers, TestUser, test_users, user_password_secret};
