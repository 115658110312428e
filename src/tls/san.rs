//! The client SAN check of envoyproxy/ratelimit (`GRPC_CLIENT_TLS_SAN`, `--grpc-tls-client-san`).
//!
//! The reference verifies the client's chain once more with Go's `x509.VerifyOptions.DNSName`
//! set to the configured name, so the rule is Go's `Certificate.VerifyHostname`, applied to the
//! leaf certificate:
//!
//! * a name that is an IP address (optionally in `[ ]`) matches an IP address SAN equal to it,
//!   and nothing else;
//! * any other name is compared, ASCII case-insensitively, with each DNS SAN: a SAN whose
//!   leftmost label is `*` stands for exactly one label, and one trailing dot of the name is
//!   ignored, when both the name and the SAN are well-formed host names (letters, digits, `-`
//!   not first in a label, `_`); otherwise only an exact match counts;
//! * the subject's common name, e-mail, URI and other SANs are never looked at.
//!
//! Pure: certificates are read from their DER bytes.

use std::fmt;
use std::net::IpAddr;

/// A certificate whose subject alternative names cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct Malformed(&'static str);

/// The DNS names and IP addresses among a certificate's subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    /// `dNSName` entries, as written.
    pub dns: Vec<String>,
    /// `iPAddress` entries.
    pub ips: Vec<IpAddr>,
}

impl fmt::Display for SubjectAltNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .dns
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(self.ips.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The subjectAltName extension's id, 2.5.29.17, as DER content bytes.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

impl SubjectAltNames {
    /// The SANs of the DER-encoded certificate `cert` (none when it has no SAN extension).
    pub fn of(cert: &[u8]) -> Result<SubjectAltNames, Malformed> {
        let certificate = Der::new(cert).single(SEQUENCE, "certificate")?;
        let tbs = Der::new(certificate).first(SEQUENCE, "tbsCertificate")?;
        let mut fields = Der::new(tbs);
        let mut names = None;
        while let Some((tag, extensions)) = fields.next()? {
            // extensions [3] EXPLICIT, the last field of the tbsCertificate
            if tag != EXTENSIONS {
                continue;
            }
            let mut list = Der::new(Der::new(extensions).single(SEQUENCE, "extensions")?);
            while let Some((tag, extension)) = list.next()? {
                if tag != SEQUENCE {
                    return Err(Malformed("an extension is not a SEQUENCE"));
                }
                let mut parts = Der::new(extension);
                let id = parts.expect(OID, "extension id")?;
                if id != SAN_OID {
                    continue;
                }
                let mut value = parts.expect_any("extension value")?;
                if value.0 == BOOLEAN {
                    value = parts.expect_any("extension value")?;
                }
                if value.0 != OCTET_STRING {
                    return Err(Malformed(
                        "the SAN extension's value is not an OCTET STRING",
                    ));
                }
                if names.is_some() {
                    return Err(Malformed("two SAN extensions"));
                }
                names = Some(general_names(value.1)?);
            }
        }
        Ok(names.unwrap_or_default())
    }

    /// Whether `wanted` matches one of these names, by Go's `VerifyHostname` rule.
    pub fn matches(&self, wanted: &str) -> bool {
        let bare = wanted
            .strip_prefix('[')
            .and_then(|w| w.strip_suffix(']'))
            .unwrap_or(wanted);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.ips.iter().any(|presented| same_ip(*presented, ip));
        }
        let wanted = wanted.to_ascii_lowercase();
        let wanted_is_host = is_host_name(&wanted, false);
        self.dns.iter().any(|presented| {
            if wanted_is_host && is_host_name(presented, true) {
                wildcard_match(presented, &wanted)
            } else {
                exact_match(presented, &wanted)
            }
        })
    }
}

/// The `GeneralNames` SEQUENCE in `value`: its dNSName and iPAddress entries.
fn general_names(value: &[u8]) -> Result<SubjectAltNames, Malformed> {
    let mut list = Der::new(Der::new(value).single(SEQUENCE, "GeneralNames")?);
    let mut names = SubjectAltNames::default();
    while let Some((tag, content)) = list.next()? {
        match tag {
            DNS_NAME => {
                // An IA5String: ASCII only, as Go's parser insists.
                if !content.is_ascii() {
                    return Err(Malformed("a DNS SAN is not ASCII"));
                }
                let name = std::str::from_utf8(content).map_err(|_| Malformed("a DNS SAN"))?;
                names.dns.push(name.to_owned());
            }
            IP_ADDRESS => {
                let ip = if let Ok(v4) = <[u8; 4]>::try_from(content) {
                    IpAddr::from(v4)
                } else if let Ok(v6) = <[u8; 16]>::try_from(content) {
                    IpAddr::from(v6)
                } else {
                    return Err(Malformed("an IP SAN is neither 4 nor 16 bytes"));
                };
                names.ips.push(ip);
            }
            _ => {}
        }
    }
    Ok(names)
}

