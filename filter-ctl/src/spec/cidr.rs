//! Addresses and prefixes as users type them: `198.18.0.1`, `198.18.0.0/15`,
//! `2001:db8::1`, `2001:db8::/32`. Host bits past the prefix are cleared, so
//! `198.18.0.7/24` means `198.18.0.0/24`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::error::excerpt;

/// An IPv4 or IPv6 prefix, normalised (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cidr {
    V4 { addr: [u8; 4], prefix: u8 },
    V6 { addr: [u8; 16], prefix: u8 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(
        "'{0}' is not an IPv4 or IPv6 address (expected e.g. 198.18.0.1, 198.18.0.0/15, 2001:db8::/32)"
    )]
    BadAddress(String),
    #[error("'{token}': prefix length '{prefix}' is not a number")]
    BadPrefix { token: String, prefix: String },
    #[error("'{token}': prefix length {prefix} is out of range (0-{max} for {family})")]
    PrefixOutOfRange {
        token: String,
        prefix: u32,
        max: u8,
        family: &'static str,
    },
}

impl Cidr {
    /// A single address (/32 or /128).
    #[must_use]
    pub fn host(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4 {
                addr: v4.octets(),
                prefix: 32,
            },
            IpAddr::V6(v6) => Self::V6 {
                addr: v6.octets(),
                prefix: 128,
            },
        }
    }

    /// Builds a prefix, clearing host bits. Panics never; `prefix` is clamped by the caller's checks.
    #[must_use]
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                Self::V4 {
                    addr: mask_bytes(v4.octets(), prefix),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                Self::V6 {
                    addr: mask_bytes(v6.octets(), prefix),
                    prefix,
                }
            }
        }
    }

    #[must_use]
    pub fn prefix(&self) -> u8 {
        match self {
            Self::V4 { prefix, .. } | Self::V6 { prefix, .. } => *prefix,
        }
    }

    #[must_use]
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::V4 { addr, .. } => IpAddr::V4(Ipv4Addr::from(*addr)),
            Self::V6 { addr, .. } => IpAddr::V6(Ipv6Addr::from(*addr)),
        }
    }

    /// The prefix in the IPv4-mapped IPv6 space (`::ffff:0:0/96` for IPv4),
    /// as used by the rate-limit and only-from keys.
    #[must_use]
    pub fn mapped(&self) -> ([u8; 16], u8) {
        match self {
            Self::V4 { addr, prefix } => {
                (Ipv4Addr::from(*addr).to_ipv6_mapped().octets(), 96 + prefix)
            }
            Self::V6 { addr, prefix } => (*addr, *prefix),
        }
    }

    /// Whether `ip` lies inside this prefix.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::V4 { addr, prefix }, IpAddr::V4(v4)) => {
                mask_bytes(v4.octets(), *prefix) == *addr
            }
            (Self::V6 { addr, prefix }, IpAddr::V6(v6)) => {
                mask_bytes(v6.octets(), *prefix) == *addr
            }
            _ => false,
        }
    }
}

/// Clears every bit after the first `prefix` bits.
#[must_use]
pub fn mask_bytes<const N: usize>(mut bytes: [u8; N], prefix: u8) -> [u8; N] {
    let prefix = usize::from(prefix);
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bit = i * 8;
        if bit >= prefix {
            *byte = 0;
        } else if prefix - bit < 8 {
            *byte &= 0xffu8 << (8 - (prefix - bit));
        }
    }
    bytes
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match token.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (token, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(excerpt(token, 80)))?;
        let (max, family) = match ip {
            IpAddr::V4(_) => (32u8, "IPv4"),
            IpAddr::V6(_) => (128u8, "IPv6"),
        };
        let prefix = match prefix {
            None => max,
            Some(text) => {
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadPrefix {
                        token: excerpt(token, 80),
                        prefix: excerpt(text, 20),
                    });
                }
                let value: u32 = text.parse().map_err(|_| CidrError::PrefixOutOfRange {
                    token: excerpt(token, 80),
                    prefix: u32::MAX,
                    max,
                    family,
                })?;
                if value > u32::from(max) {
                    return Err(CidrError::PrefixOutOfRange {
                        token: excerpt(token, 80),
                        prefix: value,
                        max,
                        family,
                    });
                }
                u8::try_from(value).unwrap_or(max)
            }
        };
        // The program sees IPv4 sources only as IPv4: an IPv4-mapped entry
        // (::ffff:a.b.c.d, pasted from dual-stack logs) means that IPv4 prefix.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Self::new(IpAddr::V4(v4), prefix - 96));
        }
        Ok(Self::new(ip, prefix))
    }
}

