//! `cargo xtask lab`: shows the filter dropping real traffic.
//!
//! Two network namespaces joined by a veth pair. The controller runs in the
//! destination namespace with a pin directory of its own; pings from the source
//! pass, are dropped once the source is blocked, stay dropped after the
//! controller exits (the XDP link is pinned), and pass again after `detach`.
//! [`Lab`] tears everything down when dropped: on success, error, panic and
//! Ctrl-C; a lab left by a killed run is removed by the next one.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build, cmd, setup, sys};

const SRC_V4: &str = "198.18.0.1";
const DST_V4: &str = "198.18.0.2";
const SRC_V6: &str = "2001:db8::1";
const DST_V6: &str = "2001:db8::2";
const PING: [&str; 6] = ["-c", "3", "-W", "1", "-i", "0.2"];
/// Echo requests per ping run: what the blocklist counter must grow by.
const PINGS: u64 = 3;

const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct Options {
    /// After a successful demo, leave the namespaces and the pinned filter
    /// (still blocking 198.18.0.1) in place to explore; prints how to remove
    /// them. The next lab removes them too.
    #[arg(long)]
    keep: bool,
}

pub fn run(options: &Options) -> Result<()> {
    sys::require_root("the lab creates network namespaces and attaches an XDP program")?;
    sys::catch_interrupts();
    setup::run()?;
    let ctl = build::run()?;
    sys::check_interrupted()?;
    remove_stale_labs(&ctl)?;
    let mut lab = Lab::new(Names::for_pid(std::process::id()), ctl);
    lab.create()?;
    lab.demo(options.keep)?;
    // Only a lab that worked is kept: one that failed is torn down.
    lab.keep = options.keep;
    Ok(())
}

/// Everything a lab creates is named after the pid of the xtask that made it.
struct Names {
    pid: u32,
    src_ns: String,
    dst_ns: String,
    src_if: String,
    dst_if: String,
    pin_dir: PathBuf,
    /// The lab's own `--state-dir`, never the host's /var/lib/filter-ctl.
    state_dir: PathBuf,
}

impl Names {
    fn for_pid(pid: u32) -> Self {
        Self {
            pid,
            src_ns: format!("flab-src-{pid}"),
            dst_ns: format!("flab-dst-{pid}"),
            // Interface names have at most 15 bytes; pids at most 7 digits.
            src_if: format!("vsrc-{pid}"),
            dst_if: format!("vdst-{pid}"),
            pin_dir: Path::new(BPFFS).join(format!("filter-ctl-lab-{pid}")),
            state_dir: PathBuf::from(format!("/run/filter-ctl-lab-state-{pid}")),
        }
    }
}

/// A command run inside the network namespace `ns`. `nsenter` rather than
/// `ip netns exec`, which gives the command a /sys without the bpffs pins.
fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={NETNS_DIR}/{ns}"))
        .arg("--")
        .arg(program);
    command
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::stdout(Command::new("ip").args(args)).map(drop)
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

/// The lab; dropping it tears it down (unless `keep`).
struct Lab {
    names: Names,
    ctl: PathBuf,
    /// Leave the lab in place when dropped.
    keep: bool,
    /// Namespaces this lab created (or adopted from a dead lab), to delete.
    namespaces: Vec<String>,
    controller: Option<Controller>,
}

impl Lab {
    fn new(names: Names, ctl: PathBuf) -> Self {
        Self {
            names,
            ctl,
            keep: false,
            namespaces: Vec::new(),
            controller: None,
        }
    }

