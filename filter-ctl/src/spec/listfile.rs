//! List files: one address or CIDR a line, `#` and `;` start comments, blank
//! lines are ignored (the format ipset and nftables take).
//!
//! Read as a stream with a bounded line length, so memory grows with the
//! entries, never with the bytes of garbage (`/dev/zero`, a binary file);
//! anything but a regular file or `-` (stdin) is refused before it is read
//! (a FIFO without a writer would block forever).

use std::{
    fs::{File, Metadata},
    io::{self, BufRead, BufReader, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, excerpt},
    spec::cidr::Cidr,
};

/// Which address list (a list file feeds one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allowlist",
            Self::Block => "blocklist",
        }
    }
}

/// Longest line accepted, in bytes, without its newline.
pub const MAX_LINE: usize = 4096;
/// Characters of a bad line echoed in an error.
const ECHO: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum ListFileError {
    #[error("{path}: {kind}; give a regular file, or - for standard input")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("reading list file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}:{line}: line longer than {MAX_LINE} bytes (starts with '{start}'); nothing from the file was applied"
    )]
    LineTooLong {
        path: PathBuf,
        line: u64,
        start: String,
    },
    #[error("{path}:{line}: bad entry '{text}': {reason}; nothing from the file was applied")]
    BadEntry {
        path: PathBuf,
        line: u64,
        text: String,
        reason: String,
    },
}

impl From<ListFileError> for Error {
    fn from(err: ListFileError) -> Self {
        match &err {
            ListFileError::Io { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Self::Permission(err.to_string())
            }
            _ => Self::BadInput(err.to_string()),
        }
    }
}

/// Reads the list file at `path` (`-` is standard input).
pub fn read(path: &Path) -> Result<Vec<Cidr>, ListFileError> {
    if path == Path::new("-") {
        return parse(io::stdin().lock(), path);
    }
    let (file, _) = open_regular(path)?;
    parse(BufReader::new(file), path)
}

/// Opens `path` for reading if it is a regular file, and returns it with
/// its metadata. Opens without blocking (a FIFO without a writer would),
/// then looks at what was opened, not at the path: what is checked is what
/// is read, whatever a rename or a symlink does meanwhile.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), ListFileError> {
    let io_err = |source| ListFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let metadata = file.metadata().map_err(io_err)?;
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_char_device() || file_type.is_block_device() {
        Some("a device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(ListFileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok((file, metadata))
}

/// Parses a list from `reader`; `source` names it in errors. Any bad line
/// fails the whole list, naming the line.
pub fn parse(mut reader: impl BufRead, source: &Path) -> Result<Vec<Cidr>, ListFileError> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(256);
    let mut number: u64 = 0;
    loop {
        buf.clear();
        number += 1;
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| ListFileError::Io {
                path: source.to_path_buf(),
                source: e,
            })?;
        if read == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            return Err(ListFileError::LineTooLong {
                path: source.to_path_buf(),
                line: number,
                start: excerpt(&String::from_utf8_lossy(&buf[..ECHO * 4]), ECHO),
            });
        }
        if let Some(cidr) = parse_line(&buf, number, source)? {
            out.push(cidr);
        }
    }
    Ok(out)
}

fn parse_line(bytes: &[u8], number: u64, source: &Path) -> Result<Option<Cidr>, ListFileError> {
    let bad = |reason: String| ListFileError::BadEntry {
        path: source.to_path_buf(),
        line: number,
        text: excerpt(&String::from_utf8_lossy(bytes), ECHO),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    // Editors on some systems start a file with a byte order mark.
    let text = if number == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    let content = text.split(['#', ';']).next().unwrap_or("").trim();
    if content.is_empty() {
        return Ok(None);
    }
    content
        .parse::<Cidr>()
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Cidr>, ListFileError> {
        parse(text.as_bytes(), Path::new("test.txt"))
    }

    #[test]
    fn comments_blanks_and_entries() {
        let list = parse_str(
            "\u{feff}# header\n198.18.0.1\n\n  198.18.1.0/24 ; net\n2001:db8::/32 # v6\r\n",
        )
        .unwrap();
        let text: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["198.18.0.1/32", "198.18.1.0/24", "2001:db8::/32"]);
    }

    #[test]
    fn bad_line_is_named_and_escaped() {
        let err = parse_str("198.18.0.1\n198.18.0.\u{0}1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("test.txt:2:"), "{text}");
        assert!(text.contains("\\u{0}"), "{text}");
        let err = parse_str("198.18.0.1\n\u{feff}198.18.0.2\n").unwrap_err();
        assert!(err.to_string().contains("\\u{feff}"), "{err}");
    }

    #[test]
    fn long_lines_are_refused_without_echoing_them() {
        let long = format!("198.18.0.1\n{}\n", "x".repeat(100_000));
        let err = parse_str(&long).unwrap_err();
        assert!(
            matches!(err, ListFileError::LineTooLong { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().len() < 400);
        let bad = format!("{}\n", "y".repeat(1000));
        assert!(parse_str(&bad).unwrap_err().to_string().len() < 400);
        // Exactly MAX_LINE bytes is still a line (a bad entry here, not too long).
        let edge = format!("{}\n", "z".repeat(MAX_LINE));
        assert!(matches!(
            parse_str(&edge).unwrap_err(),
            ListFileError::BadEntry { .. }
        ));
    }

    #[test]
    fn endless_input_is_bounded() {
        // /dev/zero as a reader: one endless line of NULs.
        let zeros = io::repeat(0).take(1 << 30);
        let err = parse(BufReader::new(zeros), Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ListFileError::LineTooLong { line: 1, .. }));
    }

    #[test]
    fn non_regular_files_are_refused() {
        for (path, kind) in [("/dev/zero", "a device"), ("/", "a directory")] {
            match read(Path::new(path)) {
                Err(ListFileError::NotRegular { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
