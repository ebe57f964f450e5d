//! The policy file: one TOML file that describes the whole filter —
//! interfaces and attach mode, rate-limit rules, and the allow and block
//! lists (inline, or in list files it names). Validated here completely, with
//! the same checks as the commands (`limit set`, `block --file`), without
//! touching the kernel.
//!
//! Every problem is reported, each with its place: `path:line:col: message`
//! in the policy, `path:line: message` in a list file. TOML syntax errors
//! stop there; otherwise each section, and each port rule, is read on its
//! own, so an unknown key in one does not hide a bad value in another.
//! Unknown keys are errors everywhere: a misspelt key must never silently
//! disable a rule.
//!
//! Reading is separate from parsing: [`load`] reads the policy and its list
//! files from the file system ([`read_file`], with the [`Ownership`] asked
//! for); [`parse`] takes the policy's bytes and a function that returns a
//! list file's bytes, so a stored copy of a policy and its list files parses
//! the same way.

use std::{
    fmt,
    io::{self, Read as _},
    ops::Range,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use filter_common::{MAX_RULES, RateRule, capacity};
use serde::{Deserialize, de::IntoDeserializer as _};
use sha2::{Digest as _, Sha256};
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{
    error::{Error, excerpt},
    spec::{
        attach::{Mode, check_iface_name},
        cidr::{Cidr, mapped_note},
        duration::parse_duration,
        listfile::{self, ListFileError, ListKind},
        rule::{
            AutoblockSpec, DEFAULT_AUTOBLOCK_FOR, DEFAULT_AUTOBLOCK_WINDOW, LimitSpec, RateClock,
            Target, check_aggregation,
        },
    },
};

/// Largest policy or list file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Who may own the policy and list files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Any owner (`policy check`): only files every user can write are refused.
    AnyOwner,
    /// Owned by root and writable by root only (`apply`, `run`): whoever
    /// can change the file changes what the filter enforces.
    RootOnly,
}

/// A policy as read: its bytes and hash, the validated policy, and the
/// list files it named.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    /// The policy file, as given.
    pub path: PathBuf,
    /// The policy file's bytes, exactly as read.
    pub bytes: Vec<u8>,
    /// SHA-256 of [`Self::bytes`], 64 lowercase hex digits (what `sha256sum` prints).
    pub sha256: String,
    pub policy: Policy,
    /// The list files, in the order the policy names them (block first).
    pub list_files: Vec<ListFileSource>,
    /// Things worth knowing that are not errors (an IPv4-mapped address,
    /// an entry on both lists), located like problems.
    pub notes: Vec<Problem>,
}

/// A list file named by the policy, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFileSource {
    /// The path read: relative paths in the policy are resolved against
    /// the policy file's directory.
    pub path: PathBuf,
    /// The list it feeds.
    pub list: ListKind,
    /// SHA-256 of [`Self::bytes`], 64 lowercase hex digits.
    pub sha256: String,
    /// Entries in the file (before merging with the list's other entries).
    pub entries: usize,
    /// The file's bytes, exactly as read (for a stored copy of the policy).
    pub bytes: Vec<u8>,
}

/// What a policy file says, validated. Entries are deduplicated and sorted,
/// so two policies that mean the same lists compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Interfaces `run` attaches to when `--iface` is not given.
    pub interfaces: Vec<String>,
    /// Attach mode (`run` defaults to auto).
    pub mode: Option<Mode>,
    /// Whole-policy shadow mode: every rule and the block entries count
    /// the packets they would drop, and drop none.
    pub shadow: bool,
    /// Source prefix lengths rate limits group by (unset: the filter's
    /// defaults, /32 and /64).
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    pub rate_clock: Option<RateClock>,
    /// The default rule (rule id 0), if the policy sets one.
    pub default_limit: Option<PolicyRule>,
    /// Port rules, in the order of the file; no two overlap.
    pub port_rules: Vec<PolicyRule>,
    /// Inline entries and list files' entries, deduplicated, sorted.
    pub block: Vec<Cidr>,
    pub allow: Vec<Cidr>,
    /// `[crowdsec]`: pull ban decisions from a `CrowdSec` LAPI (`run`).
    pub crowdsec: Option<CrowdsecConfig>,
}

/// Where `run` pulls `CrowdSec` decisions from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdsecConfig {
    /// The LAPI's base URL, `http://` or `https://` (e.g. `http://127.0.0.1:8080`).
    pub url: String,
    /// The bouncer key file (`cscli bouncers add NAME -o raw`); relative
    /// paths are resolved against the policy file's directory. Read by
    /// `run` only, refused unless owned by root and readable by root alone.
    pub api_key_file: PathBuf,
    /// Time between incremental pulls.
    pub poll_interval: Duration,
}

/// `poll_interval` when not given.
pub const DEFAULT_CROWDSEC_POLL: Duration = Duration::from_secs(10);
/// Bounds of `poll_interval`: a pull per second at most, one an hour at least.
pub const CROWDSEC_POLL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_hours(1));

/// Checks a LAPI URL: absolute, `http` or `https`, with a host.
pub fn check_crowdsec_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("'{}' is not a URL: {e}", excerpt(url, 80)))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "'{}' is not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8080)",
            excerpt(url, 80)
        ));
    }
    Ok(())
}

/// Checks a poll interval against [`CROWDSEC_POLL_RANGE`].
pub fn check_crowdsec_poll(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text).map_err(|e| e.to_string())?;
    let (min, max) = CROWDSEC_POLL_RANGE;
    if interval < min || interval > max {
        return Err(format!(
            "poll_interval {} is out of range (1s to 1h)",
            excerpt(text, 40)
        ));
    }
    Ok(interval)
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub target: Target,
    pub spec: LimitSpec,
    /// The kernel rule, from [`LimitSpec::to_rule`] (validated once, here).
    pub rule: RateRule,
    /// Counts would-be drops and drops nothing: the rule's own `shadow` or
    /// the policy's.
    pub shadow: bool,
}

