//! dive-tls: transport security for everything dive starts. One local certificate authority per
//! dive home ([`Authority`]) issues each instance a certificate for the names it is reached by
//! ([`Certificate`]); every client dive builds trusts that CA and nothing else ([`Trust`]).
//!
//! No storage here: the caller keeps an authority and its certificates as PEM bundles
//! ([`Authority::to_pem`], [`Certificate::to_pem`]) — dive keeps them in its encrypted secret
//! store, so the CA's private key is never a plain file.

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

/// How long the authority itself is valid. Certificates it issues are much shorter-lived (a
/// setting, [`DEFAULT_LIFETIME`]); renewing the authority means re-issuing everything and is not
/// automatic.
pub const AUTHORITY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Default lifetime of an instance certificate.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why a certificate could not be made or read. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("cannot generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

fn invalid(what: &str, message: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        what: what.to_string(),
        message: message.to_string(),
    }
}

/// Splits a bundle (certificate PEM followed by private key PEM) into its two parts.
fn split_bundle<'a>(what: &str, bundle: &'a str) -> Result<(&'a str, &'a str), TlsError> {
    let at = bundle
        .find("-----BEGIN PRIVATE KEY-----")
        .ok_or_else(|| invalid(what, "the bundle has no PKCS#8 private key"))?;
    let (cert, key) = bundle.split_at(at);
    if !cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(what, "the bundle has no certificate"));
    }
    Ok((cert.trim(), key.trim()))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks that differ a little between dive and a container.
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + lifetime;
}

/// The certificate authority of one dive home.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new authority with a fresh P-256 key, valid for [`AUTHORITY_LIFETIME`].
    pub fn generate(home_label: &str) -> Result<Authority, TlsError> {
        let generate = |source| TlsError::Generate {
            what: "the local CA".into(),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "dive");
        dn.push(DnType::CommonName, format!("dive local CA ({home_label})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, AUTHORITY_LIFETIME);
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a bundle written by [`Authority::to_pem`].
    pub fn from_pem(bundle: &str) -> Result<Authority, TlsError> {
        let (cert, key) = split_bundle("the local CA", bundle)?;
        let key = KeyPair::from_pem(key).map_err(|e| invalid("the local CA's key", e))?;
        let issuer = Issuer::from_ca_cert_pem(cert, key)
            .map_err(|e| invalid("the local CA's certificate", e))?;
        Ok(Authority {
            cert_pem: format!("{cert}\n"),
            issuer,
        })
    }

    /// Certificate and private key, PEM, for the secret store.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}{}",
            self.cert_pem,
            self.issuer.key().serialize_pem()
        ))
    }

    /// The CA certificate (public), PEM: what a browser or another machine imports.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the authority itself expires.
    pub fn not_after(&self) -> DateTime<Utc> {
        parse(&self.cert_pem)
            .map(|(_, not_after)| not_after)
            .unwrap_or_default()
    }

    /// What clients trust: this authority alone.
    pub fn trust(&self) -> Trust {
        Trust::from_pem(&self.cert_pem).expect("an authority's own certificate parses")
    }

    /// A server certificate for `names` (IP addresses or DNS names), valid for `lifetime`.
    pub fn issue(&self, names: &[String], lifetime: Duration) -> Result<Certificate, TlsError> {
        let what = format!("a certificate for {}", names.join(", "));
        let generate = |source| TlsError::Generate {
            what: what.clone(),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "dive");
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Certificate::from_pem(&format!("{}{}", cert.pem(), key.serialize_pem()))
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// A server certificate with its private key.
pub struct Certificate {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    names: Vec<String>,
    not_after: DateTime<Utc>,
}

impl Certificate {
    /// Reads a bundle written by [`Certificate::to_pem`].
    pub fn from_pem(bundle: &str) -> Result<Certificate, TlsError> {
        let (cert, key) = split_bundle("a certificate", bundle)?;
        KeyPair::from_pem(key).map_err(|e| invalid("a certificate's key", e))?;
        let (names, not_after) = parse(cert)?;
        Ok(Certificate {
            cert_pem: format!("{cert}\n"),
            key_pem: Zeroizing::new(format!("{key}\n")),
            names,
            not_after,
        })
    }

    /// Certificate and private key, PEM, for the secret store.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}{}", self.cert_pem, *self.key_pem))
    }

    /// The certificate (public), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &Zeroizing<String> {
        &self.key_pem
    }

    /// The names it is valid for, as issued.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The certificate alone, DER: what a server presents.
    pub fn der(&self) -> Vec<u8> {
        pem_der(&self.cert_pem).unwrap_or_default()
    }

    /// Whether it still serves: issued by `authority` for exactly `names`, with more than a third
    /// of `lifetime` left (so it is renewed well before clients would refuse it).
    pub fn serves(&self, authority: &Authority, names: &[String], lifetime: Duration) -> bool {
        let mut want: Vec<&String> = names.iter().collect();
        let mut have: Vec<&String> = self.names.iter().collect();
        want.sort();
        have.sort();
        let left = self.not_after - Utc::now();
        want == have
            && left.to_std().is_ok_and(|left| left > lifetime / 3)
            && authority.issued(&self.cert_pem)
    }
}

