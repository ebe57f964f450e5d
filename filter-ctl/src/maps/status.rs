//! What `filter-ctl status` reports: the pins, the attached interfaces, the
//! controller (if one runs) and an interrupted list change (if any). The
//! controller keeps what only it knows (attach modes, interfaces that went
//! away) in `controller.json` in the runtime directory; this module writes
//! and reads that file, so the controller and the command agree on it.

use std::{fs, io::Write as _, path::PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{
    journal::{self, Header},
    lists::ListCounts,
    loader,
    lock::{self, DirLock},
    pins::{self, PinDir},
};

const FILE: &str = "controller.json";

/// An interface as the controller sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceState {
    pub name: String,
    /// `attached`, or `missing` (the interface disappeared; the controller
    /// re-attaches when it comes back).
    pub state: String,
    /// `native` or `skb`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Seconds since the Unix epoch when the state last changed.
    pub since_unix: u64,
}

/// The controller's own record, rewritten whenever something changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControllerState {
    pub pid: u32,
    pub interfaces: Vec<InterfaceState>,
    /// Entries per list and family as of the controller's last sweep (it
    /// walks the lists anyway; a scrape never does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_entries: Option<ListCounts>,
    /// When that sweep ran (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_entries_at_unix: Option<u64>,
}

impl ControllerState {
    /// Writes the record atomically (a reader sees the old or the new one).
    pub fn write(&self, pins: &PinDir) -> anyhow::Result<()> {
        let dir = pins.create_runtime_dir()?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut file, self).context("writing the controller state")?;
        file.write_all(b"\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The record of the controller running now, if it is still running.
    #[must_use]
    pub fn read_live(pins: &PinDir) -> Option<Self> {
        let text = fs::read_to_string(pins.runtime_dir().join(FILE)).ok()?;
        let state: Self = serde_json::from_str(&text).ok()?;
        (controller_pid(pins) == Some(state.pid)).then_some(state)
    }

    /// Removes the record (the controller stopped).
    pub fn remove(pins: &PinDir) {
        fs::remove_file(pins.runtime_dir().join(FILE)).ok();
    }
}

/// The pid of the running controller: the holder of the lock on the pin root.
#[must_use]
pub fn controller_pid(pins: &PinDir) -> Option<u32> {
    let file = fs::File::open(pins.root()).ok()?;
    lock::lock_holder(&file)
}

/// One attached interface in `status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub name: String,
    /// `attached`, or `missing` while the controller waits for it to return.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The XDP program on the pinned link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<u32>,
}

/// Everything `status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pin_dir: PathBuf,
    pub layout_version: u32,
    /// Whether maps are pinned (a filter is loaded).
    pub loaded: bool,
    pub interfaces: Vec<InterfaceStatus>,
    /// The running controller's pid, if one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_pid: Option<u32>,
    /// `starting` while it loads and attaches, `running` once every
    /// interface it was given is attached; absent without a controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_state: Option<&'static str>,
    /// Who holds the edit lock right now, if anyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit_lock_holder: Option<String>,
    /// A list change that was interrupted and not yet rolled back (the next
    /// edit, or `run`, rolls it back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_change: Option<Header>,
}

/// Reads the status of the filter under `pins`. Fails like every reader
/// when nothing is loaded there.
pub fn read(pins: &PinDir) -> anyhow::Result<Status> {
    pins.ensure_loaded()?;
    pins.check_runtime_dir()?;
    let controller = ControllerState::read_live(pins);
    let mut interfaces = Vec::new();
    let mut names = pins.linked_interfaces()?;
    if let Some(state) = &controller {
        for iface in &state.interfaces {
            if !names.contains(&iface.name) {
                names.push(iface.name.clone());
            }
        }
    }
    names.sort();
    for name in names {
        let known = controller
            .as_ref()
            .and_then(|c| c.interfaces.iter().find(|i| i.name == name));
        let program_id = loader::linked_program_id(pins, &name);
        interfaces.push(InterfaceStatus {
            state: known.map_or_else(|| "attached".to_string(), |k| k.state.clone()),
            mode: known.and_then(|k| k.mode.clone()),
            program_id,
            name,
        });
    }
    Ok(Status {
        pin_dir: pins.root().to_path_buf(),
        layout_version: pins::LAYOUT_VERSION,
        loaded: pins.is_loaded(),
        interfaces,
        controller_pid: controller_pid(pins),
        controller_state: match (&controller, controller_pid(pins)) {
            (Some(_), _) => Some("running"),
            (None, Some(_)) => Some("starting"),
            (None, None) => None,
        },
        edit_lock_holder: DirLock::holder(&pins.maps_dir()),
        interrupted_change: journal::interrupted(pins),
    })
}

const TOP_FILE: &str = "top.json";

/// One source in the controller's running drop tally (for `top`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopSource {
    pub source: String,
    /// Estimated drops in the current interval (scaled by sampling).
    pub estimated: u64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Intervals in a row the source was seen, this one included.
    pub consecutive: u32,
}

/// The dropped sources of the interval in progress, rewritten by the
/// controller every second.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopSnapshot {
    pub pid: u32,
    pub interval_secs: u64,
    /// Seconds since the Unix epoch when it was written.
    pub updated_unix: u64,
    pub sources: Vec<TopSource>,
    pub other_sources: u64,
    pub other_estimated: u64,
}

impl TopSnapshot {
    /// Writes the snapshot atomically.
    pub fn write(&self, pins: &PinDir) -> anyhow::Result<()> {
        let dir = pins.create_runtime_dir()?;
        let tmp = dir.join(format!("{TOP_FILE}.tmp"));
        let text = serde_json::to_vec(self).context("encoding the top snapshot")?;
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(TOP_FILE)).context("replacing the top snapshot")
    }

    /// The running controller's snapshot, if one runs.
    #[must_use]
    pub fn read_live(pins: &PinDir) -> Option<Self> {
        let text = fs::read(pins.runtime_dir().join(TOP_FILE)).ok()?;
        let snapshot: Self = serde_json::from_slice(&text).ok()?;
        (controller_pid(pins) == Some(snapshot.pid)).then_some(snapshot)
    }
}