/// A problem, or a note, at a place in the policy or in a list file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    /// 1-based; `None` for a problem with the whole file.
    pub line: Option<usize>,
    /// 1-based, in characters; `None` in list files.
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    /// `path:line:col`, `path:line` or `path`.
    #[must_use]
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}", self.path.display()),
            (Some(line), None) => format!("{}:{line}", self.path.display()),
            _ => self.path.display().to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// Every problem found in a policy, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Invalid content, an unreadable file or an unsafe one alike: exit code 2.
impl From<PolicyError> for Error {
    fn from(err: PolicyError) -> Self {
        let count = err.problems.len();
        let s = if count == 1 { "" } else { "s" };
        Self::BadInput(format!("the policy has {count} problem{s}:\n{err}"))
    }
}

/// Why a policy or list file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read it: {0}")]
    Io(#[source] io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error(
        "refused: it is writable by every user (mode {mode:04o}), so anyone could change the filter; `chmod o-w` it"
    )]
    WorldWritable { mode: u32 },
    #[error("refused: it is owned by uid {uid}, not by root; `chown root` it")]
    NotRoot { uid: u32 },
    #[error(
        "refused: it is writable by group {gid} (mode {mode:04o}), not by root alone; `chmod g-w` it"
    )]
    GroupWritable { gid: u32, mode: u32 },
    #[error("it is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
}

/// Reads the policy at `path` and the list files it names from the file
/// system, each checked for `ownership`, and validates it all.
pub fn load(path: &Path, ownership: Ownership) -> Result<LoadedPolicy, PolicyError> {
    let bytes = read_file(path, ownership).map_err(|e| PolicyError {
        problems: vec![Problem {
            path: path.to_path_buf(),
            line: None,
            column: None,
            message: e.to_string(),
        }],
    })?;
    parse(bytes, path, &mut |list| read_file(list, ownership))
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`], refusing one that
/// `ownership` does not allow. The checks look at the file opened (its
/// `fstat`), not at the path: a symlink is judged by the file it leads to,
/// and the bytes returned are those of the file checked.
pub fn read_file(path: &Path, ownership: Ownership) -> Result<Vec<u8>, FileError> {
    let (file, metadata) = listfile::open_regular(path).map_err(|e| match e {
        ListFileError::NotRegular { kind, .. } => FileError::NotRegular(kind),
        ListFileError::Io { source, .. } => FileError::Io(source),
        other => FileError::Io(io::Error::other(other.to_string())),
    })?;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(FileError::WorldWritable { mode });
    }
    if ownership == Ownership::RootOnly {
        if metadata.uid() != 0 {
            return Err(FileError::NotRoot {
                uid: metadata.uid(),
            });
        }
        if mode & 0o020 != 0 && metadata.gid() != 0 {
            return Err(FileError::GroupWritable {
                gid: metadata.gid(),
                mode,
            });
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    Ok(bytes)
}

/// SHA-256 of `bytes` as 64 lowercase hex digits.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Parses and validates the policy `bytes`. `origin` is the policy's path:
/// it names the file in problems, and relative list-file paths are
/// resolved against its directory. `read_list` returns a list file's bytes
/// (from the file system: [`read_file`]; or from a stored copy).
pub fn parse(
    bytes: Vec<u8>,
    origin: &Path,
    read_list: &mut dyn FnMut(&Path) -> Result<Vec<u8>, FileError>,
) -> Result<LoadedPolicy, PolicyError> {
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let mut report = Report::new(origin, valid);
            report.at(&(valid.len()..valid.len()), "not UTF-8 text");
            return Err(report.into_error());
        }
    };
    let mut report = Report::new(origin, text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for err in &syntax {
            report.toml(err);
        }
        return Err(report.into_error());
    }
    let raw = RawPolicy::read(root.into_inner(), &mut report);
    let (policy, list_files) = raw.validate(&mut report, read_list);
    if !report.problems.is_empty() {
        return Err(report.into_error());
    }
    let notes = report.notes;
    Ok(LoadedPolicy {
        path: origin.to_path_buf(),
        sha256: sha256_hex(&bytes),
        bytes,
        policy,
        list_files,
        notes,
    })
}

/// Problems and notes, located in the policy's text.
struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    notes: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            problems: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn located(&self, span: &Range<usize>, message: String) -> Problem {
        let (line, column) = self.line_col(span.start);
        Problem {
            path: self.path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message,
        }
    }

    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let problem = self.located(span, message.into());
        self.problems.push(problem);
    }

    fn note(&mut self, span: &Range<usize>, message: String) {
        let note = self.located(span, message);
        self.notes.push(note);
    }

    fn toml(&mut self, err: &toml::de::Error) {
        let message = err.message().trim_end().to_string();
        match err.span() {
            Some(span) => self.at(&span, message),
            None => self.problems.push(Problem {
                path: self.path.to_path_buf(),
                line: None,
                column: None,
                message,
            }),
        }
    }

    /// Deserializes one value, reporting why it does not fit.
    fn value<T: for<'de> Deserialize<'de>>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        T::deserialize(value.into_deserializer())
            .map_err(|e| self.toml(&e))
            .ok()
    }

    fn unknown_key(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        within: &str,
        known: &[&str],
    ) {
        self.at(
            &key.span(),
            format!(
                "unknown key '{within}{}' (expected one of: {})",
                excerpt(key.get_ref(), 40),
                known.join(", ")
            ),
        );
    }

    /// Every problem, the policy's first, then the list files', each in order.
    fn into_error(mut self) -> PolicyError {
        let origin = self.path;
        self.problems
            .sort_by_key(|p| (p.path != origin, p.path.clone(), p.line, p.column));
        PolicyError {
            problems: self.problems,
        }
    }
}

// The file's shape. Each section is read on its own (see `RawPolicy::read`);
// within a section, serde refuses unknown keys.

/// `[block]` and `[allow]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    #[serde(default)]
    entries: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
}