    fn create(&mut self) -> Result<()> {
        let Names {
            src_ns,
            dst_ns,
            src_if,
            dst_if,
            ..
        } = &self.names;
        step(&format!(
            "Creating namespaces {src_ns} and {dst_ns} joined by {src_if} <-> {dst_if}"
        ));
        for ns in [src_ns, dst_ns] {
            ip(&["netns", "add", ns])
                .with_context(|| format!("cannot create the namespace {ns}"))?;
            self.namespaces.push(ns.clone());
        }
        ip(&[
            "link", "add", src_if, "netns", src_ns, "type", "veth", "peer", "name", dst_if,
            "netns", dst_ns,
        ])
        .context("cannot create the veth pair")?;
        for (ns, dev, v4, v6) in [
            (src_ns, src_if, SRC_V4, SRC_V6),
            (dst_ns, dst_if, DST_V4, DST_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Shows the filter at work; stops before `detach` when the lab is to be kept.
    fn demo(&mut self, keep: bool) -> Result<()> {
        self.legend();

        step(&format!(
            "Starting the controller on {} (until Ctrl-C)",
            self.names.dst_if
        ));
        self.start_controller()?;

        step("With no rule, traffic passes");
        self.expect_ping(DST_V4, true, "IPv4 passes")?;
        self.expect_ping(DST_V6, true, "IPv6 passes")?;
        let before = self.blocklist_packets()?;
        self.show_ctl(&["stats"])?;

        step(&format!("Blocking {SRC_V4}"));
        self.show_ctl(&["block", SRC_V4])?;
        self.expect_ping(DST_V4, false, "IPv4 from 198.18.0.1 is dropped")?;
        self.expect_ping(
            DST_V6,
            true,
            "IPv6 from 2001:db8::1 is not blocked: it still passes",
        )?;
        self.show_ctl(&["list"])?;
        self.show_ctl(&["stats"])?;
        let after = self.blocklist_packets()?;
        ensure!(
            after >= before + PINGS,
            "the blocklist counter went from {before} to {after}, expected {PINGS} more"
        );
        println!("    -> blocklist counter: {before} -> {after} packets");

        self.rate_limit_demo()?;

        step("Stopping the controller (SIGINT): the pinned filter keeps enforcing");
        let status = self
            .controller
            .take()
            .context("controller not running")?
            .stop()?;
        ensure!(
            status.success(),
            "filter-ctl run exited with {status} after SIGINT"
        );
        self.expect_ping(DST_V4, false, "still dropped without the controller")?;

        if keep {
            return Ok(());
        }

        step("Detaching: traffic passes again");
        self.show_ctl(&["detach"])?;
        ensure!(
            !self.xdp_attached()?,
            "an XDP program is still attached to {} after detach",
            self.names.dst_if
        );
        let leftovers = pins(&self.names.pin_dir);
        ensure!(
            leftovers.is_empty(),
            "filter-ctl detach left pins behind: {}",
            leftovers.join(", ")
        );
        self.expect_ping(DST_V4, true, "IPv4 passes again")?;
        println!(
            "\nThe lab worked. Tearing it down; `cargo xtask lab --keep` leaves it for exploring."
        );
        Ok(())
    }

    /// A burst of pings from the IPv6 source against a tight default limit:
    /// most are dropped, and the source ends up blocked automatically.
    fn rate_limit_demo(&self) -> Result<()> {
        step(&format!(
            "Rate limiting: every source at most 5 packets/s (burst 5); {SRC_V6} floods"
        ));
        self.show_ctl(&[
            "limit",
            "set",
            "default",
            "--rate",
            "5",
            "--burst",
            "5",
            "--autoblock-after",
            "20",
            "--window",
            "10s",
            "--block-for",
            "1m",
        ])?;
        let before = self.reason_packets("ratelimit")?;
        let flood = ["-c", "60", "-i", "0.01", "-W", "1"];
        println!("[src] $ ping {} {DST_V6}", flood.join(" "));
        let mut ping = in_netns(&self.names.src_ns, "ping");
        ping.args(flood).arg(DST_V6);
        let out = cmd::capture(&mut ping)?;
        sys::check_interrupted()?;
        indented(
            out.stdout
                .lines()
                .find(|line| line.contains("transmitted"))
                .unwrap_or("(no summary)"),
        );
        let limited = self.reason_packets("ratelimit")? - before;
        let autoblocked = self.reason_packets("autoblock")?;
        self.show_ctl(&["list"])?;
        ensure!(
            limited >= 20 && autoblocked > 0,
            "expected at least 20 rate-limited and some automatically blocked echo requests, got {limited} and {autoblocked}"
        );
        println!(
            "    -> {limited} echo requests over the limit, then {SRC_V6} was blocked automatically ({autoblocked} dropped since)"
        );
        step("Lifting the limit and the automatic block");
        self.show_ctl(&["limit", "remove", "default"])?;
        self.show_ctl(&["unblock", SRC_V6])?;
        self.expect_ping(DST_V6, true, "IPv6 passes again")
    }

    /// Packets counted under `reason` in `filter-ctl stats --json`.
    fn reason_packets(&self, reason: &str) -> Result<u64> {
        let out = cmd::stdout(&mut self.ctl(&["stats", "--json"]))?;
        json_counter(&out, reason, "packets").with_context(|| {
            format!("no reasons.{reason}.packets in `filter-ctl stats --json`: {out}")
        })
    }

    fn legend(&self) {
        let Names {
            src_ns,
            dst_ns,
            pin_dir,
            ..
        } = &self.names;
        println!("\nBelow, `[src] $ X` runs X in {src_ns} ({SRC_V4}, {SRC_V6}), and");
        println!("`[dst] $ filter-ctl X` runs in {dst_ns} ({DST_V4}, {DST_V6}):");
        println!(
            "    nsenter --net={NETNS_DIR}/{dst_ns} -- {} --pin-dir {} --state-dir {} X",
            self.ctl.display(),
            pin_dir.display(),
            self.names.state_dir.display()
        );
    }

    /// `filter-ctl --pin-dir <lab pins> ARGS` in the destination namespace.
    fn ctl(&self, args: &[&str]) -> Command {
        let mut command = in_netns(&self.names.dst_ns, &self.ctl);
        command
            .arg("--pin-dir")
            .arg(&self.names.pin_dir)
            .arg("--state-dir")
            .arg(&self.names.state_dir)
            .args(args);
        command
    }

    /// Runs filter-ctl, showing the command and its output; fails unless it succeeds.
    fn show_ctl(&self, args: &[&str]) -> Result<String> {
        println!("[dst] $ filter-ctl {}", args.join(" "));
        let out = cmd::capture(&mut self.ctl(args))?;
        indented(&out.stdout);
        indented(&out.stderr);
        sys::check_interrupted()?;
        ensure!(
            out.success,
            "`filter-ctl {}` failed (output above)",
            args.join(" ")
        );
        Ok(out.stdout)
    }

    fn start_controller(&mut self) -> Result<()> {
        let mut command = self.ctl(&["run", "--iface", &self.names.dst_if]);
        println!("[dst] $ filter-ctl run --iface {}", self.names.dst_if);
        self.controller = Some(Controller::spawn(&mut command)?);
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let attempts = ATTACH_TIMEOUT.as_millis() / POLL.as_millis();
        for _ in 0..attempts {
            sys::check_interrupted()?;
            if let Some(controller) = &mut self.controller
                && let Some(status) = controller.child.try_wait()?
            {
                if let Some(controller) = self.controller.take() {
                    controller.join_output();
                }
                bail!("filter-ctl run exited with {status} before attaching (output above)");
            }
            if self.xdp_attached()? && cmd::capture(&mut self.ctl(&["stats", "--json"]))?.success {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        bail!(
            "filter-ctl run did not attach to {} within {} s (output above)",
            self.names.dst_if,
            ATTACH_TIMEOUT.as_secs()
        )
    }

    /// Whether the kernel reports an XDP program on the destination veth.
    fn xdp_attached(&self) -> Result<bool> {
        let link = cmd::stdout(Command::new("ip").args([
            "-n",
            &self.names.dst_ns,
            "link",
            "show",
            "dev",
            &self.names.dst_if,
        ]))?;
        Ok(link.contains("prog/xdp"))
    }

    /// The blocklist's packet counter from `filter-ctl stats --json`.
    fn blocklist_packets(&self) -> Result<u64> {
        self.reason_packets("blocklist")
    }

    /// Pings `dst` from the source namespace; fails unless it got replies
    /// exactly when `replies` is true.
    fn expect_ping(&self, dst: &str, replies: bool, meaning: &str) -> Result<()> {
        println!("[src] $ ping {} {dst}", PING.join(" "));
        let mut ping = in_netns(&self.names.src_ns, "ping");
        ping.args(PING).arg(dst);
        let out = cmd::capture(&mut ping)?;
        sys::check_interrupted()?;
        let summary = out.stdout.lines().find(|line| line.contains("transmitted"));
        if out.success == replies {
            indented(summary.unwrap_or("(no summary)"));
            println!("    -> {meaning}");
            return Ok(());
        }
        indented(&out.stdout);
        indented(&out.stderr);
        let _ = self.show_ctl(&["stats"]);
        if replies {
            bail!("ping {dst} got no reply; expected: {meaning}")
        }
        bail!("ping {dst} got replies; expected: {meaning}")
    }

    fn teardown(&mut self) {
        if let Some(controller) = self.controller.take()
            && let Err(error) = controller.stop()
        {
            eprintln!("warning: stopping filter-ctl: {error:#}");
        }
        if self.keep {
            self.print_keep();
            return;
        }
        if self.names.pin_dir.exists() {
            println!("[dst] $ filter-ctl detach");
            match cmd::capture(&mut self.ctl(&["detach"])) {
                Ok(out) if out.success => {}
                Ok(out) => eprintln!("warning: filter-ctl detach failed: {}", out.stderr.trim()),
                Err(error) => eprintln!("warning: {error:#}"),
            }
        }
        if self.names.pin_dir.exists() {
            let leftovers = pins(&self.names.pin_dir);
            if !leftovers.is_empty() {
                eprintln!(
                    "warning: removing pins that detach left: {}",
                    leftovers.join(", ")
                );
            }
            if let Err(error) = fs::remove_dir_all(&self.names.pin_dir) {
                eprintln!(
                    "warning: cannot remove {}: {error}",
                    self.names.pin_dir.display()
                );
            }
        }
        if self.names.state_dir.exists()
            && let Err(error) = fs::remove_dir_all(&self.names.state_dir)
        {
            eprintln!(
                "warning: cannot remove {}: {error}",
                self.names.state_dir.display()
            );
        }
        for ns in self.namespaces.drain(..).rev() {
            println!("$ ip netns del {ns}");
            if let Err(error) = ip(&["netns", "del", &ns]) {
                eprintln!("warning: {error:#}");
            }
        }
    }

    fn print_keep(&self) {
        let Names {
            src_ns,
            dst_ns,
            pin_dir,
            ..
        } = &self.names;
        let ctl = format!(
            "nsenter --net={NETNS_DIR}/{dst_ns} -- {} --pin-dir {} --state-dir {}",
            self.ctl.display(),
            pin_dir.display(),
            self.names.state_dir.display()
        );
        println!("\nKept the lab (--keep). Explore it:");
        println!("    {ctl} list");
        println!("    {ctl} unblock {SRC_V4}");
        println!("    nsenter --net={NETNS_DIR}/{src_ns} -- ping -c 3 {DST_V4}");
        println!("Remove it (or run `cargo xtask lab` again, which removes it):");
        println!("    {ctl} detach");
        println!("    ip netns del {src_ns}; ip netns del {dst_ns}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            step(&format!("Tearing down lab {}", self.names.pid));
        }
        self.teardown();
    }
}

/// Pins (files) under `dir`, recursively; empty when `dir` is absent.
fn pins(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    // bpffs pin directories are shallow; the bound only guards against loops.
    for _ in 0..1000 {
        let Some(dir) = dirs.pop() else { break };
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Tears down labs whose xtask is gone (killed, or run with --keep).
fn remove_stale_labs(ctl: &Path) -> Result<()> {
    let own = std::process::id();
    let mut pids = BTreeSet::new();
    for (dir, prefixes) in [
        (NETNS_DIR, &["flab-src-", "flab-dst-"][..]),
        (BPFFS, &["filter-ctl-lab-"][..]),
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            pids.extend(
                prefixes
                    .iter()
                    .filter_map(|prefix| name.strip_prefix(prefix)?.parse::<u32>().ok()),
            );
        }
    }
    for pid in pids {
        // Our own pid's lab does not exist yet: anything named after it is stale.
        if pid != own && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("\nFound the lab of process {pid}, which is gone (killed, or run with --keep)");
        let mut lab = Lab::new(Names::for_pid(pid), ctl.to_path_buf());
        lab.namespaces = [&lab.names.src_ns, &lab.names.dst_ns]
            .into_iter()
            .filter(|ns| Path::new(NETNS_DIR).join(ns).exists())
            .cloned()
            .collect();
        drop(lab);
        sys::check_interrupted()?;
    }
    Ok(())
}

/// `filter-ctl run` as a child process, its output shown as it comes.
struct Controller {
    child: Child,
    output: Vec<JoinHandle<()>>,
}

impl Controller {
    fn spawn(command: &mut Command) -> Result<Self> {
        let line = cmd::display(command);
        sys::terminate_with_parent(command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let stdout = child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>);
        let output = [stdout, stderr]
            .into_iter()
            .flatten()
            .map(|pipe| {
                thread::spawn(move || {
                    // Ends when filter-ctl exits and closes the pipe.
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        println!("    [filter-ctl run] {line}");
                    }
                })
            })
            .collect();
        Ok(Self { child, output })
    }

    /// Sends SIGINT, waits up to `STOP_TIMEOUT`, then kills.
    fn stop(mut self) -> Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            sys::send_signal(self.child.id(), sys::SIGINT)
                .context("cannot send SIGINT to filter-ctl")?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut status = self.child.try_wait()?;
        while status.is_none() && Instant::now() < deadline {
            thread::sleep(POLL);
            status = self.child.try_wait()?;
        }
        let status = if let Some(status) = status {
            status
        } else {
            eprintln!(
                "warning: filter-ctl did not stop within {} s of SIGINT; killing it",
                STOP_TIMEOUT.as_secs()
            );
            self.child.kill()?;
            self.child.wait()?
        };
        self.join_output();
        Ok(status)
    }

    fn join_output(self) {
        for reader in self.output {
            let _ = reader.join();
        }
    }
}

/// `reasons.<reason>.<field>` from the JSON `filter-ctl stats --json` prints,
/// found by key order (enough for this fixed shape; xtask has no JSON parser).
fn json_counter(json: &str, reason: &str, field: &str) -> Option<u64> {
    let after_reasons = &json[json.find("\"reasons\"")?..];
    let after_reason = &after_reasons[after_reasons.find(&format!("\"{reason}\""))?..];
    let object = &after_reason[..after_reason.find('}')?];
    let after_field = &object[object.find(&format!("\"{field}\""))? + field.len() + 2..];
    let value = after_field.trim_start().strip_prefix(':')?.trim_start();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    value[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::json_counter;

    #[test]
    fn reads_counters_from_stats_json() {
        let compact = r#"{"reasons":{"pass":{"packets":7,"bytes":700},"blocklist":{"bytes":300,"packets":3}}}"#;
        assert_eq!(json_counter(compact, "blocklist", "packets"), Some(3));
        assert_eq!(json_counter(compact, "pass", "packets"), Some(7));
        let pretty = "{\n  \"reasons\": {\n    \"blocklist\": {\n      \"packets\": 12,\n      \"bytes\": 1\n    }\n  }\n}";
        assert_eq!(json_counter(pretty, "blocklist", "packets"), Some(12));
        assert_eq!(json_counter(compact, "ratelimit", "packets"), None);
    }
}