/// Go's `net.IP.Equal`: an IPv4 address equals its IPv4-mapped IPv6 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let wide = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    wide(a) == wide(b)
}

/// Whether `name` is a well-formed host name (Go's `validHostname`): as the name asked for
/// (`pattern` false, one trailing dot allowed) or as a SAN (`pattern` true, a leftmost `*`
/// label allowed).
fn is_host_name(name: &str, pattern: bool) -> bool {
    let name = if pattern {
        name
    } else {
        name.strip_suffix('.').unwrap_or(name)
    };
    if name.is_empty() || name == "*" {
        return false;
    }
    name.split('.').enumerate().all(|(i, label)| {
        if label.is_empty() {
            return false;
        }
        if pattern && i == 0 && label == "*" {
            return true;
        }
        label
            .bytes()
            .enumerate()
            .all(|(j, c)| c.is_ascii_alphanumeric() || c == b'_' || (c == b'-' && j != 0))
    })
}

/// Go's `matchExactly`: equal ignoring ASCII case, and neither empty nor a lone dot.
fn exact_match(presented: &str, wanted: &str) -> bool {
    let meaningful = |s: &str| !s.is_empty() && s != ".";
    meaningful(presented) && meaningful(wanted) && presented.eq_ignore_ascii_case(wanted)
}