/// `[crowdsec]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrowdsec {
    url: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
}

/// `[aggregation]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregation {
    ipv4_prefix: Option<Spanned<u32>>,
    ipv6_prefix: Option<Spanned<u32>>,
}

/// `[limits.default]` and each `[[limits.port]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    port: Option<Spanned<String>>,
    rate: Option<u64>,
    burst: Option<u64>,
    bytes: Option<u64>,
    #[serde(default)]
    drop: bool,
    #[serde(default)]
    only_from: Vec<Spanned<String>>,
    autoblock_after: Option<u32>,
    window: Option<Spanned<String>>,
    block_for: Option<Spanned<String>>,
    #[serde(default)]
    shadow: bool,
}

const TOP_KEYS: &[&str] = &[
    "interfaces",
    "mode",
    "shadow",
    "rate_clock",
    "aggregation",
    "block",
    "allow",
    "limits",
    "crowdsec",
];
const LIMITS_KEYS: &[&str] = &["default", "port"];

#[derive(Debug, Default)]
struct RawPolicy {
    interfaces: Vec<Spanned<String>>,
    mode: Option<Spanned<String>>,
    shadow: bool,
    rate_clock: Option<Spanned<String>>,
    aggregation: Option<RawAggregation>,
    block: RawList,
    allow: RawList,
    default_rule: Option<Spanned<RawRule>>,
    port_rules: Vec<Spanned<RawRule>>,
    crowdsec: Option<Spanned<RawCrowdsec>>,
}

impl RawPolicy {
    /// Reads the document section by section, reporting each misfit.
    fn read(root: DeTable<'_>, report: &mut Report) -> Self {
        let mut raw = Self::default();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "interfaces" => raw.interfaces = report.value(value).unwrap_or_default(),
                "mode" => raw.mode = report.value(value),
                "shadow" => raw.shadow = report.value(value).unwrap_or_default(),
                "rate_clock" => raw.rate_clock = report.value(value),
                "aggregation" => raw.aggregation = report.value(value),
                "block" => raw.block = report.value(value).unwrap_or_default(),
                "allow" => raw.allow = report.value(value).unwrap_or_default(),
                "limits" => raw.read_limits(value, report),
                "crowdsec" => raw.crowdsec = report.value(value),
                _ => report.unknown_key(&key, "", TOP_KEYS),
            }
        }
        raw
    }

    fn read_limits(&mut self, value: Spanned<DeValue<'_>>, report: &mut Report) {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            report.at(
                &span,
                "limits must be a table: write [limits.default] and [[limits.port]] sections",
            );
            return;
        };
        for (key, value) in table {
            match key.get_ref().as_ref() {
                "default" => self.default_rule = report.value(value),
                "port" => {
                    let span = value.span();
                    if let DeValue::Array(rules) = value.into_inner() {
                        self.port_rules
                            .extend(rules.into_iter().filter_map(|rule| report.value(rule)));
                    } else {
                        report.at(
                            &span,
                            "limits.port must be an array of tables: write each port rule under its own [[limits.port]]",
                        );
                    }
                }
                _ => report.unknown_key(&key, "limits.", LIMITS_KEYS),
            }
        }
    }

    /// Checks every value, reading the list files.
    fn validate(
        self,
        report: &mut Report,
        read_list: &mut dyn FnMut(&Path) -> Result<Vec<u8>, FileError>,
    ) -> (Policy, Vec<ListFileSource>) {
        let mut policy = Policy {
            shadow: self.shadow,
            ..Policy::default()
        };
        for name in &self.interfaces {
            if let Err(e) = check_iface_name(name.get_ref()) {
                report.at(&name.span(), e);
            } else if policy.interfaces.contains(name.get_ref()) {
                report.at(
                    &name.span(),
                    format!("interface {} is listed twice", name.get_ref()),
                );
            } else {
                policy.interfaces.push(name.get_ref().clone());
            }
        }
        policy.mode = self.mode.and_then(|mode| choice(&mode, "mode", report));
        policy.rate_clock = self
            .rate_clock
            .and_then(|clock| choice(&clock, "rate_clock", report));
        if let Some(aggregation) = &self.aggregation {
            policy.ipv4_prefix = prefix(aggregation.ipv4_prefix.as_ref(), false, report);
            policy.ipv6_prefix = prefix(aggregation.ipv6_prefix.as_ref(), true, report);
        }

        let mut list_files = Vec::new();
        let mut named: Vec<PathBuf> = Vec::new();
        let origin = report.path;
        for (kind, raw, out) in [
            (ListKind::Block, &self.block, &mut policy.block),
            (ListKind::Allow, &self.allow, &mut policy.allow),
        ] {
            for entry in &raw.entries {
                if let Some(cidr) = cidr(entry, report) {
                    out.push(cidr);
                }
            }
            for file in &raw.files {
                let path = resolve(origin, file.get_ref());
                if file.get_ref().is_empty() {
                    report.at(&file.span(), "a list file path cannot be empty");
                    continue;
                }
                if named.contains(&path) {
                    report.at(
                        &file.span(),
                        format!("list file {} is named twice", path.display()),
                    );
                    continue;
                }
                named.push(path.clone());
                if let Some((source, entries)) = read_list_file(kind, path, file, report, read_list)
                {
                    out.extend(entries);
                    list_files.push(source);
                }
            }
            out.sort_unstable();
            out.dedup();
        }
        let both: Vec<&Cidr> = policy
            .block
            .iter()
            .filter(|cidr| policy.allow.binary_search(cidr).is_ok())
            .collect();
        if let Some(first) = both.first() {
            report.notes.push(Problem {
                path: origin.to_path_buf(),
                line: None,
                column: None,
                message: format!(
                    "{} entries (such as {first}) are on both the blocklist and the allowlist: the allowlist wins",
                    both.len()
                ),
            });
        }

        if let Some(raw) = self.default_rule {
            policy.default_limit = rule(raw, true, self.shadow, report).and_then(|c| c.rule);
        }
        if let Some(extra) = self.port_rules.get(MAX_RULES as usize - 1) {
            report.at(
                &extra.span(),
                format!(
                    "too many port rules: {} given, the filter holds {} (rule ids 1-{}; 0 is the default rule)",
                    self.port_rules.len(),
                    MAX_RULES - 1,
                    MAX_RULES - 1
                ),
            );
        }
        // Rules with a bad value still take part in the overlap check: their
        // port is known.
        let mut ports: Vec<Checked> = Vec::new();
        let mut only_from = 0;
        for raw in self.port_rules {
            let Some(checked) = rule(raw, false, self.shadow, report) else {
                continue;
            };
            if let Some(other) = ports.iter().find(|o| o.target.overlaps(&checked.target)) {
                let (line, _) = report.line_col(other.span.start);
                report.at(
                    &checked.span,
                    format!(
                        "port rule {} overlaps port rule {} (line {line}): a port has one rule",
                        checked.target, other.target
                    ),
                );
            }
            if let Some(rule) = &checked.rule {
                only_from += rule.spec.only_from.len();
                if only_from > capacity::ONLY_FROM as usize {
                    report.at(
                        &checked.span,
                        format!(
                            "the only_from entries of all rules add up to more than the filter holds ({})",
                            capacity::ONLY_FROM
                        ),
                    );
                }
            }
            ports.push(checked);
        }
        policy.port_rules = ports.into_iter().filter_map(|c| c.rule).collect();
        if let Some(raw) = self.crowdsec {
            policy.crowdsec = crowdsec(raw, report);
        }
        (policy, list_files)
    }
}

