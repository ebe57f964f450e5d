//! File primitives of the state directory: whole files replaced atomically,
//! JSON-lines files appended one record per `write`, read back with a torn
//! last line dropped and a malformed complete line reported.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use serde::de::DeserializeOwned;

use crate::error::{Error, excerpt};

/// Marks temporary files: `.<name>.tmp-<pid>-<n>`.
const TMP_MARK: &str = ".tmp-";

/// Replaces `path` with `bytes`, so that after a crash at any point the file
/// holds either its old content or `bytes`: writes a temporary file (0600)
/// in the same directory, fsyncs it, renames it over `path` and fsyncs the
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// [`write_atomically`] with the content streamed by `write`.
pub(crate) fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        "{TMP_MARK}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, &file);
        write(&mut out)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes renames and unlinks in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes temporary files left in `dirs` by processes that died while
/// writing them (their pid no longer runs). Best effort.
pub(crate) fn remove_stale_temporaries(dirs: &[PathBuf]) {
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.starts_with('.'))
                .and_then(|n| n.rsplit_once(TMP_MARK))
                .and_then(|(_, tail)| tail.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                log::debug!(
                    "removing {} (left by a dead process)",
                    entry.path().display()
                );
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Moves a corrupt file aside to `<name>.corrupt-<unix seconds>` (never
/// deleting it) and returns the new path.
pub(crate) fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{secs}"));
    let mut target = path.with_file_name(&name);
    let mut n = 1;
    while target.exists() {
        let mut numbered = name.clone();
        numbered.push(format!(".{n}"));
        target = path.with_file_name(numbered);
        n += 1;
    }
    fs::rename(path, &target).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "moving {} aside to {}",
            path.display(),
            target.display()
        ))
    })?;
    sync_dir(parent(path))?;
    log::warn!(
        "moved the corrupt state file {} aside to {}; going on without it",
        path.display(),
        target.display()
    );
    Ok(target)
}

/// The [`Error::Corrupt`] of `path`, at `line` if known.
pub(crate) fn corrupt(path: &Path, line: Option<u64>, reason: impl Into<String>) -> anyhow::Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
    .into()
}

/// The path of the corrupt file `err` reports, if it reports one.
pub(crate) fn corrupt_path(err: &anyhow::Error) -> Option<&Path> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<Error>() {
            Some(Error::Corrupt { path, .. }) => Some(path.as_path()),
            _ => None,
        })
}

/// Reads the JSON-lines content of `file` from `offset` on, calling `each`
/// with every complete line (1-based line numbers counted from
/// `first_line`). A last line without its newline is a record whose append
/// was cut short by a crash: it is left out. Returns the offset after the
/// last complete line and the number of lines read.
pub(crate) fn read_lines(
    path: &Path,
    file: &File,
    offset: u64,
    first_line: u64,
    mut each: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    reader
        .seek(SeekFrom::Start(offset))
        .map_err(|e| io_context(e, "reading", path))?;
    let mut line = Vec::new();
    let mut end = offset;
    let mut number = first_line;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_context(e, "reading", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            if n > 0 {
                log::debug!(
                    "{}: ignoring a torn last line ({n} bytes without a newline)",
                    path.display()
                );
            }
            return Ok((end, number - first_line));
        }
        each(number, &line[..line.len() - 1])?;
        end += n as u64;
        number += 1;
    }
}

/// Parses one JSON line, reporting a malformed one as corrupt.
pub(crate) fn parse_line<T: DeserializeOwned>(
    path: &Path,
    number: u64,
    line: &[u8],
) -> anyhow::Result<T> {
    serde_json::from_slice(line).map_err(|e| {
        corrupt(
            path,
            Some(number),
            format!("{e} in '{}'", excerpt(&String::from_utf8_lossy(line), 120)),
        )
    })
}

/// Every complete line of the JSON-lines file at `path`, parsed; empty if
/// the file does not exist.
pub(crate) fn read_all<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_context(err, "opening", path)),
    };
    let mut out = Vec::new();
    read_lines(path, &file, 0, 1, |number, line| {
        out.push(parse_line(path, number, line)?);
        Ok(())
    })?;
    Ok(out)
}

