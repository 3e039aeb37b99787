//! Assertions on `dive federation verify --json` documents, shared by the federation tests.

use serde_json::{Value, json};

/// The direction `from`→`to` of a verification document.
#[track_caller]
pub fn direction<'a>(doc: &'a Value, from: &str, to: &str) -> &'a Value {
    doc["directions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["from"] == from && d["to"] == to)
        .unwrap_or_else(|| panic!("direction {from}→{to} in {doc}"))
}

/// Each of the four test users of `code` logged in with exactly the claims dive gives them:
/// `uniqueID` = the username `testuser-<code>-N`, clearance UNCLASSIFIED, CONFIDENTIAL, SECRET,
/// TOP_SECRET for N = 1..4, `countryOfAffiliation` = CODE, and `acpCOI` = `coi` (sorted).
#[track_caller]
pub fn users_have_their_claims(d: &Value, code: &str, coi: &[&str]) {
    assert_eq!(d["ok"], true, "{d}");
    let users = d["users"].as_array().unwrap();
    assert_eq!(users.len(), 4, "{d}");
    let lower = code.to_lowercase();
    let clearances = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"];
    for (i, u) in users.iter().enumerate() {
        let name = format!("testuser-{lower}-{}", i + 1);
        assert_eq!(u["username"], name.as_str());
        assert_eq!(u["ok"], true, "{u}");
        assert_eq!(u["mismatches"], json!([]), "{u}");
        assert_eq!(u["claims"]["uniqueID"], name.as_str(), "{u}");
        assert_eq!(u["claims"]["clearance"], clearances[i], "{u}");
        assert_eq!(u["claims"]["countryOfAffiliation"], code, "{u}");
        let mut got: Vec<&str> = u["claims"]["acpCOI"]
            .as_array()
            .unwrap_or_else(|| panic!("acpCOI is a list: {u}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, coi, "{u}");
        assert!(u["latency_ms"].as_u64().unwrap() > 0, "{u}");
    }
    let latencies: Vec<u64> = users
        .iter()
        .map(|u| u["latency_ms"].as_u64().unwrap())
        .collect();
    eprintln!(
        "{} → {}: 4 users in {} ms; logins {latencies:?} ms",
        d["from"].as_str().unwrap(),
        d["to"].as_str().unwrap(),
        d["latency_ms"]
    );
}
