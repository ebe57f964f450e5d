//! `CrowdSec` bouncer mode: `run` pulls the decision stream of a `CrowdSec`
//! Local API (LAPI) and enforces its bans as blocklist entries of origin
//! `crowdsec`, with the decision's remaining time as TTL.
//!
//! Two halves: a puller task ([`spawn_puller`]) that talks HTTP (reqwest on
//! tokio, rustls) and hands validated pulls ([`Pulled`]) to the controller's
//! event loop, which applies them ([`Applier`]) under the edit lock, in
//! batches, and records them in the live state so that they survive a
//! restart like every other origin.
//!
//! The LAPI being down, slow or answering garbage never stops `run` and
//! never lifts a ban: the last known decisions stay enforced (until their own
//! expiry), the puller retries with capped exponential backoff and jitter,
//! and logs once per change of state. After an outage the stream starts
//! again with `startup=true`: the whole set of current decisions, against
//! which the `crowdsec` entries are reconciled (those not in it are lifted),
//! so deletions missed during the outage are caught.

use std::{
    collections::{BTreeMap, HashSet},
    hash::{BuildHasher as _, Hasher as _},
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use filter_common::{ListEntry, ORIGIN_AUTO, ORIGIN_CROWDSEC};
use log::{debug, info, warn};
use tokio::sync::mpsc;

use crate::{
    clock,
    error::Error,
    maps::{Filter, Tries},
    spec::{
        cidr::Cidr,
        crowdsec::{Pull, SkipReason, StreamError, parse_stream},
        listfile,
    },
    state::{ListName, LiveEntry, LiveKey, LiveState, Origin},
};

/// One HTTP request, connection included, at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed pull, doubled after each failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Retry delays never exceed this.
const BACKOFF_CAP: Duration = Duration::from_mins(1);
/// Largest answer read: 100,000 decisions are about 25 MB of JSON.
const MAX_BODY_BYTES: usize = 512 << 20;

/// Where and how often to pull.
#[derive(Clone, Debug)]
pub struct Source {
    /// The LAPI's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// The bouncer key, as read from its file.
    pub key: String,
    pub poll_interval: Duration,
}

/// Reads the bouncer key file: a regular file owned by root that no other
/// user may read or write (mode 0600 or 0400), holding the key on its
/// first line.
pub fn read_key(path: &Path) -> anyhow::Result<String> {
    let refuse = |why: String| -> anyhow::Error {
        Error::Insecure(format!(
            "the CrowdSec bouncer key file {}: {why}",
            path.display()
        ))
        .into()
    };
    let (file, metadata) = listfile::open_regular(path).map_err(|e| {
        anyhow::Error::new(Error::BadInput(format!(
            "the CrowdSec bouncer key file: {e} (create it with `cscli bouncers add NAME -o raw > {}` and `chmod 600` it)",
            path.display()
        )))
    })?;
    if metadata.uid() != 0 {
        return Err(refuse(format!(
            "refused: it is owned by uid {}, not by root; `chown root` it",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "refused: other users may read or write it (mode {mode:04o}), and whoever holds the key reads every decision; `chmod 600` it"
        )));
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the CrowdSec bouncer key file {}", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadInput(format!(
            "the CrowdSec bouncer key file {} holds no key (expected one line, as printed by `cscli bouncers add NAME -o raw`)",
            path.display()
        ))
        .into());
    }
    Ok(key)
}

/// Where the key file and URL come from, resolved by `run`.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub url: Option<String>,
    pub key_file: Option<PathBuf>,
    pub poll_interval: Option<Duration>,
}

/// The source `run` pulls from: each flag overrides the policy's
/// `[crowdsec]` value; flags alone need both `--crowdsec-url` and
/// `--crowdsec-key-file`. `None`: bouncer mode is off.
pub fn resolve(
    flags: &Flags,
    policy: Option<&crate::spec::policy::CrowdsecConfig>,
) -> anyhow::Result<Option<Source>> {
    use crate::spec::policy::DEFAULT_CROWDSEC_POLL;
    let url = flags.url.clone().or_else(|| policy.map(|p| p.url.clone()));
    let key_file = flags
        .key_file
        .clone()
        .or_else(|| policy.map(|p| p.api_key_file.clone()));
    let (url, key_file) = match (url, key_file) {
        (None, None) => return Ok(None),
        (Some(url), Some(key_file)) => (url, key_file),
        (None, Some(_)) => {
            return Err(Error::BadInput(
                "--crowdsec-key-file needs --crowdsec-url (or a [crowdsec] section in the policy)"
                    .into(),
            )
            .into());
        }
        (Some(_), None) => {
            return Err(Error::BadInput(
                "--crowdsec-url needs --crowdsec-key-file (or a [crowdsec] section in the policy)"
                    .into(),
            )
            .into());
        }
    };
    crate::spec::policy::check_crowdsec_url(&url).map_err(Error::BadInput)?;
    let poll_interval = flags
        .poll_interval
        .or_else(|| policy.map(|p| p.poll_interval))
        .unwrap_or(DEFAULT_CROWDSEC_POLL);
    Ok(Some(Source {
        url: url.trim_end_matches('/').to_string(),
        key: read_key(&key_file)?,
        poll_interval,
    }))
}

