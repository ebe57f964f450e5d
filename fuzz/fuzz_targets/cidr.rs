//! Addresses and prefixes as users type them (`"...".parse::<Cidr>()`):
//! whatever parses is normalised, and its display is canonical.
#![no_main]

use std::net::IpAddr;

use filter_ctl::spec::cidr::{Cidr, mapped_note};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cidr) = text.parse::<Cidr>() else {
        return;
    };

    // The display parses back to the same prefix and is a fixed point.
    let shown = cidr.to_string();
    let again: Cidr = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, cidr, "{text:?} -> {shown:?}");
    assert_eq!(again.to_string(), shown, "{text:?}");

    // Normalised: host bits are clear and the prefix fits the family.
    let max = match cidr {
        Cidr::V4 { .. } => 32,
        Cidr::V6 { .. } => 128,
    };
    assert!(cidr.prefix() <= max, "{text:?} -> {cidr:?}");
    assert_eq!(Cidr::new(cidr.ip(), cidr.prefix()), cidr, "{text:?}");
    assert!(cidr.contains(cidr.ip()), "{text:?}");

    // The address typed lies inside; without a prefix it is a single host.
    // An IPv4-mapped IPv6 prefix of /96 or longer means the IPv4 prefix.
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let typed: IpAddr = address
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} parsed, but its address does not: {e}"));
    let ip = match cidr {
        Cidr::V4 { .. } => typed.to_canonical(),
        Cidr::V6 { .. } => typed,
    };
    assert_eq!(
        ip.is_ipv4(),
        matches!(cidr, Cidr::V4 { .. }),
        "{text:?} -> {cidr}"
    );
    // The operator is told exactly when an IPv6 text became an IPv4 entry.
    assert_eq!(
        mapped_note(text, &cidr).is_some(),
        typed.is_ipv6() && ip.is_ipv4(),
        "{text:?} -> {cidr}"
    );
    assert!(cidr.contains(ip), "{text:?}: {cidr} does not contain {ip}");
    if prefix.is_none() {
        assert_eq!(cidr, Cidr::host(ip), "{text:?}");
    }

    // The IPv4-mapped form used by the rate-limit keys.
    let (mapped, mapped_prefix) = cidr.mapped();
    match cidr {
        Cidr::V4 { addr, prefix } => {
            assert_eq!(mapped_prefix, 96 + prefix, "{text:?}");
            assert_eq!(mapped[..10], [0; 10], "{text:?}");
            assert_eq!(mapped[10..12], [0xff, 0xff], "{text:?}");
            assert_eq!(mapped[12..], addr, "{text:?}");
        }
        Cidr::V6 { addr, prefix } => assert_eq!((mapped, mapped_prefix), (addr, prefix)),
    }
});