/// Go's `matchHostnames`: label by label, a leftmost `*` standing for any one label; one
/// trailing dot of `wanted` is ignored.
fn wildcard_match(presented: &str, wanted: &str) -> bool {
    let wanted = wanted.strip_suffix('.').unwrap_or(wanted);
    if presented.is_empty() || wanted.is_empty() {
        return false;
    }
    let presented: Vec<&str> = presented.split('.').collect();
    let wanted: Vec<&str> = wanted.split('.').collect();
    presented.len() == wanted.len()
        && presented
            .iter()
            .zip(&wanted)
            .enumerate()
            .all(|(i, (p, w))| (i == 0 && *p == "*") || p.eq_ignore_ascii_case(w))
}

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `extensions [3] EXPLICIT` in a tbsCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IMPLICIT IA5String` in a GeneralName.
const DNS_NAME: u8 = 0x82;
/// `iPAddress [7] IMPLICIT OCTET STRING` in a GeneralName.
const IP_ADDRESS: u8 = 0x87;

/// A reader of consecutive DER elements (single-byte tags, definite lengths).
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    /// The next element's tag and content, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u8, &'a [u8])>, Malformed> {
        let [tag, first, rest @ ..] = self.rest else {
            return if self.rest.is_empty() {
                Ok(None)
            } else {
                Err(Malformed("truncated element"))
            };
        };
        if tag & 0x1f == 0x1f {
            return Err(Malformed("multi-byte tag"));
        }
        let (len, rest) = match *first {
            short @ 0..=0x7f => (usize::from(short), rest),
            0x80 => return Err(Malformed("indefinite length")),
            long => {
                let count = usize::from(long & 0x7f);
                if count > 4 || rest.len() < count {
                    return Err(Malformed("bad length"));
                }
                let len = rest[..count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, &rest[count..])
            }
        };
        if rest.len() < len {
            return Err(Malformed("element longer than its container"));
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(Some((*tag, content)))
    }

    /// The next element, which must exist.
    fn expect_any(&mut self, what: &'static str) -> Result<(u8, &'a [u8]), Malformed> {
        self.next()?.ok_or(Malformed(what))
    }

    /// The next element's content, which must have tag `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
        match self.next()? {
            Some((found, content)) if found == tag => Ok(content),
            _ => Err(Malformed(what)),
        }
    }

    /// The first element's content, which must have tag `tag` (what follows is not read).
    fn first(mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
        self.expect(tag, what)
    }

    /// The content of the only element, which must have tag `tag`.
    fn single(mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
        let content = self.expect(tag, what)?;
        if self.rest.is_empty() {
            Ok(content)
        } else {
            Err(Malformed(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn names(dns: &[&str], ips: &[&str]) -> SubjectAltNames {
        SubjectAltNames {
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn dns_names_match_as_go_matches_them() {
        let gateway = names(&["*.envoy-gateway-system"], &[]);
        // The wildcard stands for exactly one label, even over a single-label suffix (which
        // browsers and rustls refuse, and Go allows).
        assert!(gateway.matches("envoy.envoy-gateway-system"));
        assert!(gateway.matches("ENVOY.Envoy-Gateway-System"));
        assert!(
            gateway.matches("envoy.envoy-gateway-system."),
            "one trailing dot"
        );
        assert!(!gateway.matches("envoy.envoy-gateway-system.."));
        assert!(!gateway.matches("a.envoy.envoy-gateway-system"));
        assert!(!gateway.matches("envoy-gateway-system"));
        // A name that is no host name matches only a SAN written the same way.
        assert!(gateway.matches("*.envoy-gateway-system"));
        assert!(!gateway.matches("*"));

        let plain = names(&["client.floodgate.test", "under_score.test"], &[]);
        assert!(plain.matches("client.floodgate.test"));
        assert!(plain.matches("Client.Floodgate.Test"));
        assert!(plain.matches("under_score.test"));
        assert!(!plain.matches("floodgate.test"));
        assert!(!plain.matches(""));
        // Patterns that are not a whole leftmost `*` label are compared as plain text.
        let partial = names(&["f*.example.com", "a.*.example.com", "example.com."], &[]);
        assert!(!partial.matches("foo.example.com"));
        assert!(!partial.matches("a.b.example.com"));
        assert!(partial.matches("f*.example.com"));
        assert!(!partial.matches("example.com"), "a SAN with a trailing dot");
        assert!(partial.matches("example.com."), "matched exactly");
        assert!(!names(&["-bad.example"], &[]).matches("x.example"));
    }

    #[test]
    fn ip_addresses_match_ip_sans_only() {
        let sans = names(&["127.0.0.1", "localhost"], &["10.0.0.7", "2001:db8::1"]);
        assert!(sans.matches("10.0.0.7"));
        assert!(
            sans.matches("::ffff:10.0.0.7"),
            "Go's IPv4-in-IPv6 equality"
        );
        assert!(sans.matches("2001:db8::1"));
        assert!(sans.matches("[2001:db8::1]"));
        assert!(sans.matches("2001:DB8:0::1"));
        assert!(
            !sans.matches("127.0.0.1"),
            "a DNS SAN spelling an address does not count"
        );
        assert!(sans.matches("localhost"));
        assert!(!names(&["10.0.0.7"], &[]).matches("10.0.0.7"));
    }

    fn certificate(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn sans_are_read_from_certificates() {
        let mut params = CertificateParams::new(vec!["*.envoy-gateway-system".to_owned()]).unwrap();
        params.subject_alt_names.extend([
            SanType::IpAddress("192.0.2.1".parse().unwrap()),
            SanType::IpAddress("2001:db8::2".parse().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::URI("spiffe://cluster.local/ns/x/sa/y".try_into().unwrap()),
        ]);
        params
            .distinguished_name
            .push(DnType::CommonName, "common.example.com");
        let sans = SubjectAltNames::of(&certificate(params)).unwrap();
        assert_eq!(
            sans,
            names(&["*.envoy-gateway-system"], &["192.0.2.1", "2001:db8::2"])
        );
        assert_eq!(
            sans.to_string(),
            "DNS:*.envoy-gateway-system, IP:192.0.2.1, IP:2001:db8::2"
        );
        assert!(
            !sans.matches("spiffe://cluster.local/ns/x/sa/y"),
            "URIs are not read"
        );
        assert!(!sans.matches("ops@example.com"));
    }

    #[test]
    fn the_common_name_is_not_a_san() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "client.floodgate.test");
        let sans = SubjectAltNames::of(&certificate(params)).unwrap();
        assert_eq!(sans, SubjectAltNames::default());
        assert_eq!(sans.to_string(), "none");
        assert!(!sans.matches("client.floodgate.test"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let der = certificate(CertificateParams::new(vec!["a.test".to_owned()]).unwrap());
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert!(SubjectAltNames::of(&der[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(SubjectAltNames::of(&trailing).is_err());
        assert!(SubjectAltNames::of(&[0x30, 0x80, 0, 0]).is_err());
        assert!(SubjectAltNames::of(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(SubjectAltNames::of(b"not DER at all").is_err());
    }
}
