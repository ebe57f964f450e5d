//! Typed failures and the exit codes they map to.
//!
//! Library code creates an [`Error`] where the kind of failure matters to the
//! caller (a script, a test, an operator reading the exit status) and adds
//! context with `anyhow` on the way up; the binary finds the kind again with
//! [`exit_code`], never by reading message text.

use std::{fmt, path::PathBuf};

/// What went wrong, by kind. The message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument, a list file or a rule the user gave is invalid.
    #[error("{0}")]
    BadInput(String),
    /// Nothing is pinned at the pin directory.
    #[error("{0}")]
    NotLoaded(String),
    /// The kernel or the file system refused: not root, or not allowed.
    #[error("{0}")]
    Permission(String),
    /// A map has no room for what was asked.
    #[error("{0}")]
    MapFull(String),
    /// The entry, rule or interface named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Pins or an object of another layout version, or another capacity.
    #[error("{0}")]
    Incompatible(String),
    /// Another filter-ctl held the lock for longer than the command waits.
    #[error("{0}")]
    LockTimeout(String),
    /// A pin, state or runtime directory that another user could tamper with.
    #[error("{0}")]
    Insecure(String),
    /// A file filter-ctl keeps (in the state directory) cannot be read back.
    /// It is left as it is for the operator to look at; nothing overwrites
    /// it until it is moved aside (`--discard-corrupt-state`).
    #[error(
        "{}{}: {reason}; the file was left untouched: repair or remove it, or start with --discard-corrupt-state to move it aside and go on without it",
        path.display(),
        line.map(|n| format!(" line {n}")).unwrap_or_default()
    )]
    Corrupt {
        path: PathBuf,
        /// 1-based line of a line-oriented file, if the fault is on one line.
        line: Option<u64>,
        reason: String,
    },
}

/// Process exit codes, documented in `--help`, the man page and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    Failure = 1,
    BadInput = 2,
    NotLoaded = 3,
    Permission = 4,
    MapFull = 5,
    LockTimeout = 6,
    Insecure = 7,
    Incompatible = 8,
    NotFound = 9,
    Corrupt = 10,
}

impl ExitCode {
    /// Every code with its meaning, for `--help` and the man page.
    pub const TABLE: [(Self, &'static str); 11] = [
        (Self::Success, "success"),
        (Self::Failure, "runtime failure"),
        (Self::BadInput, "bad usage or bad input"),
        (Self::NotLoaded, "no filter is loaded at the pin directory"),
        (Self::Permission, "permission denied (run as root)"),
        (Self::MapFull, "a map is full"),
        (
            Self::LockTimeout,
            "gave up waiting for another filter-ctl's lock",
        ),
        (
            Self::Insecure,
            "a pin, runtime or state directory is not owned by root or is writable by others (state: accessible by others)",
        ),
        (
            Self::Incompatible,
            "pins of another layout version or capacity",
        ),
        (
            Self::NotFound,
            "the entry, rule or interface named does not exist",
        ),
        (
            Self::Corrupt,
            "a state file is corrupt (left untouched; see --discard-corrupt-state)",
        ),
    ];

    #[must_use]
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

impl Error {
    #[must_use]
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::BadInput(_) => ExitCode::BadInput,
            Self::NotLoaded(_) => ExitCode::NotLoaded,
            Self::Permission(_) => ExitCode::Permission,
            Self::MapFull(_) => ExitCode::MapFull,
            Self::NotFound(_) => ExitCode::NotFound,
            Self::Incompatible(_) => ExitCode::Incompatible,
            Self::LockTimeout(_) => ExitCode::LockTimeout,
            Self::Insecure(_) => ExitCode::Insecure,
            Self::Corrupt { .. } => ExitCode::Corrupt,
        }
    }
}

/// The exit code for a failure: the first typed [`Error`] in its chain, else
/// a permission error from the OS, else [`ExitCode::Failure`].
#[must_use]
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(typed) = cause.downcast_ref::<Error>() {
            return typed.exit_code();
        }
    }
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return ExitCode::Permission;
        }
    }
    ExitCode::Failure
}

/// At most `max` characters of `text`, with control and invisible characters
/// escaped (`\u{feff}`, `\0`, ...), and an ellipsis when cut: safe to echo
/// back in an error message whatever the input was.
#[must_use]
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        if c.is_control() || is_invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Characters that print as nothing: zero-width spaces and joiners, the byte
/// order mark, bidirectional controls.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_found_through_context() {
        let err = anyhow::Error::new(Error::MapFull("full".into())).context("adding entries");
        assert_eq!(exit_code(&err), ExitCode::MapFull);
        let plain = anyhow::anyhow!("something else");
        assert_eq!(exit_code(&plain), ExitCode::Failure);
        let denied =
            anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES)).context("opening");
        assert_eq!(exit_code(&denied), ExitCode::Permission);
    }

    #[test]
    fn excerpt_bounds_and_escapes() {
        assert_eq!(excerpt("\u{feff}1.2.3.4", 80), "\\u{feff}1.2.3.4");
        assert_eq!(excerpt("a\0b", 80), "a\\u{0}b");
        let long = "x".repeat(100_000);
        let cut = excerpt(&long, 80);
        assert_eq!(cut.chars().count(), 81);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<u8> = ExitCode::TABLE.iter().map(|(c, _)| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ExitCode::TABLE.len());
    }
}
