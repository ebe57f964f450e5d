//! Rule targets (`"...".parse::<Target>()`): `default`, `tcp/25`,
//! `udp/1000-2000`. Whatever parses displays canonically and parses back.
#![no_main]

use filter_common::{IPPROTO_TCP, IPPROTO_UDP};
use filter_ctl::spec::rule::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = text.parse::<Target>() else {
        return;
    };
    let shown = target.to_string();
    assert_eq!(shown.parse::<Target>(), Ok(target), "{text:?} -> {shown:?}");
    match target {
        Target::Default => assert_eq!(text, "default"),
        Target::Port {
            protocol,
            first,
            last,
        } => {
            assert!(
                protocol == IPPROTO_TCP || protocol == IPPROTO_UDP,
                "{text:?}: protocol {protocol}"
            );
            assert!(first <= last, "{text:?}: {first} > {last}");
            // The protocol's case does not matter; the display is lower case.
            assert_eq!(
                text.to_ascii_lowercase().parse::<Target>(),
                Ok(target),
                "{text:?}"
            );
            assert_eq!(shown, shown.to_ascii_lowercase());
        }
    }
});