/// A note for the operator when `token` was written in IPv4-mapped IPv6
/// form and parsed into the IPv4 prefix `cidr` means.
#[must_use]
pub fn mapped_note(token: &str, cidr: &Cidr) -> Option<String> {
    let addr = token.split_once('/').map_or(token, |(a, _)| a);
    (matches!(cidr, Cidr::V4 { .. }) && addr.parse::<Ipv6Addr>().is_ok()).then(|| {
        format!(
            "{} is an IPv4-mapped IPv6 address: using the IPv4 entry {cidr} (the filter sees such sources as IPv4)",
            excerpt(token, 80)
        )
    })
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Bytes of the longest text of a prefix: eight groups of four hex digits
/// and seven colons, then `/128`.
const TEXT_MAX: usize = 43;

/// The text of a [`Cidr`] (what `Display` writes), in a buffer of its own.
#[derive(Clone, Copy)]
pub struct CidrText {
    bytes: [u8; TEXT_MAX],
    len: usize,
}

impl std::ops::Deref for CidrText {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII digits, hex letters, '.', ':' and '/' are pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl CidrText {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_decimal(&mut self, value: u8) {
        if value >= 100 {
            self.push(&[b'0' + value / 100]);
        }
        if value >= 10 {
            self.push(&[b'0' + value / 10 % 10]);
        }
        self.push(&[b'0' + value % 10]);
    }

    fn push_v4(&mut self, addr: [u8; 4]) {
        for (i, octet) in addr.into_iter().enumerate() {
            if i > 0 {
                self.push(b".");
            }
            self.push_decimal(octet);
        }
    }

    /// Colon-separated groups, in lowercase hex without leading zeros.
    fn push_groups(&mut self, groups: &[u16]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                self.push(b":");
            }
            let mut shift = 12;
            while shift > 0 && group >> shift == 0 {
                shift -= 4;
            }
            loop {
                self.push(&[HEX[usize::from((group >> shift) & 0xf)]]);
                if shift == 0 {
                    break;
                }
                shift -= 4;
            }
        }
    }

    /// As `Ipv6Addr`'s `Display` (RFC 5952): the longest run of two or more
    /// zero groups (the first of equals) as `::`, IPv4-mapped addresses as
    /// `::ffff:a.b.c.d`.
    fn push_v6(&mut self, addr: [u8; 16]) {
        let ip = Ipv6Addr::from(addr);
        if let Some(v4) = ip.to_ipv4_mapped() {
            self.push(b"::ffff:");
            self.push_v4(v4.octets());
            return;
        }
        let groups = ip.segments();
        let (mut best_start, mut best_len, mut start, mut len) = (0, 0, 0, 0);
        for (i, &group) in groups.iter().enumerate() {
            if group == 0 {
                if len == 0 {
                    start = i;
                }
                len += 1;
                if len > best_len {
                    (best_start, best_len) = (start, len);
                }
            } else {
                len = 0;
            }
        }
        if best_len > 1 {
            self.push_groups(&groups[..best_start]);
            self.push(b"::");
            self.push_groups(&groups[best_start + best_len..]);
        } else {
            self.push_groups(&groups);
        }
    }
}