impl Authority {
    /// Whether `cert_pem` was signed by this authority (its issuer names this CA and the
    /// signature checks out).
    fn issued(&self, cert_pem: &str) -> bool {
        let Ok(der) = pem_der(cert_pem) else {
            return false;
        };
        let Ok(ca_der) = pem_der(&self.cert_pem) else {
            return false;
        };
        let (Ok((_, cert)), Ok((_, ca))) = (
            x509_parser::parse_x509_certificate(&der),
            x509_parser::parse_x509_certificate(&ca_der),
        ) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// A certificate's subject alternative names and expiry.
fn parse(pem: &str) -> Result<(Vec<String>, DateTime<Utc>), TlsError> {
    let der = pem_der(pem)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid("a certificate", e))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(ip) => names.push(match *ip {
                    [a, b, c, d] => IpAddr::from([*a, *b, *c, *d]).to_string(),
                    _ => <[u8; 16]>::try_from(*ip)
                        .map(|v6| IpAddr::from(v6).to_string())
                        .unwrap_or_default(),
                }),
                _ => {}
            }
        }
    }
    let not_after = x509.validity().not_after.timestamp();
    Ok((
        names,
        DateTime::from_timestamp(not_after, 0).unwrap_or_default(),
    ))
}

fn pem_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid("a certificate", e))?;
    Ok(pem.contents)
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What dive's clients trust: the local CA and nothing else (no public roots), so a server with a
/// certificate from anywhere else is refused.
#[derive(Clone)]
pub struct Trust {
    pem: Arc<str>,
    root: reqwest::Certificate,
}

impl Trust {
    pub fn from_pem(pem: &str) -> Result<Trust, TlsError> {
        let root =
            reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| invalid("the CA", e))?;
        pem_der(pem)?;
        Ok(Trust {
            pem: pem.into(),
            root,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// `builder` trusting this CA only.
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.root.clone())
            .https_only(true)
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust").finish_non_exhaustive()
    }
}

/// The pauses before each new try of a request whose connection could not be made (for another
/// reason than its certificate): nothing of the request was sent then, so sending it again is
/// always safe. A refused connection gets the first pause only. A connection the server closed
/// or reset during the TLS handshake gets them all: a Keycloak taking up a renewed certificate
/// (rereading its files) drops every handshake under way for a moment — 20-35 ms measured here
/// with four clients connecting in a loop, longer on a loaded machine.
const CONNECT_RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Sends `request`, and again after [`CONNECT_RETRY_PAUSES`] while the connection could not be
/// made.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let mut request = request;
    let mut tries = 0;
    loop {
        let again = request.try_clone();
        let result = request.send().await;
        let retries = match &result {
            Err(e) if e.is_connect() && certificate_problem(e).is_none() => {
                if dropped_in_handshake(e) {
                    CONNECT_RETRY_PAUSES.len()
                } else {
                    1
                }
            }
            _ => 0,
        };
        match again {
            Some(again) if tries < retries => {
                tokio::time::sleep(CONNECT_RETRY_PAUSES[tries]).await;
                tries += 1;
                request = again;
            }
            _ => return result,
        }
    }
}

/// Whether the server accepted the connection and then closed or reset it before the TLS
/// handshake ended.
fn dropped_in_handshake(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted
            )
        })
    })
}

