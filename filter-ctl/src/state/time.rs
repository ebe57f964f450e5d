//! Wall-clock times as the state files store them (the kernel's monotonic
//! clock means nothing after a reboot), and who is running filter-ctl.

use std::{
    ffi::CStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Milliseconds since the Unix epoch (0 for times before it).
#[must_use]
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[must_use]
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Now, to the second (as stored in Unix seconds).
#[must_use]
pub(crate) fn now_secs() -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
}

/// `2026-05-20T14:03:07.123Z`: RFC 3339, UTC, milliseconds.
#[must_use]
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The real uid running this process and its user name (the uid in
/// decimal when the name cannot be resolved).
#[must_use]
pub fn current_user() -> (u32, String) {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    (uid, user_name(uid).unwrap_or_else(|| uid.to_string()))
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: `passwd` is plain old data; all zeroes is a valid value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid out-parameters and a buffer of the length given; the
    // strings `entry` points to live in `buf`, read before it is dropped.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut result,
        )
    };
    if rc != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buf`.
    let name = unsafe { CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Serde for `SystemTime` as Unix seconds (sub-second parts dropped).
pub(crate) mod secs {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        u64::deserialize(d).map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// Serde for `Option<SystemTime>` as Unix milliseconds (absent: `None`).
pub(crate) mod opt_ms {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer};

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes the field by reference"
    )]
    pub fn serialize<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => s.serialize_some(&super::unix_ms(*time)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(super::from_unix_ms))
    }
}

/// Serde for `SystemTime` as an RFC 3339 UTC string.
pub(crate) mod rfc3339_serde {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        let time = UNIX_EPOCH + Duration::from_millis(1_779_285_787_123);
        assert_eq!(rfc3339(time), "2026-05-20T14:03:07.123Z");
        assert_eq!(humantime::parse_rfc3339(&rfc3339(time)).unwrap(), time);
    }

    #[test]
    fn unix_ms_round_trips() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_unix_ms(unix_ms(time)), time);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn current_user_has_a_name() {
        let (uid, name) = current_user();
        assert!(!name.is_empty());
        if uid == 0 {
            assert_eq!(name, "root");
        }
    }
}