/// Checks `[crowdsec]`; the key file is only named here (`run` reads it).
fn crowdsec(raw: Spanned<RawCrowdsec>, report: &mut Report) -> Option<CrowdsecConfig> {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut ok = true;
    let url = if let Some(url) = raw.url {
        if let Err(e) = check_crowdsec_url(url.get_ref()) {
            report.at(&url.span(), e);
            ok = false;
        }
        url.into_inner()
    } else {
        report.at(
            &span,
            "[crowdsec] needs url, the LAPI's address (e.g. url = \"http://127.0.0.1:8080\")",
        );
        ok = false;
        String::new()
    };
    let api_key_file = match raw.api_key_file {
        Some(file) if file.get_ref().is_empty() => {
            report.at(&file.span(), "api_key_file cannot be empty");
            ok = false;
            PathBuf::new()
        }
        Some(file) => resolve(report.path, file.get_ref()),
        None => {
            report.at(
                &span,
                "[crowdsec] needs api_key_file, the file holding the bouncer key (`cscli bouncers add NAME -o raw`)",
            );
            ok = false;
            PathBuf::new()
        }
    };
    let poll_interval = match raw.poll_interval {
        Some(text) => match check_crowdsec_poll(text.get_ref()) {
            Ok(interval) => interval,
            Err(e) => {
                report.at(&text.span(), e);
                ok = false;
                DEFAULT_CROWDSEC_POLL
            }
        },
        None => DEFAULT_CROWDSEC_POLL,
    };
    ok.then_some(CrowdsecConfig {
        url,
        api_key_file,
        poll_interval,
    })
}

/// A policy's path for a list file: relative ones from the policy's directory.
fn resolve(origin: &Path, file: &str) -> PathBuf {
    match origin.parent() {
        Some(dir) => dir.join(file),
        None => PathBuf::from(file),
    }
}

/// Reads and parses one list file; problems name the list file's line.
fn read_list_file(
    list: ListKind,
    path: PathBuf,
    named_at: &Spanned<String>,
    report: &mut Report,
    read_list: &mut dyn FnMut(&Path) -> Result<Vec<u8>, FileError>,
) -> Option<(ListFileSource, Vec<Cidr>)> {
    let bytes = match read_list(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.at(
                &named_at.span(),
                format!("list file {}: {e}", path.display()),
            );
            return None;
        }
    };
    let (line, column) = report.line_col(named_at.span().start);
    let from = format!(
        "(list file named at {}:{line}:{column})",
        report.path.display()
    );
    let in_file = |line: u64, message: String| Problem {
        path: path.clone(),
        line: usize::try_from(line).ok(),
        column: None,
        message: format!("{message} {from}"),
    };
    match listfile::parse(&bytes[..], &path) {
        Ok(entries) => Some((
            ListFileSource {
                sha256: sha256_hex(&bytes),
                entries: entries.len(),
                path,
                list,
                bytes,
            },
            entries,
        )),
        Err(ListFileError::BadEntry {
            line, text, reason, ..
        }) => {
            report
                .problems
                .push(in_file(line, format!("bad entry '{text}': {reason}")));
            None
        }
        Err(ListFileError::LineTooLong { line, start, .. }) => {
            report.problems.push(in_file(
                line,
                format!(
                    "line longer than {} bytes (starts with '{start}')",
                    listfile::MAX_LINE
                ),
            ));
            None
        }
        Err(other) => {
            report.at(&named_at.span(), other.to_string());
            None
        }
    }
}