impl Cidr {
    /// The prefix's text, as `Display` writes it, without the formatting
    /// machinery: a million-entry state record writes a million of them.
    #[must_use]
    pub fn text(&self) -> CidrText {
        let mut text = CidrText {
            bytes: [0; TEXT_MAX],
            len: 0,
        };
        match *self {
            Self::V4 { addr, .. } => text.push_v4(addr),
            Self::V6 { addr, .. } => text.push_v6(addr),
        }
        text.push(b"/");
        text.push_decimal(self.prefix());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Cidr::text` against the standard library's `Display` of the same
    /// address: zero runs of every length and place, IPv4-mapped ones.
    #[test]
    #[expect(clippy::cast_possible_truncation, reason = "random bits")]
    fn text_is_what_the_standard_library_writes() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases: Vec<IpAddr> = vec![
            "::".parse().unwrap(),
            "::1".parse().unwrap(),
            "1::".parse().unwrap(),
            "::ffff:198.18.0.1".parse().unwrap(),
            "::198.18.0.1".parse().unwrap(),
            "1:0:0:2:0:0:0:3".parse().unwrap(),
            "1:0:0:2:0:0:3:4".parse().unwrap(),
            "1:0:2:0:3:0:4:0".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "10.0.100.9".parse().unwrap(),
        ];
        for _ in 0..20_000 {
            let bits = next();
            // Groups that are zero, small, or random, by the random bits.
            let groups: [u16; 8] = std::array::from_fn(|i| match (bits >> (2 * i)) & 3 {
                0 | 1 => 0,
                2 => (next() % 0x100) as u16,
                _ => next() as u16,
            });
            cases.push(IpAddr::V6(Ipv6Addr::from(groups)));
            cases.push(IpAddr::V4(Ipv4Addr::from(next() as u32)));
        }
        for ip in cases {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            for prefix in [max, max / 2, 0] {
                let cidr = Cidr::new(ip, prefix);
                assert_eq!(
                    &*cidr.text(),
                    format!("{}/{prefix}", cidr.ip()),
                    "{ip}/{prefix}"
                );
            }
        }
    }

    #[test]
    fn parses_hosts_and_prefixes() {
        let cases = [
            ("198.18.0.1", "198.18.0.1/32"),
            ("198.18.0.0/15", "198.18.0.0/15"),
            ("198.18.3.7/24", "198.18.3.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("2001:db8:ffff::/32", "2001:db8::/32"),
            ("2001:db8::/127", "2001:db8::/127"),
            ("::/0", "::/0"),
            ("2001:db8::ff/121", "2001:db8::80/121"),
        ];
        for (input, expected) in cases {
            let cidr: Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(cidr.to_string(), expected, "{input}");
        }
    }

    #[test]
    fn rejects_bad_input_naming_the_token() {
        let cases = [
            ("198.18.0.256", "198.18.0.256"),
            ("198.18.0.1/33", "out of range"),
            ("2001:db8::/129", "out of range"),
            ("198.18.0.1/", "not a number"),
            ("198.18.0.1/-1", "not a number"),
            ("198.18.0.1/24/2", "not a number"),
            ("host.example", "host.example"),
            ("", "not an IPv4"),
            ("198.18.0.1/99999999999", "out of range"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<Cidr>().expect_err(input).to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(err.contains(input) || input.is_empty(), "{input}: {err}");
        }
    }

    #[test]
    fn ipv4_mapped_means_ipv4() {
        let cases = [
            ("::ffff:198.18.0.1", "198.18.0.1/32"),
            ("::ffff:198.18.0.0/120", "198.18.0.0/24"),
            ("::ffff:c612:1", "198.18.0.1/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ];
        for (input, expected) in cases {
            let cidr: Cidr = input.parse().unwrap();
            assert_eq!(cidr.to_string(), expected, "{input}");
            assert!(mapped_note(input, &cidr).is_some(), "{input}");
        }
        let plain: Cidr = "198.18.0.1".parse().unwrap();
        assert_eq!(mapped_note("198.18.0.1", &plain), None);
        // Shorter than /96 covers more than the mapped space: stays IPv6.
        let wide: Cidr = "::ffff:0:0/80".parse().unwrap();
        assert!(matches!(wide, Cidr::V6 { .. }));
    }

    #[test]
    fn long_tokens_are_cut_in_errors() {
        let long = format!("\u{feff}{}", "9".repeat(100_000));
        let err = long.parse::<Cidr>().unwrap_err().to_string();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn contains_and_mapped() {
        let net: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(net.contains("198.19.255.255".parse().unwrap()));
        assert!(!net.contains("198.20.0.0".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let (mapped, prefix) = net.mapped();
        assert_eq!(prefix, 111);
        assert_eq!(&mapped[10..12], &[0xff, 0xff]);
        assert_eq!(&mapped[12..], &[198, 18, 0, 0]);
    }
}
