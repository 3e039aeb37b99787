//! A secret value that does not print itself, secret names, and generated values.

use crate::error::SecretError;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// A secret value. `Debug` and `Display` print `[redacted]`; [`Secret::expose`] is the one way
/// to the value. Not serialisable, so it cannot slip into an output or JSON by accident. Its
/// memory is zeroed when it is dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The value. Every call site is a place where the secret leaves the store: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// The instance codes (lower case) a secret belongs to by its name: `fra/...` to FRA,
/// `federation/usa/fra/...` to both sides of the pair; names of another shape to none.
pub fn owners(name: &str) -> Vec<&str> {
    let is_code = |p: &&str| p.len() == 3 && p.bytes().all(|b| b.is_ascii_lowercase());
    let parts: Vec<&str> = name.split('/').collect();
    let owners = match parts.as_slice() {
        ["federation", a, b, ..] => vec![*a, *b],
        [code, _, ..] => vec![*code],
        _ => vec![],
    };
    owners.into_iter().filter(is_code).collect()
}

/// Checks a secret name: `/`-separated segments of `a-z`, `0-9`, `-`, `_`, `.`, each starting
/// with a letter or digit (so no empty, `.` or `..` segments), at most 255 bytes.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let invalid = |why: String| {
        Err(SecretError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return invalid("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return invalid(format!("it is longer than {MAX_NAME_LEN} bytes"));
    }
    for (i, segment) in name.split('/').enumerate() {
        let Some(first) = segment.chars().next() else {
            return invalid(format!("segment {} is empty", i + 1));
        };
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return invalid(format!(
                "segment `{segment}` must start with a lower case letter or digit"
            ));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
        {
            return invalid(format!("`{}` is not allowed", bad.escape_default()));
        }
    }
    Ok(())
}

/// The characters a generated secret is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `A-Z a-z 0-9` (62 characters, about 5.95 bits each).
    #[default]
    Alphanumeric,
    /// `a-z 0-9`, for systems that fold case.
    Lowercase,
    /// `0-9 a-f`.
    Hex,
    /// `A-Z a-z 0-9 - _` (URL- and file-name-safe).
    Base64url,
    /// `0-9`.
    Digits,
}

impl Alphabet {
    pub const ALL: [Alphabet; 5] = [
        Alphabet::Alphanumeric,
        Alphabet::Lowercase,
        Alphabet::Hex,
        Alphabet::Base64url,
        Alphabet::Digits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alphabet::Alphanumeric => "alphanumeric",
            Alphabet::Lowercase => "lowercase",
            Alphabet::Hex => "hex",
            Alphabet::Base64url => "base64url",
            Alphabet::Digits => "digits",
        }
    }

    pub fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Alphanumeric => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            }
            Alphabet::Lowercase => b"abcdefghijklmnopqrstuvwxyz0123456789",
            Alphabet::Hex => b"0123456789abcdef",
            Alphabet::Base64url => {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            }
            Alphabet::Digits => b"0123456789",
        }
    }

    /// A uniformly random value of `length` characters, from the thread's CSPRNG (ChaCha,
    /// seeded from the operating system).
    pub fn generate(self, length: usize) -> Secret {
        let chars = self.chars();
        let mut rng = rand::rng();
        let mut value = Zeroizing::new(String::with_capacity(length));
        for _ in 0..length {
            value.push(chars[rng.random_range(0..chars.len())] as char);
        }
        Secret(value)
    }
}

impl FromStr for Alphabet {
    type Err = String;

    fn from_str(s: &str) -> Result<Alphabet, String> {
        Alphabet::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Alphabet::ALL.iter().map(|a| a.name()).collect();
                format!("alphabet `{s}` is not one of {}", names.join(", "))
            })
    }
}

// By hand rather than derived: serde's "unknown variant" wording is what the engine reads as an
// unknown phase type.
impl<'de> Deserialize<'de> for Alphabet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Alphabet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_belong_to_the_instances_their_names_start_with() {
        assert_eq!(owners("fra/keycloak/admin-password"), ["fra"]);
        // A federation secret belongs to both sides of its pair.
        assert_eq!(owners("federation/usa/gbr/client-secret"), ["usa", "gbr"]);
        assert_eq!(owners("federation/fra/usa/client-secret"), ["fra", "usa"]);
        assert!(owners("dive/ca/key").is_empty());
        assert!(owners("ca/authority").is_empty());
        assert!(owners("fra").is_empty());
    }

    #[test]
    fn names() {
        for ok in [
            "usa/keycloak/admin-password",
            "federation/usa/fra/client-secret",
            "a",
            "0.x_y-z",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "A", "a/./b", "a/../b", ".a", "-a", "a b", "é", "a\0b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn generated_values_use_their_alphabet() {
        for a in Alphabet::ALL {
            assert_eq!(a.name().parse(), Ok(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
            let s = a.generate(200);
            assert_eq!(s.len(), 200);
            assert!(s.expose().bytes().all(|b| a.chars().contains(&b)), "{a:?}");
        }
        assert_ne!(
            Alphabet::Alphanumeric.generate(32).expose(),
            Alphabet::Alphanumeric.generate(32).expose()
        );
    }

    #[test]
    fn secret_does_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s} {s:?} {s:#?}"),
            "[redacted] [redacted] [redacted]"
        );
        assert_eq!(s.expose(), "hunter2");
    }
}