/// One of a clap value enum's names (`auto`, `precise`, ...).
fn choice<T: clap::ValueEnum>(
    value: &Spanned<String>,
    key: &str,
    report: &mut Report,
) -> Option<T> {
    let found = T::from_str(value.get_ref(), false).ok();
    if found.is_none() {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        report.at(
            &value.span(),
            format!(
                "{key} '{}' is not one of: {}",
                excerpt(value.get_ref(), 40),
                names.join(", ")
            ),
        );
    }
    found
}

fn prefix(value: Option<&Spanned<u32>>, ipv6: bool, report: &mut Report) -> Option<u8> {
    let value = value?;
    let len = *value.get_ref();
    let (v4, v6) = if ipv6 {
        (None, Some(len))
    } else {
        (Some(len), None)
    };
    if let Err(e) = check_aggregation(v4, v6) {
        report.at(&value.span(), as_policy_keys(&e.to_string()));
        return None;
    }
    u8::try_from(len).ok()
}

fn cidr(entry: &Spanned<String>, report: &mut Report) -> Option<Cidr> {
    match entry.get_ref().parse::<Cidr>() {
        Ok(cidr) => {
            if let Some(note) = mapped_note(entry.get_ref(), &cidr) {
                report.note(&entry.span(), note);
            }
            Some(cidr)
        }
        Err(e) => {
            report.at(&entry.span(), e.to_string());
            None
        }
    }
}

fn duration(value: Option<&Spanned<String>>, report: &mut Report) -> Result<Option<Duration>, ()> {
    let Some(value) = value else {
        return Ok(None);
    };
    parse_duration(value.get_ref()).map(Some).map_err(|e| {
        report.at(&value.span(), e.to_string());
    })
}

/// A rule checked: its target, where to point at it (its port, else its
/// table), and the rule if it is valid.
struct Checked {
    target: Target,
    span: Range<usize>,
    rule: Option<PolicyRule>,
}

/// Validates one rule as `limit set` would (and a little more: `window` or
/// `block_for` without `autoblock_after` is an error, not ignored). `None`
/// when even its target is not known.
fn rule(
    raw: Spanned<RawRule>,
    is_default: bool,
    policy_shadow: bool,
    report: &mut Report,
) -> Option<Checked> {
    let table_span = raw.span();
    let raw = raw.into_inner();
    let mut ok = true;
    let (target, span) = if is_default {
        if let Some(port) = &raw.port {
            report.at(
                &port.span(),
                "the default rule covers every port and takes no port (port rules go under [[limits.port]])",
            );
            ok = false;
        }
        (Target::Default, table_span)
    } else {
        let Some(port) = &raw.port else {
            report.at(
                &table_span,
                "a port rule needs a port, e.g. port = \"tcp/25\" or \"udp/1000-2000\"",
            );
            return None;
        };
        match port.get_ref().parse::<Target>() {
            Ok(Target::Default) => {
                report.at(
                    &port.span(),
                    "'default' is not a port: the default rule goes under [limits.default]",
                );
                return None;
            }
            Ok(target) => (target, port.span()),
            Err(e) => {
                report.at(&port.span(), e.to_string());
                return None;
            }
        }
    };
    let mut only_from = Vec::with_capacity(raw.only_from.len());
    for entry in &raw.only_from {
        match cidr(entry, report) {
            Some(cidr) => only_from.push(cidr),
            None => ok = false,
        }
    }
    only_from.sort_unstable();
    only_from.dedup();
    let window = duration(raw.window.as_ref(), report);
    let block_for = duration(raw.block_for.as_ref(), report);
    let invalid = Checked {
        target,
        span: span.clone(),
        rule: None,
    };
    let (Ok(window), Ok(block_for)) = (window, block_for) else {
        return Some(invalid);
    };
    if raw.autoblock_after.is_none() {
        for given in [&raw.window, &raw.block_for].into_iter().flatten() {
            report.at(
                &given.span(),
                "window and block_for set automatic blocks: give autoblock_after too",
            );
            ok = false;
        }
    }
    if !ok {
        return Some(invalid);
    }
    let spec = LimitSpec {
        rate: raw.rate,
        burst: raw.burst,
        bytes: raw.bytes,
        drop: raw.drop,
        only_from,
        autoblock: raw.autoblock_after.map(|after| AutoblockSpec {
            after,
            window: window.unwrap_or(DEFAULT_AUTOBLOCK_WINDOW),
            block_for: block_for.unwrap_or(DEFAULT_AUTOBLOCK_FOR),
        }),
    };
    match spec.to_rule(&target) {
        Ok(rule) => Some(Checked {
            rule: Some(PolicyRule {
                target,
                spec,
                rule,
                shadow: raw.shadow || policy_shadow,
            }),
            ..invalid
        }),
        Err(e) => {
            report.at(
                &span,
                format!("rule {target}: {}", as_policy_keys(&e.to_string())),
            );
            Some(invalid)
        }
    }
}