/// The first line of `file` without its newline, read with one small read;
/// `None` if the file has no complete first line within 64 KiB.
pub(crate) fn first_line(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut buf[filled..], filled as u64)?;
        if let Some(pos) = buf[filled..filled + n].iter().position(|b| *b == b'\n') {
            buf.truncate(filled + pos);
            return Ok(Some(buf));
        }
        filled += n;
        if n == 0 || filled >= 1 << 16 {
            return Ok(None);
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Cuts a torn last line (bytes after the last newline, left by a crash
/// during an append) off `file`, so the next append starts on a line of its
/// own. Call with the state lock held. Returns the new length.
pub(crate) fn trim_torn_tail(path: &Path, file: &File) -> anyhow::Result<u64> {
    let len = file
        .metadata()
        .map_err(|e| io_context(e, "reading", path))?
        .len();
    let end = last_line_end(file, len).map_err(|e| io_context(e, "reading", path))?;
    if end < len {
        log::warn!(
            "{}: dropping a torn last record ({} bytes, cut short by a crash)",
            path.display(),
            len - end
        );
        truncate(path, file, end)?;
    }
    Ok(end)
}

/// Shortens `file` to `len` bytes, durably.
pub(crate) fn truncate(path: &Path, file: &File, len: u64) -> anyhow::Result<()> {
    file.set_len(len)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_context(e, "truncating", path))
}

/// The offset just after the last newline in the first `len` bytes of `file` (0 if none).
fn last_line_end(file: &File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 1 << 16;
    let mut end = len;
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(1 << 16)];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(0)];
        file.read_exact_at(chunk, start)?;
        if let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Appends `bytes` (whole lines) to `file` with one `write` and makes them
/// durable before returning.
pub(crate) fn append(path: &Path, mut file: &File, bytes: &[u8]) -> anyhow::Result<()> {
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_context(e, "appending to", path))
}

/// Opens `path` for appending (and reading), creating it 0600.
pub(crate) fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_context(e, "opening", path))
}

/// Appends one JSON line to the file at `path` (created 0600 if missing),
/// dropping a torn last line first. Call with the state lock held.
pub(crate) fn append_line(path: &Path, line: &[u8]) -> anyhow::Result<()> {
    let file = open_append(path)?;
    trim_torn_tail(path, &file)?;
    append(path, &file, line)
}

/// One JSON line (with its newline) for `value`.
pub(crate) fn json_line(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// Reads a whole small file; `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_context(err, "opening", path)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_context(e, "reading", path))?;
    Ok(Some(bytes))
}

pub(crate) fn io_context(err: io::Error, what: &str, path: &Path) -> anyhow::Error {
    anyhow::Error::new(err).context(format!("{what} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn write_atomically_replaces_whole_files_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pending.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Nothing left behind.
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("snapshot");
        write_atomically(&path, b"old").unwrap();
        let err = write_atomically_with(&path, |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("crash"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join(".live.snapshot.tmp-4294967-0");
        let ours = tmp
            .path()
            .join(format!(".live.snapshot.tmp-{}-0", std::process::id()));
        fs::write(&dead, b"x").unwrap();
        fs::write(&ours, b"x").unwrap();
        remove_stale_temporaries(&[tmp.path().to_path_buf()]);
        assert!(!dead.exists());
        assert!(ours.exists());
    }

    #[test]
    fn torn_last_line_is_left_out_and_trimmed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let values: Vec<serde_json::Value> = read_all(&path).unwrap();
        assert_eq!(values.len(), 2);
        append_line(&path, b"{\"a\":3}\n").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn malformed_complete_line_is_reported_with_path_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        fs::write(&path, b"{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
        let err = read_all::<serde_json::Value>(&path).unwrap_err();
        match err.downcast_ref::<Error>() {
            Some(Error::Corrupt { path: p, line, .. }) => {
                assert_eq!(p, &path);
                assert_eq!(*line, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(corrupt_path(&err), Some(path.as_path()));
        let text = err.to_string();
        assert!(
            text.contains(&format!("{} line 2", path.display())),
            "{text}"
        );
        assert!(text.contains("not json"), "{text}");
    }

    #[test]
    fn move_aside_keeps_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("live.journal");
        fs::write(&path, b"garbage").unwrap();
        let first = move_aside(&path).unwrap();
        fs::write(&path, b"garbage 2").unwrap();
        let second = move_aside(&path).unwrap();
        assert_ne!(first, second);
        assert!(!path.exists());
        assert_eq!(fs::read(&first).unwrap(), b"garbage");
        assert_eq!(fs::read(&second).unwrap(), b"garbage 2");
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("live.journal.corrupt-"), "{name}");
    }

    #[test]
    fn last_line_end_scans_back_over_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log");
        let mut content = b"{}\n".to_vec();
        content.extend(std::iter::repeat_n(b'x', 200_000));
        fs::write(&path, &content).unwrap();
        let file = open_append(&path).unwrap();
        assert_eq!(trim_torn_tail(&path, &file).unwrap(), 3);
        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        let long = vec![b'y'; 100_000];
        fs::write(&path, &long).unwrap();
        assert_eq!(first_line(&File::open(&path).unwrap()).unwrap(), None);
    }
}
