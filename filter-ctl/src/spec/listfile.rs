//! List files: one address or CIDR a line, `#` and `;` start comments, blank
//! lines are ignored (the format ipset and nftables take).
//!
//! Read as a stream with a bounded line length, so memory grows with the
//! entries, never with the bytes of garbage (`/dev/zero`, a binary file);
//! anything but a regular file or `-` (stdin) is refused before it is read
//! (a FIFO without a writer would block forever).

use std::{
    fs::{File, Metadata},
    io::{self, BufRead, BufReader},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
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
    parse(BufReader::with_capacity(1 << 16, file), path)
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

/// Bytes of lines read before they are handed to a parsing thread.
const BATCH_BYTES: usize = 1 << 20;
/// Parsing threads at most (parsing is most of reading a large list).
const MAX_PARSERS: usize = 4;

/// Consecutive lines of a list: `text` holds them, each ended by `\n`; the
/// first is line `first`.
struct Lines {
    first: u64,
    text: Vec<u8>,
}

/// What the reader hands a parsing thread: lines, or the error that
/// stopped reading (passed on in its place, so that errors stay in order).
type Batch = Result<Lines, ListFileError>;

/// Parses a list from `reader`; `source` names it in errors. Any bad line
/// fails the whole list, naming the line (the first bad one).
///
/// Lines are read here, in batches of about [`BATCH_BYTES`], and parsed on
/// up to [`MAX_PARSERS`] threads, batch `k` on thread `k % n`, their
/// results taken in batch order; an input of one batch is parsed here.
/// Batches in flight are bounded, so memory still grows with the entries.
pub fn parse(reader: impl BufRead, source: &Path) -> Result<Vec<Cidr>, ListFileError> {
    let mut batches = BatchReader {
        reader,
        source,
        next_line: 1,
        unfinished: Vec::new(),
        ended: false,
    };
    let (first, failed) = batches.next_batch();
    if failed.is_some() || batches.ended {
        // The lines before a read error may hold the first bad entry.
        let cidrs = parse_lines(&first, source)?;
        return failed.map_or(Ok(cidrs), Err);
    }
    let parsers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, MAX_PARSERS);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut to_parser = Vec::new();
        let mut from_parser = Vec::new();
        for _ in 0..parsers {
            let (batch_in, batches) = mpsc::sync_channel::<Batch>(1);
            let (results, result_out) = mpsc::sync_channel(1);
            scope.spawn(move || {
                for batch in batches {
                    let parsed = batch.and_then(|lines| parse_lines(&lines, source));
                    if results.send(parsed).is_err() {
                        break;
                    }
                }
            });
            to_parser.push(batch_in);
            from_parser.push(result_out);
        }
        let stop = &stop;
        // The results, in batch order, on a thread of their own: this one
        // holds `reader`, which may not leave it (standard input's lock).
        let collector = scope.spawn(move || {
            let mut out = Vec::new();
            for k in 0.. {
                match from_parser[k % parsers].recv() {
                    Ok(Ok(mut cidrs)) => out.append(&mut cidrs),
                    Ok(Err(err)) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                    Err(_) => break,
                }
            }
            Ok(out)
        });
        // Batch `k` goes to parser `k % parsers`; a read error goes after
        // the lines read before it, as a batch of its own, and ends reading.
        let mut k = 0;
        let mut read = (first, None);
        'reading: loop {
            let (lines, failed) = read;
            let end = batches.ended || failed.is_some();
            for batch in [Some(Ok(lines)), failed.map(Err)].into_iter().flatten() {
                if to_parser[k % parsers].send(batch).is_err() {
                    break 'reading;
                }
                k += 1;
            }
            if end || stop.load(Ordering::Relaxed) {
                break;
            }
            read = batches.next_batch();
        }
        drop(to_parser);
        collector
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Reads a list in batches of whole lines.
struct BatchReader<'a, R> {
    reader: R,
    source: &'a Path,
    /// The number of the next line.
    next_line: u64,
    /// The start of a line whose end is not read yet.
    unfinished: Vec<u8>,
    /// The input has ended, or reading it failed: no more lines.
    ended: bool,
}