/// A message of the command-line checks ([`LimitSpec::to_rule`],
/// [`check_aggregation`]) in the policy's words: its keys are the flags'
/// names with underscores (`--only-from` is `only_from`).
fn as_policy_keys(message: &str) -> String {
    [
        ("--autoblock-after", "autoblock_after"),
        ("--block-for", "block_for"),
        ("--only-from", "only_from"),
        ("--ipv4-prefix", "ipv4_prefix"),
        ("--ipv6-prefix", "ipv6_prefix"),
        ("--window", "window"),
        ("--rate", "rate"),
        ("--burst", "burst"),
        ("--bytes", "bytes"),
        ("--drop", "drop"),
    ]
    .into_iter()
    .fold(message.to_string(), |text, (flag, key)| {
        text.replace(flag, key)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse_with(text: &str, lists: &[(&str, &str)]) -> Result<LoadedPolicy, PolicyError> {
        let lists: HashMap<PathBuf, Vec<u8>> = lists
            .iter()
            .map(|(path, text)| (PathBuf::from(path), text.as_bytes().to_vec()))
            .collect();
        parse(
            text.as_bytes().to_vec(),
            Path::new("/etc/filter-ctl/policy.toml"),
            &mut |path| {
                lists
                    .get(path)
                    .cloned()
                    .ok_or_else(|| FileError::Io(io::ErrorKind::NotFound.into()))
            },
        )
    }

    fn problems(text: &str, lists: &[(&str, &str)]) -> Vec<String> {
        parse_with(text, lists)
            .expect_err("the policy should be refused")
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn has(problems: &[String], needle: &str) -> bool {
        problems.iter().any(|p| p.contains(needle))
    }

    #[test]
    fn crowdsec_section_is_read_and_checked() {
        let loaded = parse_with(
            "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\napi_key_file = \"crowdsec.key\"\npoll_interval = \"2s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            loaded.policy.crowdsec,
            Some(CrowdsecConfig {
                url: "http://127.0.0.1:8080".into(),
                api_key_file: PathBuf::from("/etc/filter-ctl/crowdsec.key"),
                poll_interval: Duration::from_secs(2),
            })
        );
        let defaults = parse_with(
            "[crowdsec]\nurl = \"https://lapi.example:8080/\"\napi_key_file = \"/k\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            defaults.policy.crowdsec.unwrap().poll_interval,
            DEFAULT_CROWDSEC_POLL
        );
        let found = problems(
            "[crowdsec]\nurl = \"ftp://x\"\npoll_interval = \"0s\"\nkey = 1\n",
            &[],
        );
        assert!(has(&found, "unknown field `key`"), "{found:?}");
        let found = problems(
            "[crowdsec]\nurl = \"ftp://x\"\npoll_interval = \"0s\"\n",
            &[],
        );
        assert!(has(&found, ":2:7: 'ftp://x' is not an http"), "{found:?}");
        assert!(has(&found, "poll_interval 0s is out of range"), "{found:?}");
        assert!(has(&found, "needs api_key_file"), "{found:?}");
        let found = problems("[crowdsec]\napi_key_file = \"k\"\n", &[]);
        assert!(has(&found, "needs url"), "{found:?}");
    }

    const P: &str = "/etc/filter-ctl/policy.toml";

    const MINIMAL: &str = r#"interfaces = ["eth1"]          # run attaches to these when --iface is not given
[block]
entries = ["203.0.113.0/24", "2001:db8:bad::/48"]
files = ["/etc/filter-ctl/drop.txt"]
[allow]
entries = ["198.51.100.10"]
[limits.default]
rate = 1000
burst = 2000
[[limits.port]]
port = "tcp/25"
rate = 10
burst = 20
autoblock_after = 100
window = "10s"
block_for = "10m"
"#;

    #[test]
    fn the_minimal_form_parses_exactly() {
        let loaded = parse_with(
            MINIMAL,
            &[(
                "/etc/filter-ctl/drop.txt",
                "# drop\n192.0.2.7\n203.0.113.9 ; covered\n",
            )],
        )
        .unwrap();
        let policy = &loaded.policy;
        assert_eq!(policy.interfaces, ["eth1"]);
        assert_eq!(
            (policy.mode, policy.shadow, policy.rate_clock),
            (None, false, None)
        );
        assert_eq!((policy.ipv4_prefix, policy.ipv6_prefix), (None, None));
        let text = |cidrs: &[Cidr]| cidrs.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            text(&policy.block),
            [
                "192.0.2.7/32",
                "203.0.113.0/24",
                "203.0.113.9/32",
                "2001:db8:bad::/48"
            ]
        );
        assert_eq!(text(&policy.allow), ["198.51.100.10/32"]);
        let default = policy.default_limit.as_ref().unwrap();
        assert_eq!(default.target, Target::Default);
        assert_eq!(
            default.spec,
            LimitSpec {
                rate: Some(1000),
                burst: Some(2000),
                ..LimitSpec::default()
            }
        );
        assert_eq!(
            default.rule,
            default.spec.to_rule(&Target::Default).unwrap()
        );
        let [port] = policy.port_rules.as_slice() else {
            panic!("{:?}", policy.port_rules)
        };
        assert_eq!(port.target, "tcp/25".parse().unwrap());
        assert_eq!(
            port.spec,
            LimitSpec {
                rate: Some(10),
                burst: Some(20),
                autoblock: Some(AutoblockSpec {
                    after: 100,
                    window: Duration::from_secs(10),
                    block_for: Duration::from_mins(10),
                }),
                ..LimitSpec::default()
            }
        );
        assert!(!port.shadow);
        assert_eq!(loaded.sha256, sha256_hex(MINIMAL.as_bytes()));
        assert_eq!(loaded.bytes, MINIMAL.as_bytes());
        let [file] = loaded.list_files.as_slice() else {
            panic!("{:?}", loaded.list_files)
        };
        assert_eq!(file.path, Path::new("/etc/filter-ctl/drop.txt"));
        assert_eq!((file.list, file.entries), (ListKind::Block, 2));
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn every_section_and_rule_reports_its_own_problems() {
        let text = r#"interfaces = ["eth1"]
bogus = 1
[block]
entries = ["198.51.100.1"]
file = ["x.txt"]
[limits]
typo = 2
[[limits.port]]
port = "tcp/25"
rate = 5
rat = 3
[[limits.port]]
port = "tcp/80"
rate = -5
[[limits.port]]
port = "udp/53"
rate = 5
[crowdsec]
url = "http://127.0.0.1:8080"
"#;
        let found = problems(text, &[]);
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(
            found[0].starts_with(&format!("{P}:2:1: unknown key 'bogus'")),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with(&format!("{P}:5:1: unknown field `file`")),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with(&format!("{P}:7:1: unknown key 'limits.typo'")),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with(&format!("{P}:11:1: unknown field `rat`")),
            "{found:#?}"
        );
        assert!(
            found[4].starts_with(&format!("{P}:14:8: invalid value")),
            "{found:#?}"
        );
        assert!(
            found[5].starts_with(&format!("{P}:18:1: [crowdsec] needs api_key_file")),
            "{found:#?}"
        );
    }

    #[test]
    fn syntax_errors_are_located_and_stop_there() {
        let found = problems("interfaces = [\"eth1\"\nmode = auto\n", &[]);
        assert!(!found.is_empty());
        assert!(
            found.iter().all(|p| p.starts_with(&format!("{P}:"))),
            "{found:#?}"
        );
        assert!(has(&found, &format!("{P}:2:")), "{found:#?}");
        let mut sorted = found.clone();
        sorted.dedup();
        assert_eq!(sorted, found, "no problem twice");
        let found = problems("a = 1\n\u{0}", &[]);
        assert!(has(&found, &format!("{P}:")), "{found:#?}");
        let bad_utf8 = parse(
            b"interfaces = [\"eth1\"]\nmode = \"\xff\"\n".to_vec(),
            Path::new(P),
            &mut |_| unreachable!(),
        )
        .unwrap_err();
        assert_eq!(bad_utf8.to_string(), format!("{P}:2:9: not UTF-8 text"));
    }

    #[test]
    fn semantic_problems_point_at_their_values() {
        let text = r#"interfaces = ["eth1", "eth1", "a/b"]
mode = "turbo"
rate_clock = "slow"
[aggregation]
ipv4_prefix = 33
ipv6_prefix = 0
[block]
entries = ["198.51.100.0/24", "203.0.113.300", "::ffff:192.0.2.1"]
[limits.default]
rate = 0
[[limits.port]]
port = "sctp/9"
rate = 1
[[limits.port]]
port = "tcp/25"
rate = 10
window = "10 minutes"
[[limits.port]]
port = "tcp/20-30"
drop = true
[[limits.port]]
port = "tcp/25"
rate = 1
[[limits.port]]
port = "udp/53"
rate = 10
window = "1m"
[[limits.port]]
port = "udp/54"
only_from = ["192.0.2.0/33"]
[[limits.port]]
port = "udp/55"
drop = true
rate = 5
[[limits.port]]
rate = 5
"#;
        let found = problems(text, &[]);
        let expected = [
            "1:23: interface eth1 is listed twice",
            "1:31: 'a/b' is not an interface name",
            "2:8: mode 'turbo' is not one of: auto, native, skb",
            "3:14: rate_clock 'slow' is not one of: auto, coarse, precise",
            "5:15: ipv4_prefix must be 1-32 (got 33)",
            "6:15: ipv6_prefix must be 1-128 (got 0)",
            "8:31: '203.0.113.300' is not an IPv4 or IPv6 address",
            "9:1: rule default: rate must be at least 1",
            "12:8: 'sctp/9': unknown protocol",
            "17:10: '10 minutes' is not a duration",
            // tcp/25 at line 15 has a bad value; its port still counts.
            "19:8: port rule tcp/20-30 overlaps port rule tcp/25 (line 15)",
            "22:8: port rule tcp/25 overlaps port rule tcp/25 (line 15)",
            "27:10: window and block_for set automatic blocks: give autoblock_after too",
            "30:14: '192.0.2.0/33': prefix length 33 is out of range",
            "32:8: rule udp/55: drop closes the port to everyone",
            "35:1: a port rule needs a port",
        ];
        for (problem, want) in found.iter().zip(expected) {
            assert!(
                problem.starts_with(&format!("{P}:{want}")),
                "{problem}\n  wanted {want}\nall: {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn list_files_resolve_relative_paths_and_name_their_lines() {
        let text = r#"[block]
files = ["lists/drop.txt", "/srv/abs.txt"]
[allow]
files = ["lists/keep.txt"]
"#;
        let loaded = parse_with(
            text,
            &[
                ("/etc/filter-ctl/lists/drop.txt", "192.0.2.1\n192.0.2.1\n"),
                ("/srv/abs.txt", "2001:db8::/32\n192.0.2.1 # again\n"),
                ("/etc/filter-ctl/lists/keep.txt", "198.51.100.0/24\n"),
            ],
        )
        .unwrap();
        let paths: Vec<_> = loaded
            .list_files
            .iter()
            .map(|f| (f.path.clone(), f.list))
            .collect();
        assert_eq!(
            paths,
            [
                (
                    PathBuf::from("/etc/filter-ctl/lists/drop.txt"),
                    ListKind::Block
                ),
                (PathBuf::from("/srv/abs.txt"), ListKind::Block),
                (
                    PathBuf::from("/etc/filter-ctl/lists/keep.txt"),
                    ListKind::Allow
                ),
            ]
        );
        assert_eq!(
            loaded.policy.block.len(),
            2,
            "deduplicated: {:?}",
            loaded.policy.block
        );
        assert_eq!(
            loaded.list_files[0].sha256,
            sha256_hex(b"192.0.2.1\n192.0.2.1\n")
        );
        // A policy named without a directory resolves against the current one.
        let loaded = parse(
            b"[block]\nfiles = [\"drop.txt\"]\n".to_vec(),
            Path::new("policy.toml"),
            &mut |path| {
                assert_eq!(path, Path::new("drop.txt"));
                Ok(b"192.0.2.1\n".to_vec())
            },
        )
        .unwrap();
        assert_eq!(loaded.policy.block.len(), 1);

        let found = problems(
            "[block]\nfiles = [\"missing.txt\", \"bad.txt\", \"bad.txt\"]\n",
            &[("/etc/filter-ctl/bad.txt", "192.0.2.1\n\n192.0.2.300\n")],
        );
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with(&format!(
                "{P}:2:10: list file /etc/filter-ctl/missing.txt: cannot read it"
            )),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with(&format!(
                "{P}:2:36: list file /etc/filter-ctl/bad.txt is named twice"
            )),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with("/etc/filter-ctl/bad.txt:3: bad entry '192.0.2.300'")
                && found[2].ends_with(&format!("(list file named at {P}:2:25)")),
            "{found:#?}"
        );
    }

    #[test]
    fn rules_take_the_cli_defaults_and_the_policy_shadow() {
        let text = r#"shadow = true
[limits.default]
rate = 100
[[limits.port]]
port = "tcp/25"
rate = 10
autoblock_after = 5
[[limits.port]]
port = "udp/1000-2000"
drop = true
shadow = true
[[limits.port]]
port = "tcp/22"
only_from = ["192.0.2.0/24", "192.0.2.9/24", "::ffff:198.51.100.1"]
"#;
        let loaded = parse_with(text, &[]).unwrap();
        let policy = &loaded.policy;
        assert!(policy.shadow);
        assert!(policy.default_limit.as_ref().unwrap().shadow);
        assert!(policy.port_rules.iter().all(|r| r.shadow));
        let auto = policy.port_rules[0].spec.autoblock.unwrap();
        assert_eq!(
            (auto.after, auto.window, auto.block_for),
            (5, DEFAULT_AUTOBLOCK_WINDOW, DEFAULT_AUTOBLOCK_FOR)
        );
        assert_eq!(policy.port_rules[1].rule.action, filter_common::RULE_DROP);
        assert_eq!(policy.port_rules[2].spec.only_from.len(), 2, "deduplicated");
        let [note] = loaded.notes.as_slice() else {
            panic!("{:?}", loaded.notes)
        };
        assert!(
            note.to_string()
                .starts_with(&format!("{P}:14:46: ::ffff:198.51.100.1 is an IPv4-mapped")),
            "{note}"
        );

        let text = "[limits.default]\nrate = 1\n[[limits.port]]\nport = \"tcp/1\"\nrate = 1\nshadow = true\n";
        let policy = parse_with(text, &[]).unwrap().policy;
        assert!(!policy.default_limit.unwrap().shadow);
        assert!(policy.port_rules[0].shadow);
    }

    #[test]
    fn settings_parse() {
        let text = "mode = \"skb\"\nrate_clock = \"coarse\"\n[aggregation]\nipv4_prefix = 24\nipv6_prefix = 48\n";
        let policy = parse_with(text, &[]).unwrap().policy;
        assert_eq!(policy.mode, Some(Mode::Skb));
        assert_eq!(policy.rate_clock, Some(RateClock::Coarse));
        assert_eq!(
            (policy.ipv4_prefix, policy.ipv6_prefix),
            (Some(24), Some(48))
        );
        assert_eq!(parse_with("", &[]).unwrap().policy, Policy::default());
    }

    #[test]
    fn too_many_port_rules() {
        let rule = "[[limits.port]]\nport = \"tcp/PORT\"\nrate = 1\n";
        let text: String = (0..MAX_RULES)
            .map(|port| rule.replace("PORT", &port.to_string()))
            .collect();
        let found = problems(&text, &[]);
        let line = 3 * (MAX_RULES as usize - 1) + 1;
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with(&format!("{P}:{line}:1: too many port rules: 256 given")),
            "{found:#?}"
        );
    }

    /// A file in a fresh temporary directory.
    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("filter-ctl-policy-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn unsafe_files_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = temp_file("policy.toml", "[block]\nfiles = [\"drop.txt\"]\n");
        let list = path.with_file_name("drop.txt");
        std::fs::write(&list, "192.0.2.1\n").unwrap();
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        chmod(&path, 0o644);
        chmod(&list, 0o644);
        let loaded = load(&path, Ownership::AnyOwner).unwrap();
        assert_eq!(loaded.list_files[0].path, list);

        chmod(&path, 0o666);
        let err = load(&path, Ownership::AnyOwner).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: refused: it is writable by every user (mode 0666)",
                path.display()
            )),
            "{err}"
        );
        chmod(&path, 0o644);
        chmod(&list, 0o646);
        let err = load(&path, Ownership::AnyOwner).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "list file {}: refused: it is writable by every user",
                list.display()
            )),
            "{err}"
        );
        chmod(&list, 0o644);

        // A symlink is judged by what it leads to.
        let link = path.with_file_name("link.toml");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        chmod(&path, 0o666);
        assert!(load(&link, Ownership::AnyOwner).is_err());
        chmod(&path, 0o644);
        assert!(load(&link, Ownership::AnyOwner).is_ok());

        let dir = path.parent().unwrap();
        let err = load(dir, Ownership::AnyOwner).unwrap_err().to_string();
        assert!(
            err.contains("it is a directory, not a regular file"),
            "{err}"
        );

        if nix_is_root() {
            assert!(load(&path, Ownership::RootOnly).is_ok());
            chmod(&path, 0o664);
            std::os::unix::fs::chown(&path, Some(0), Some(65534)).unwrap();
            let err = load(&path, Ownership::RootOnly).unwrap_err().to_string();
            assert!(err.contains("writable by group 65534"), "{err}");
            assert!(load(&path, Ownership::AnyOwner).is_ok());
            chmod(&path, 0o644);
            std::os::unix::fs::chown(&list, Some(65534), None).unwrap();
            let err = load(&path, Ownership::RootOnly).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534, not by root"), "{err}");
        } else {
            eprintln!("skipped the root-ownership checks: not running as root");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn cli_messages_in_policy_words() {
        assert_eq!(
            as_policy_keys("--drop takes no --rate, --only-from or --autoblock-after"),
            "drop takes no rate, only_from or autoblock_after"
        );
    }
}
