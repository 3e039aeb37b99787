//! What dive names and creates in a Keycloak: the bootstrap admin, the realm `dive-<code>`, the
//! four DIVE user attributes, the test users of an instance, and the secrets holding their
//! passwords. Instance codes are ISO 3166-1 alpha-3 codes, in any case: names use lower case
//! (`dive-fra`, `testuser-fra-1`), claims and display names upper case (`FRA`).

use std::collections::BTreeMap;

/// Keycloak's bootstrap admin, as every dive instance creates it.
pub const ADMIN_USER: &str = "admin";

/// The user attributes (and token claims) dive declares, in this order everywhere.
pub const DIVE_ATTRIBUTES: [&str; 4] = ["uniqueID", "clearance", "countryOfAffiliation", "acpCOI"];

/// Secret holding the Keycloak admin password of instance `code`.
pub fn admin_password_secret(code: &str) -> String {
    format!("{}/keycloak/admin-password", code.to_ascii_lowercase())
}

/// `dive-<code>`.
pub fn default_realm(code: &str) -> String {
    format!("dive-{}", code.to_ascii_lowercase())
}

/// Codes whose users are also in the Five Eyes community of interest.
const FVEY: [&str; 5] = ["USA", "GBR", "CAN", "AUS", "NZL"];
/// Clearance of test user N (index N - 1).
const USER_CLEARANCES: [&str; 4] = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"];

/// One test user as dive defines it: user N (1..4) of instance CODE is `testuser-<code>-N`,
/// email `testuser-<code>-N@<code>.dive.test`, name `Test` / `User <CODE> N`, with clearance
/// UNCLASSIFIED, CONFIDENTIAL, SECRET, TOP_SECRET for N = 1..4, `uniqueID` = the username,
/// `countryOfAffiliation` = CODE and `acpCOI` = NATO (plus FVEY for USA, GBR, CAN, AUS, NZL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// The four DIVE attributes, each a list of values.
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl TestUser {
    pub fn clearance(&self) -> &str {
        &self.attributes["clearance"][0]
    }
}

/// The test users of instance `code` (any case).
pub fn test_users(code: &str) -> Vec<TestUser> {
    let upper = code.to_ascii_uppercase();
    let lower = code.to_ascii_lowercase();
    let mut coi = vec!["NATO".to_string()];
    if FVEY.contains(&upper.as_str()) {
        coi.push("FVEY".into());
    }
    USER_CLEARANCES
        .iter()
        .enumerate()
        .map(|(i, clearance)| {
            let n = i + 1;
            let username = format!("testuser-{lower}-{n}");
            TestUser {
                email: format!("{username}@{lower}.dive.test"),
                first_name: "Test".into(),
                last_name: format!("User {upper} {n}"),
                attributes: BTreeMap::from([
                    ("uniqueID".to_string(), vec![username.clone()]),
                    ("clearance".to_string(), vec![clearance.to_string()]),
                    ("countryOfAffiliation".to_string(), vec![upper.clone()]),
                    ("acpCOI".to_string(), coi.clone()),
                ]),
                username,
            }
        })
        .collect()
}

/// Secret holding a test user's password: `<code>/users/<username>`.
pub fn user_password_secret(code: &str, username: &str) -> String {
    format!("{}/users/{username}", code.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert_eq!(admin_password_secret("USA"), "usa/keycloak/admin-password");
        assert_eq!(default_realm("Fra"), "dive-fra");
    }

    #[test]
    fn test_users_follow_the_naming_rules() {
        let users = test_users("gbr");
        assert_eq!(users.len(), 4);
        let u = &users[2];
        assert_eq!(u.username, "testuser-gbr-3");
        assert_eq!(u.email, "testuser-gbr-3@gbr.dive.test");
        assert_eq!(u.last_name, "User GBR 3");
        assert_eq!(u.clearance(), "SECRET");
        assert_eq!(u.attributes["uniqueID"], ["testuser-gbr-3"]);
        assert_eq!(u.attributes["countryOfAffiliation"], ["GBR"]);
        assert_eq!(u.attributes["acpCOI"], ["NATO", "FVEY"]);
        assert_eq!(test_users("FRA")[0].attributes["acpCOI"], ["NATO"]);
        assert_eq!(
            users.iter().map(TestUser::clearance).collect::<Vec<_>>(),
            USER_CLEARANCES
        );
        assert_eq!(
            user_password_secret("GBR", "testuser-gbr-1"),
            "gbr/users/testuser-gbr-1"
        );
    }
}