/// `e` and its causes, outermost first. An I/O error wrapping another (as the TLS connector's
/// do) does not list it as its source, so the walk steps into it.
fn causes<'e>(
    e: &'e reqwest::Error,
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    let first: &(dyn std::error::Error + 'static) = e;
    std::iter::successors(Some(first), |s| {
        match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        }
    })
}

/// The certificate the server at `url` presents (DER), read by a client trusting `trust` only.
pub async fn served_certificate(trust: &Trust, url: &str) -> Result<Vec<u8>, String> {
    let client = trust
        .client(reqwest::Client::builder())
        .tls_info(true)
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(url)
        .send()
        .await
        .map_err(|e| certificate_problem(&e).unwrap_or_else(|| format!("GET {url}: {e}")))?;
    answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("GET {url}: no certificate presented"))
}

/// How every dive client starts the error of a refused server certificate (another CA, a name
/// it is not valid for, expired): something that waiting will not fix.
pub const CERTIFICATE_REFUSED: &str = "TLS certificate refused";

/// When a request failed because the server's certificate was refused (issued by another CA,
/// not valid for the name, expired), what was wrong ("invalid peer certificate: UnknownIssuer");
/// `None` for every other failure.
pub fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    causes(e).find_map(|c| {
        let text = c.to_string();
        text.find("invalid peer certificate")
            .map(|at| text[at..].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and closes them at once, as Keycloak does with the
    /// handshakes under way when it takes up a renewed certificate: every pause is tried, then
    /// the error is the caller's. A refused connection is tried once more only.
    #[tokio::test]
    async fn connections_dropped_in_the_handshake_are_tried_again() {
        let ca = Authority::generate("test").unwrap();
        let trust = Trust::from_pem(ca.cert_pem()).unwrap();
        let client = trust.client(reqwest::Client::builder()).build().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        let url = format!("https://127.0.0.1:{port}/");
        let err = send(client.get(&url)).await.unwrap_err();
        assert!(err.is_connect() && dropped_in_handshake(&err), "{err:?}");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1 + CONNECT_RETRY_PAUSES.len()
        );
        server.abort();

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}/", free.local_addr().unwrap().port());
        drop(free);
        let started = std::time::Instant::now();
        let err = send(client.get(&url)).await.unwrap_err();
        assert!(err.is_connect() && !dropped_in_handshake(&err), "{err:?}");
        assert!(
            started.elapsed() < CONNECT_RETRY_PAUSES[0] + CONNECT_RETRY_PAUSES[1],
            "a refused connection is tried once more only: {:?}",
            started.elapsed()
        );
    }

    fn names() -> Vec<String> {
        vec![
            "127.0.0.1".into(),
            "localhost".into(),
            "dive-fra-keycloak".into(),
        ]
    }

    #[test]
    fn an_authority_round_trips_and_issues_certificates_it_recognises() {
        let ca = Authority::generate("test").unwrap();
        let again = Authority::from_pem(&ca.to_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let cert = again.issue(&names(), DEFAULT_LIFETIME).unwrap();
        let read = Certificate::from_pem(&cert.to_pem()).unwrap();
        let mut got = read.names().to_vec();
        got.sort();
        let mut want = names();
        want.sort();
        assert_eq!(got, want);
        let days = (read.not_after() - Utc::now()).num_days();
        assert!((89..=90).contains(&days), "{days} days");
        assert!(read.serves(&ca, &names(), DEFAULT_LIFETIME));
    }

    #[test]
    fn a_certificate_is_renewed_for_other_names_another_ca_or_little_time_left() {
        let ca = Authority::generate("a").unwrap();
        let other = Authority::generate("b").unwrap();
        let cert = ca.issue(&names(), DEFAULT_LIFETIME).unwrap();
        assert!(
            !cert.serves(&other, &names(), DEFAULT_LIFETIME),
            "another CA"
        );
        assert!(
            !cert.serves(&ca, &names()[..2], DEFAULT_LIFETIME),
            "other names"
        );
        // Issued for 90 days, but the setting is now a year: less than a third left.
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(!cert.serves(&ca, &names(), year));
    }

    #[test]
    fn bad_bundles_are_named_and_keys_never_shown() {
        let err = Certificate::from_pem("nonsense").unwrap_err().to_string();
        assert!(err.contains("no PKCS#8 private key"), "{err}");
        let ca = Authority::generate("a").unwrap();
        let cert = ca.issue(&names(), DEFAULT_LIFETIME).unwrap();
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