impl<R: BufRead> BatchReader<'_, R> {
    /// Whole lines, about [`BATCH_BYTES`] of them (fewer at the end of the
    /// input; none after it), each ended by `\n` (the last line of the
    /// input gets one). Read as blocks, not line by line (reading a line at
    /// a time was most of the reading thread's time, which the parsing
    /// threads waited for). A line that is longer than [`MAX_LINE`] and
    /// unfinished (the input's memory bound; parsing refuses a finished
    /// one), or a read error, ends the input: the lines before it, and the
    /// error.
    fn next_batch(&mut self) -> (Lines, Option<ListFileError>) {
        let mut text = std::mem::take(&mut self.unfinished);
        let mut failed = None;
        let mut at_end = self.ended;
        while !at_end && text.len() < BATCH_BYTES {
            match self.reader.fill_buf() {
                Ok([]) => at_end = true,
                Ok(block) => {
                    // At most a batch: a reader of bytes in memory (a
                    // policy's list file) hands over all of them at once.
                    let read = block.len().min(BATCH_BYTES - text.len());
                    text.extend_from_slice(&block[..read]);
                    self.reader.consume(read);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(ListFileError::Io {
                        path: self.source.to_path_buf(),
                        source: e,
                    });
                    at_end = true;
                }
            }
        }
        let whole = memchr::memrchr(b'\n', &text).map_or(0, |i| i + 1);
        let mut unfinished = text.split_off(whole);
        let count = |text: &[u8]| memchr::memchr_iter(b'\n', text).count() as u64;
        if unfinished.len() > MAX_LINE {
            failed = Some(line_too_long(
                &unfinished,
                self.next_line + count(&text),
                self.source,
            ));
            unfinished.clear();
            at_end = true;
        } else if failed.is_some() {
            // The line the error cut short is not read.
            unfinished.clear();
        } else if at_end && !unfinished.is_empty() {
            text.append(&mut unfinished);
            text.push(b'\n');
        }
        self.unfinished = unfinished;
        self.ended = at_end;
        let lines = Lines {
            first: self.next_line,
            text,
        };
        self.next_line += count(&lines.text);
        (lines, failed)
    }
}