/// What the puller hands the controller.
#[derive(Debug)]
pub struct Pulled {
    pub pull: Pull,
    /// A `startup=true` answer: every current decision, to reconcile against.
    pub startup: bool,
}

/// The puller's and applier's state, for the metrics (one bouncer per process).
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub up: bool,
    pub last_success_unix: Option<u64>,
    pub applied: u64,
    pub removed: u64,
    pub skipped: BTreeMap<&'static str, u64>,
}

static STATUS: Mutex<Option<Status>> = Mutex::new(None);

/// The bouncer's status; `None` when bouncer mode is off.
pub fn status() -> Option<Status> {
    STATUS.lock().ok().and_then(|s| s.clone())
}

fn update_status(f: impl FnOnce(&mut Status)) {
    if let Ok(mut guard) = STATUS.lock() {
        f(guard.get_or_insert_with(Status::default));
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(
        "the LAPI refused the bouncer key (HTTP {0}): the key is wrong or its bouncer was deleted; put the key `cscli bouncers add NAME -o raw` prints in the key file"
    )]
    Unauthorized(u16),
    #[error("the LAPI answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error(transparent)]
    Garbage(#[from] StreamError),
}

impl PullError {
    /// The kind, to log a change of kind once.
    fn kind(&self) -> u8 {
        match self {
            Self::Unauthorized(_) => 0,
            Self::Status(_) => 1,
            Self::Transport(_) => 2,
            Self::Garbage(_) => 3,
        }
    }
}

/// One pull: `GET {url}/v1/decisions/stream?startup=…` with the key.
async fn fetch(
    client: &reqwest::Client,
    source: &Source,
    startup: bool,
) -> Result<Pull, PullError> {
    let url = format!(
        "{}/v1/decisions/stream?startup={startup}",
        source.url.trim_end_matches('/')
    );
    let response = client
        .get(&url)
        .header("X-Api-Key", &source.key)
        .send()
        .await
        .map_err(|e| PullError::Transport(transport_message(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(PullError::Unauthorized(status.as_u16()));
    }
    if !status.is_success() {
        return Err(PullError::Status(status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(PullError::Transport(format!(
            "the answer is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| PullError::Transport(transport_message(&e)))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(PullError::Transport(format!(
            "the answer is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(parse_stream(&body)?)
}

/// A transport error with its causes (reqwest's own message is terse).
fn transport_message(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff with jitter: each delay is half to all of
/// `BACKOFF_FIRST * 2^n`, capped at `BACKOFF_CAP`.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let base = BACKOFF_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        // Jitter from the std library's randomly seeded hasher: enough to
        // spread many hosts' retries, no random-number crate needed.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let fraction = 0.5 + f64::from(u16::try_from(random % 1000).unwrap_or(0)) / 2000.0;
        base.mul_f64(fraction)
    }
}

/// Starts the puller on the current tokio runtime. `resync`, set by the
/// controller after a failed apply, makes the next pull a `startup=true` one.
pub fn spawn_puller(
    source: Source,
    tx: mpsc::Sender<Pulled>,
    resync: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("filter-ctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the CrowdSec HTTP client")?;
    update_status(|s| s.up = false);
    info!(
        "crowdsec: pulling decisions from {} every {}s",
        source.url,
        source.poll_interval.as_secs_f64()
    );
    tokio::spawn(async move {
        let mut startup = true;
        let mut backoff = Backoff::default();
        // `None` before the first pull; the kind of the last failure while down.
        let mut down: Option<Option<u8>> = None;
        loop {
            if resync.swap(false, Ordering::Relaxed) {
                startup = true;
            }
            match fetch(&client, &source, startup).await {
                Ok(pull) => {
                    if down != Some(None) {
                        info!(
                            "crowdsec: the LAPI at {} answers ({} pull: {} bans, {} lifted, {} skipped)",
                            source.url,
                            if startup { "full" } else { "incremental" },
                            pull.bans.len(),
                            pull.lifted.len(),
                            pull.skipped_total()
                        );
                    }
                    down = Some(None);
                    backoff.reset();
                    update_status(|s| {
                        s.up = true;
                        s.last_success_unix = Some(now_unix());
                    });
                    if tx.send(Pulled { pull, startup }).await.is_err() {
                        return; // the controller stopped
                    }
                    startup = false;
                    tokio::time::sleep(source.poll_interval).await;
                }
                Err(err) => {
                    let kind = Some(err.kind());
                    let delay = backoff.next_delay();
                    if down == Some(kind) {
                        debug!("crowdsec: pull failed again: {err}");
                    } else {
                        warn!(
                            "crowdsec: pulling from {} failed: {err}; the known decisions stay enforced, retrying with backoff (next in {:.1}s; logged again when this changes)",
                            source.url,
                            delay.as_secs_f64()
                        );
                    }
                    down = Some(kind);
                    // After an outage the whole set again: deletions
                    // missed meanwhile are reconciled.
                    startup = true;
                    update_status(|s| s.up = false);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    });
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Bans written (new or with a new expiry).
    pub added: usize,
    /// `crowdsec` entries removed (deleted decisions, reconciliation).
    pub removed: usize,
    /// Bans not written: an operator's or the policy's entry holds the prefix.
    pub held: usize,
}

/// Applies pulls to the blocklist and the live state. Knows which prefixes
/// hold a `crowdsec` entry (from the live state at start, then its own
/// writes), so that a startup set can be reconciled without walking the
/// lists.
#[derive(Debug, Default)]
pub struct Applier {
    known: HashSet<Cidr>,
}

impl Applier {
    /// Starts from the `crowdsec` entries of the live state.
    #[must_use]
    pub fn new(live: &LiveState) -> Self {
        let known = live
            .entries(SystemTime::now())
            .into_iter()
            .filter(|e| e.origin == Origin::Crowdsec && e.list == ListName::Block)
            .map(|e| e.cidr)
            .collect();
        Self { known }
    }

    /// Prefixes with a `crowdsec` entry, as far as this applier knows.
    #[must_use]
    pub fn known(&self) -> usize {
        self.known.len()
    }

    /// Writes the bans and removes the lifted prefixes (and, for a startup
    /// pull, every known `crowdsec` prefix not in it), then records both in
    /// `live` (when given). A prefix held by an operator's or the policy's
    /// entry is left alone (an automatic block holds nothing: the ban goes
    /// in too), and a deletion removes only `crowdsec` entries.
    pub fn apply(
        &mut self,
        filter: &Filter,
        live: Option<&mut LiveState>,
        pulled: &Pulled,
    ) -> anyhow::Result<Applied> {
        let pull = &pulled.pull;
        let mut applied = Applied::default();
        let now_mono = clock::monotonic_ns();
        let now_wall = SystemTime::now();

        // Bans: look up only prefixes not known to be ours.
        let unknown: Vec<Cidr> = pull
            .bans
            .iter()
            .map(|b| b.cidr)
            .filter(|c| !self.known.contains(c))
            .collect();
        let found = filter.lookup_entries(Tries::Block, &unknown)?;
        let held: HashSet<Cidr> = unknown
            .iter()
            .zip(&found)
            // An operator's or the policy's entry holds the prefix; an
            // automatic block does not (a ban of a host, an IPv4 /16 to /31
            // or an IPv6 /40 to /64 goes in beside it, in the host table; a
            // ban of another range replaces it in the trie, as it outlasts
            // it).
            .filter(|(_, e)| {
                e.is_some_and(|e| {
                    e.origin != ORIGIN_CROWDSEC && e.origin != ORIGIN_AUTO && e.is_active(now_mono)
                })
            })
            .map(|(c, _)| *c)
            .collect();
        let mut writes = Vec::with_capacity(pull.bans.len());
        let mut records = Vec::with_capacity(pull.bans.len());
        for ban in &pull.bans {
            if held.contains(&ban.cidr) {
                applied.held += 1;
                continue;
            }
            writes.push((
                ban.cidr,
                ListEntry {
                    expires_at_ns: clock::expiry_from_now(Some(ban.ttl)),
                    prefix_len: ban.cidr.prefix(),
                    origin: ORIGIN_CROWDSEC,
                    ..ListEntry::default()
                },
            ));
            records.push(LiveEntry {
                list: ListName::Block,
                cidr: ban.cidr,
                origin: Origin::Crowdsec,
                expires_at: Some(now_wall + ban.ttl),
                rule: None,
            });
        }

        // Lifts: the deleted decisions, and after a startup pull every
        // known prefix that is no longer banned.
        let mut lift: Vec<Cidr> = pull.lifted.clone();
        if pulled.startup {
            let banned: HashSet<Cidr> = pull.bans.iter().map(|b| b.cidr).collect();
            lift.extend(self.known.iter().filter(|c| !banned.contains(c)).copied());
            lift.sort_unstable();
            lift.dedup();
        }
        let stored = filter.lookup_entries(Tries::Block, &lift)?;
        let remove: Vec<Cidr> = lift
            .iter()
            .zip(&stored)
            .filter(|(_, e)| e.is_some_and(|e| e.origin == ORIGIN_CROWDSEC))
            .map(|(c, _)| *c)
            .collect();

        filter
            .write_entries(Tries::Block, &writes)
            .context("writing CrowdSec bans to the blocklist")?;
        filter
            .delete_entries(Tries::Block, &remove)
            .context("removing lifted CrowdSec bans from the blocklist")?;
        applied.added = writes.len();
        applied.removed = remove.len();
        for (cidr, _) in &writes {
            self.known.insert(*cidr);
        }
        for cidr in &lift {
            self.known.remove(cidr);
        }

        if let Some(live) = live {
            let keys: Vec<LiveKey> = lift
                .iter()
                .map(|cidr| LiveKey {
                    list: ListName::Block,
                    cidr: *cidr,
                    origin: Origin::Crowdsec,
                })
                .collect();
            if !records.is_empty() {
                live.add(&records)
                    .context("recording CrowdSec bans in the live state")?;
            }
            if !keys.is_empty() {
                live.remove(&keys)
                    .context("recording lifted CrowdSec bans in the live state")?;
            }
        }
        update_status(|s| {
            s.applied += applied.added as u64;
            s.removed += applied.removed as u64;
            for (reason, n) in &pull.skipped {
                *s.skipped.entry(reason.name()).or_default() += n;
            }
            if applied.held > 0 {
                *s.skipped.entry(HELD).or_default() += applied.held as u64;
            }
        });
        Ok(applied)
    }
}

/// The skip reason of a ban whose prefix another origin holds.
pub const HELD: &str = "held_by_other_origin";

/// Every skip reason, for the metrics (so each series exists from the start).
pub fn skip_reasons() -> impl Iterator<Item = &'static str> {
    SkipReason::ALL
        .iter()
        .map(|r| r.name())
        .chain(std::iter::once(HELD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::default();
        let mut previous_base = Duration::ZERO;
        for n in 0..20u32 {
            let delay = backoff.next_delay();
            let base = BACKOFF_FIRST
                .saturating_mul(1 << n.min(16))
                .min(BACKOFF_CAP);
            assert!(
                delay >= base / 2 && delay <= base,
                "{n}: {delay:?} vs {base:?}"
            );
            assert!(base >= previous_base);
            previous_base = base;
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_FIRST);
    }

    #[test]
    fn flags_override_the_policy_and_alone_need_both() {
        let policy = crate::spec::policy::CrowdsecConfig {
            url: "http://127.0.0.1:1".into(),
            api_key_file: PathBuf::from("/nonexistent/key"),
            poll_interval: Duration::from_secs(3),
        };
        assert!(resolve(&Flags::default(), None).unwrap().is_none());
        let only_url = Flags {
            url: Some("http://127.0.0.1:2".into()),
            ..Flags::default()
        };
        let err = resolve(&only_url, None).unwrap_err().to_string();
        assert!(err.contains("needs --crowdsec-key-file"), "{err}");
        // The policy's key file is used (and, missing, reported).
        let err = resolve(&only_url, Some(&policy)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/key"), "{err}");
    }

    #[test]
    fn key_files_other_users_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "abc123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key(&path).unwrap_err().to_string();
        if nix_is_root() {
            assert!(err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(read_key(&path).unwrap(), "abc123");
            std::fs::write(&path, "\n").unwrap();
            assert!(
                read_key(&path)
                    .unwrap_err()
                    .to_string()
                    .contains("holds no key")
            );
        } else {
            assert!(err.contains("not by root"), "{err}");
        }
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
