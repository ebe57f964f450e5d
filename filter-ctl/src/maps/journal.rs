//! The journal of a list change in progress, so that a change interrupted
//! by SIGKILL (or a crash) is never left half-applied without anyone
//! knowing. Before the first map write, the editor writes what it will
//! change and what was there before to `<runtime dir>/journal`; after the
//! last write it removes the file. A journal found by the next editor (who
//! holds the edit lock, so its writer is gone) is rolled back: the list is
//! then exactly as it was before the interrupted command. Readers (`list`,
//! `status`) show a journal that nobody is working on as an interrupted
//! change.
//!
//! Format: one JSON header line, then fixed-size binary records. Nothing is
//! fsynced: the journal guards against a dead process, and a reboot clears
//! the pins it describes anyway.

use std::{
    fs::{self, File},
    io::{BufReader, BufWriter, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use filter_common::{Ipv4Bytes, Ipv6Bytes, ListEntry};
use serde::{Deserialize, Serialize};

use super::{Filter, ListKind, lock::DirLock, pins::PinDir};
use crate::spec::cidr::Cidr;

const FILE: &str = "journal";
const RECORD: usize = 36;

/// What the interrupted command was.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub pid: u32,
    /// The command line, as far as it tells the operator what was running.
    pub command: String,
    /// `allowlist` or `blocklist`.
    pub list: String,
    pub entries: u64,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
}

/// One entry the change writes or removes, and what was there before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// 4 or 6.
    pub family: u8,
    pub prefix: u8,
    /// IPv4 addresses in the first four bytes.
    pub addr: [u8; 16],
    pub previous: Option<ListEntry>,
}

impl Record {
    #[must_use]
    pub fn v4(key: &Key<Ipv4Bytes>, previous: Option<ListEntry>) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&key.data());
        Self {
            family: 4,
            prefix: u8::try_from(key.prefix_len()).unwrap_or(32),
            addr,
            previous,
        }
    }

    #[must_use]
    pub fn v6(key: &Key<Ipv6Bytes>, previous: Option<ListEntry>) -> Self {
        Self {
            family: 6,
            prefix: u8::try_from(key.prefix_len()).unwrap_or(128),
            addr: key.data(),
            previous,
        }
    }

    /// The prefix the record is about.
    #[must_use]
    pub fn cidr(&self) -> Cidr {
        let ip = if self.family == 4 {
            IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        };
        Cidr::new(ip, self.prefix)
    }

    fn encode(&self) -> [u8; RECORD] {
        let mut out = [0u8; RECORD];
        out[0] = self.family;
        out[1] = self.prefix;
        out[2] = u8::from(self.previous.is_some());
        out[4..20].copy_from_slice(&self.addr);
        if let Some(p) = self.previous {
            out[20..28].copy_from_slice(&p.expires_at_ns.to_le_bytes());
            out[28] = p.prefix_len;
            out[29] = p.origin;
            out[30] = p.rule;
            out[31] = p.flags;
            out[32..36].copy_from_slice(&p.over_limit.to_le_bytes());
        }
        out
    }

    fn decode(raw: &[u8; RECORD]) -> Option<Self> {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&raw[4..20]);
        let previous = (raw[2] == 1).then(|| ListEntry {
            expires_at_ns: u64::from_le_bytes(raw[20..28].try_into().unwrap_or_default()),
            prefix_len: raw[28],
            origin: raw[29],
            rule: raw[30],
            flags: raw[31],
            over_limit: u32::from_le_bytes(raw[32..36].try_into().unwrap_or_default()),
        });
        let valid = matches!((raw[0], raw[1]), (4, 0..=32) | (6, 0..=128)) && raw[2] <= 1;
        valid.then_some(Self {
            family: raw[0],
            prefix: raw[1],
            addr,
            previous,
        })
    }
}

fn path(pins: &PinDir) -> PathBuf {
    pins.runtime_dir().join(FILE)
}