/// The entries of `lines`, or the error of the first bad one.
fn parse_lines(lines: &Lines, source: &Path) -> Result<Vec<Cidr>, ListFileError> {
    let mut out = Vec::new();
    // Every line ends with `\n`: without the last, the split is the lines.
    let Some(body) = lines.text.strip_suffix(b"\n") else {
        return Ok(out);
    };
    // The batch is checked as UTF-8 at once, and split at its newlines by
    // `memchr` (a byte at a time, splitting and checking were a third of
    // parsing a large list); a batch that is not UTF-8 is parsed line by
    // line, to name the line that is not.
    let Ok(text) = std::str::from_utf8(body) else {
        for (number, line) in (lines.first..).zip(body.split(|&b| b == b'\n')) {
            check_length(line, number, source)?;
            let text = std::str::from_utf8(line)
                .map_err(|_| bad_entry(line, number, source, "not UTF-8 text".into()))?;
            if let Some(cidr) = parse_line(text, number, source)? {
                out.push(cidr);
            }
        }
        return Ok(out);
    };
    for (number, line) in (lines.first..).zip(text.split('\n')) {
        check_length(line.as_bytes(), number, source)?;
        if let Some(cidr) = parse_line(line, number, source)? {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// A line longer than [`MAX_LINE`] is refused.
fn check_length(line: &[u8], number: u64, source: &Path) -> Result<(), ListFileError> {
    if line.len() <= MAX_LINE {
        return Ok(());
    }
    Err(line_too_long(line, number, source))
}

/// The error of `line` (longer than [`MAX_LINE`]), without echoing it whole.
fn line_too_long(line: &[u8], number: u64, source: &Path) -> ListFileError {
    ListFileError::LineTooLong {
        path: source.to_path_buf(),
        line: number,
        start: excerpt(&String::from_utf8_lossy(&line[..ECHO * 4]), ECHO),
    }
}

fn bad_entry(bytes: &[u8], number: u64, source: &Path, reason: String) -> ListFileError {
    ListFileError::BadEntry {
        path: source.to_path_buf(),
        line: number,
        text: excerpt(&String::from_utf8_lossy(bytes), ECHO),
        reason,
    }
}

fn parse_line(line: &str, number: u64, source: &Path) -> Result<Option<Cidr>, ListFileError> {
    // Editors on some systems start a file with a byte order mark.
    let text = if number == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    // A comment runs from `#` or `;` (ASCII: a byte search finds them).
    let end = text
        .bytes()
        .position(|b| b == b'#' || b == b';')
        .unwrap_or(text.len());
    let content = text[..end].trim();
    if content.is_empty() {
        return Ok(None);
    }
    content
        .parse::<Cidr>()
        .map(Some)
        .map_err(|e| bad_entry(line.as_bytes(), number, source, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

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
    fn a_bad_entry_before_a_long_line_is_the_error() {
        let text = format!("198.18.0.1\nbogus\n{}\n", "x".repeat(MAX_LINE + 1));
        assert!(matches!(
            parse_str(&text),
            Err(ListFileError::BadEntry { line: 2, .. })
        ));
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

    /// A list of several batches (parsed on several threads): every entry,
    /// in order, and the first bad line by its number, wherever it is.
    #[test]
    fn large_lists_keep_their_order_and_line_numbers() {
        let lines: Vec<String> = (0..300_000u32)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                format!("10.{a}.{b}.{c} # entry {i}")
            })
            .collect();
        let text = lines.join("\n");
        assert!(text.len() > 4 * BATCH_BYTES);
        let parsed = parse_str(&text).unwrap();
        assert_eq!(parsed.len(), 300_000);
        assert!(parsed.iter().zip(0u32..).all(|(c, i)| c.ip()
            == std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | i))
            && c.prefix() == 32));
        for bad in [299_999, 250_000, 150_000] {
            let mut with_bad = lines.clone();
            with_bad[bad] = "not an address".into();
            if let Some(next) = with_bad.get_mut(bad + 1) {
                *next = "nor this".into();
            }
            match parse_str(&with_bad.join("\n")) {
                Err(ListFileError::BadEntry { line, text, .. }) => {
                    assert_eq!((line, text.as_str()), (bad as u64 + 1, "not an address"));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let mut long = lines.clone();
        long[200_000] = "x".repeat(MAX_LINE + 1);
        assert!(matches!(
            parse_str(&long.join("\n")),
            Err(ListFileError::LineTooLong { line: 200_001, .. })
        ));
        // A bad entry before a line too long: the entry is named, whether
        // it is in the same batch as the long line or an earlier one.
        for bad in [199_999, 10] {
            let mut both = long.clone();
            both[bad] = "not an address".into();
            match parse_str(&both.join("\n")) {
                Err(ListFileError::BadEntry { line, .. }) => assert_eq!(line, bad as u64 + 1),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// A reader that fails after `left` bytes.
    struct Failing<'a> {
        bytes: &'a [u8],
        left: usize,
    }

    impl io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.left).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            self.left -= n;
            Ok(n)
        }
    }

    /// Read in blocks, a line is whole wherever the blocks end: the last
    /// one without its newline too, and a read error ends the list after
    /// the lines before it (the first bad one of those is the error).
    #[test]
    fn lines_across_blocks_and_a_read_error() {
        let text = (0..200_000u32)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                format!("10.{a}.{b}.{c}\n")
            })
            .collect::<Vec<_>>()
            .concat();
        let unended = format!("{text}2001:db8::1/128");
        let parsed = parse_str(&unended).unwrap();
        assert_eq!(parsed.len(), 200_001);
        assert_eq!(parsed[200_000].to_string(), "2001:db8::1/128");

        let failing = |left| {
            parse(
                BufReader::new(Failing {
                    bytes: text.as_bytes(),
                    left,
                }),
                Path::new("t"),
            )
        };
        assert!(matches!(
            failing(BATCH_BYTES + 5),
            Err(ListFileError::Io { .. })
        ));
        let mut bad = text.clone();
        bad.replace_range(..9, "not an ip");
        let bad_first = parse(
            BufReader::new(Failing {
                bytes: bad.as_bytes(),
                left: 100,
            }),
            Path::new("t"),
        );
        assert!(matches!(
            bad_first,
            Err(ListFileError::BadEntry { line: 1, .. })
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
