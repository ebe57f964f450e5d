//! Durations as operators write them (`parse_duration`) and as listings show
//! them (`format_duration`).
#![no_main]

use std::time::Duration;

use filter_ctl::spec::duration::{format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The formatter, on any duration of whole milliseconds (what the parser makes).
    if let Some(bytes) = data.get(..8) {
        let millis = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        check_format(Duration::from_millis(millis));
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(duration) = parse_duration(text) else {
        return;
    };
    // Whole milliseconds: the smallest unit is ms.
    assert_eq!(duration.subsec_nanos() % 1_000_000, 0, "{text:?}");
    // A bare number is seconds.
    let trimmed = text.trim();
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = trimmed.parse().expect("parse_duration accepted it");
        assert_eq!(duration, Duration::from_secs(seconds), "{text:?}");
    }
    // Surrounding spaces do not matter.
    assert_eq!(
        parse_duration(&format!(" {text}\t")),
        Ok(duration),
        "{text:?}"
    );
    check_format(duration);
});

/// `format_duration` shows at most two units (`1d1h`, `2h0m`, `9m58s`,
/// `450ms`): parsing it back gives the duration cut to those two units,
/// exactly, and whole seconds under an hour come back unchanged.
fn check_format(duration: Duration) {
    let shown = format_duration(duration);
    let secs = duration.as_secs();
    let kept_ms: u128 = if secs == 0 {
        duration.as_millis()
    } else {
        let (days, hours, minutes, seconds) =
            (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let kept = if days > 0 {
            u128::from(days) * 86_400 + u128::from(hours) * 3600
        } else if hours > 0 {
            u128::from(hours) * 3600 + u128::from(minutes) * 60
        } else {
            u128::from(minutes) * 60 + u128::from(seconds)
        };
        kept * 1000
    };
    match parse_duration(&shown) {
        Ok(back) => assert_eq!(back.as_millis(), kept_ms, "{duration:?} shown as {shown:?}"),
        // Only a duration beyond what parse_duration counts (u64 milliseconds) may fail.
        Err(e) => assert!(
            kept_ms > u128::from(u64::MAX),
            "{duration:?} shown as {shown:?}, which does not parse: {e}"
        ),
    }
    if duration.subsec_nanos() == 0 && secs < 3600 {
        assert_eq!(parse_duration(&shown), Ok(duration), "{shown:?}");
    }
}