/// A journal being written; [`Journal::finish`] removes it once the change
/// is complete (or completely undone).
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// Writes the journal for a change of `records` to `list`.
    pub fn begin(filter: &Filter, list: ListKind, records: &[Record]) -> anyhow::Result<Self> {
        let dir = filter.pins().create_runtime_dir()?;
        let path = dir.join(FILE);
        // Written aside and renamed into place: a journal is whole or absent,
        // even if this process is killed while writing it.
        let tmp = dir.join(format!("{FILE}.tmp"));
        let header = Header {
            pid: std::process::id(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            list: list.name().to_string(),
            entries: records.len() as u64,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let file = File::create(&tmp)
            .with_context(|| format!("creating the journal {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer(&mut out, &header).context("writing the journal header")?;
        out.write_all(b"\n").context("writing the journal")?;
        for record in records {
            out.write_all(&record.encode())
                .context("writing the journal")?;
        }
        out.flush()
            .with_context(|| format!("writing the journal {}", tmp.display()))?;
        drop(out);
        fs::rename(&tmp, &path)
            .with_context(|| format!("putting the journal {} in place", path.display()))?;
        Ok(Self { path })
    }

    /// The change is complete: forget it.
    pub fn finish(self) -> anyhow::Result<()> {
        fs::remove_file(&self.path)
            .with_context(|| format!("removing the journal {}", self.path.display()))
    }
}

/// The header of a journal left by a process that is gone, if any.
/// `Err` only when a journal exists but cannot be read.
pub fn read_header(pins: &PinDir) -> anyhow::Result<Option<Header>> {
    let path = path(pins);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut line = Vec::new();
    for byte in BufReader::new(file).bytes().take(64 * 1024) {
        let byte = byte.with_context(|| format!("reading {}", path.display()))?;
        if byte == b'\n' {
            break;
        }
        line.push(byte);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .with_context(|| format!("{} has a corrupt header", path.display()))
}

/// A change that was interrupted and not yet rolled back: the journal's
/// header while no process holds the edit lock. For readers.
#[must_use]
pub fn interrupted(pins: &PinDir) -> Option<Header> {
    let header = read_header(pins).ok()??;
    // An editor at work holds the lock: its change is in progress, not interrupted.
    DirLock::try_acquire(&pins.maps_dir()).ok()??;
    Some(header)
}

/// Rolls back the change a journal describes. The caller holds the edit
/// lock, so the journal's writer is gone. Returns what was done, for the log.
pub fn repair(filter: &Filter) -> anyhow::Result<Option<String>> {
    debug_assert!(filter.is_editing());
    let path = path(filter.pins());
    let Some(header) = read_header(filter.pins())? else {
        return Ok(None);
    };
    let raw = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let body_start = raw
        .iter()
        .position(|b| *b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let mut records = Vec::new();
    for chunk in raw[body_start..].chunks_exact(RECORD) {
        let mut buf = [0u8; RECORD];
        buf.copy_from_slice(chunk);
        let record = Record::decode(&buf)
            .with_context(|| format!("{} has a corrupt record", path.display()))?;
        records.push(record);
    }
    let kind = if header.list == ListKind::Allow.name() {
        ListKind::Allow
    } else {
        ListKind::Block
    };
    filter.undo(kind, &records)?;
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(Some(format!(
        "rolled back an interrupted change to the {} ({} entries, `{}`, pid {}): the list is as it was before it",
        header.list, header.entries, header.command, header.pid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let previous = ListEntry {
            expires_at_ns: 123_456_789,
            prefix_len: 24,
            origin: 1,
            rule: 7,
            flags: 1,
            over_limit: 99,
        };
        for record in [
            Record::v4(&Key::new(24, [198, 18, 0, 0]), Some(previous)),
            Record::v6(
                &Key::new(
                    48,
                    [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                None,
            ),
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        let mut bad = Record::v4(&Key::new(24, [198, 18, 0, 0]), None).encode();
        bad[1] = 33;
        assert_eq!(Record::decode(&bad), None);
    }
}
