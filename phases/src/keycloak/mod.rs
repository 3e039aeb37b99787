//! The phase types that set up an instance's Keycloak realm for dive, through the admin client
//! of dive-keycloak. An instance CODE (ISO 3166-1 alpha-3) gets realm `dive-<code>` with display
//! name `DIVE <CODE>`; names use the lower-case code, claims and display names the upper-case one.
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
//! ```yaml
//! - id: realm
//!   type: keycloak.realm
//!   after: [keycloak]
//!   instance: "${params.code}"
//!   url: "${phases.keycloak.output.keycloak_url}"
//! ```

pub(crate) mod client;
pub(crate) mod client_scope;
mod common;
mod realm;
mod user_profile;
mod users;

pub use client::KeycloakClient;
pub use client_scope::{KeycloakClientScope, SCOPE_NAME};
pub(crate) use common::{flag, to_json};
pub use realm::KeycloakRealm;
pub(crate) use user_profile::profile_changes;
pub use user_profile::{CLEARANCES, KeycloakUserProfile};
pub use users::{KeycloakUsers, PASSWORD_LENGTH};
