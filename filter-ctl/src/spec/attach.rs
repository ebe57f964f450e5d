//! How the program attaches: the attach mode and interface names as users
//! give them (`run --iface`, a policy's `interfaces`).

use std::fmt;

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// Longest interface name, in bytes (`IFNAMSIZ` less its NUL).
pub const MAX_IFACE_NAME: usize = 15;

/// Checks that `name` could name a Linux interface (the kernel's
/// `dev_valid_name`): 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace. Whether it exists is for the attach to find out.
pub fn check_iface_name(name: &str) -> Result<(), String> {
    let shown = crate::error::excerpt(name, 40);
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > MAX_IFACE_NAME {
        return Err(format!(
            "interface name '{shown}' is longer than {MAX_IFACE_NAME} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!(
            "'{shown}' is not an interface name (no '/', ':', spaces, '.' or '..')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["eth0", "vdst-1234567", "enp1s0f0np0", "a"] {
            assert_eq!(check_iface_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "eth0:1", "a/b", "eth 0", "sixteen-bytes-xx"] {
            assert!(check_iface_name(bad).is_err(), "{bad}");
        }
    }
}
