//! `block`, `unblock`, `allow`, `disallow`, `list`.

use std::{path::PathBuf, time::Duration};

use filter_ctl::{
    control::policy,
    error::Error,
    maps::{
        ListKind, journal,
        lists::{InsertReport, Merge},
    },
    spec::{
        cidr::{Cidr, mapped_note},
        duration::{format_duration, parse_duration},
        listfile,
    },
    state::{LiveJournal, Origin},
};

use super::Context;
use crate::render;

/// Which list a command edits.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Allow,
    Block,
}

impl Which {
    fn kind(self) -> ListKind {
        match self {
            Self::Allow => ListKind::Allow,
            Self::Block => ListKind::Block,
        }
    }

    /// The command that adds to the list, for the audit log.
    fn command_add(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
        }
    }

    /// The command that removes from the list, for the audit log.
    fn command_remove(self) -> &'static str {
        match self {
            Self::Allow => "disallow",
            Self::Block => "unblock",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Allow => "allowed",
            Self::Block => "blocked",
        }
    }
}

/// An address or prefix as typed, kept for the notes about what it meant.
#[derive(Clone, Debug)]
pub struct CidrArg {
    pub cidr: Cidr,
    pub text: String,
}

fn parse_cidr_arg(text: &str) -> Result<CidrArg, String> {
    let cidr = text
        .parse()
        .map_err(|e: filter_ctl::spec::cidr::CidrError| e.to_string())?;
    Ok(CidrArg {
        cidr,
        text: text.to_string(),
    })
}

/// A TTL: a duration longer than zero.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text).map_err(|e| e.to_string())?;
    if ttl.is_zero() {
        return Err(
            "a TTL must be longer than 0 (to lift an entry now, use unblock or disallow)".into(),
        );
    }
    Ok(ttl)
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Addresses or CIDR prefixes. Format: 198.18.0.1, 198.18.0.0/15,
    /// `2001:db8::/32` (IPv4-mapped `::ffff:a.b.c.d` means the IPv4 address).
    #[arg(value_parser = parse_cidr_arg, required_unless_present = "file")]
    addrs: Vec<CidrArg>,
    /// Expire the entries after this long (longer than 0). Format: 30s, 10m, 1h30m, 2d.
    #[arg(long, value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Give entries that are already listed this expiry even if it is
    /// shorter than theirs (without it, the later expiry wins).
    #[arg(long)]
    replace: bool,
    /// Also read entries from a list file (`-` for standard input): one
    /// address or CIDR per line, `#` and `;` start comments, blank lines are
    /// ignored (the format ipset and nftables take). All or nothing.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// Addresses or CIDR prefixes, exactly as added.
    #[arg(value_parser = parse_cidr_arg, required_unless_present = "file")]
    addrs: Vec<CidrArg>,
    /// Also read the entries to remove from a list file (`-` for standard
    /// input), in the format `block --file` takes. All or nothing.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// The entries of the arguments and of the file; notes about mapped addresses.
fn gather(addrs: &[CidrArg], file: Option<&PathBuf>) -> anyhow::Result<Vec<Cidr>> {
    let mut cidrs: Vec<Cidr> = Vec::with_capacity(addrs.len());
    for arg in addrs {
        if let Some(note) = mapped_note(&arg.text, &arg.cidr) {
            println!("note: {note}");
        }
        cidrs.push(arg.cidr);
    }
    if let Some(path) = file {
        cidrs.extend(listfile::read(path).map_err(Error::from)?);
    }
    if cidrs.is_empty() {
        return Err(Error::BadInput(
            "nothing to do: no addresses given and the file has no entries".into(),
        )
        .into());
    }
    Ok(cidrs)
}

pub fn add(ctx: &Context, which: Which, args: &AddArgs) -> anyhow::Result<()> {
    let cidrs = gather(&args.addrs, args.file.as_ref())?;
    let filter = ctx.edit()?;
    let merge = if args.replace {
        Merge::Replace
    } else {
        Merge::KeepLonger
    };
    // The state record is encoded while the kernel writes go on (a large
    // load's record is tens of MB of JSON), and appended once they are in.
    let (report, encoded) =
        filter.list_insert_with(which.kind(), &cidrs, args.ttl, merge, |changed| {
            LiveJournal::encode_add(policy::cli_entries(which.kind(), changed, args.ttl))
        })?;
    print_insert_report(which, &report, args.ttl);
    // Enforced now; recorded so that it outlives a reboot.
    recorded(
        ctx,
        encoded.and_then(|encoded| {
            ctx.state()
                .and_then(|state| policy::record_cli_add(&state, which.command_add(), &encoded))
        }),
    )
}

/// Entries listed one by one in a report; the rest are counted.
const SHOWN: usize = 10;

fn print_insert_report(which: Which, report: &InsertReport, ttl: Option<Duration>) {
    let list = which.kind().name();
    let ttl_text = ttl
        .map(|t| format!(" for {}", format_duration(t)))
        .unwrap_or_default();
    match report.added.as_slice() {
        [] => {}
        [one] => println!("added {one} to the {list}{ttl_text}"),
        many => println!("added {} entries to the {list}{ttl_text}", many.len()),
    }
    match report.updated.as_slice() {
        [] => {}
        [one] => println!(
            "{one} was on the {list} already; it now expires {}",
            expiry(ttl)
        ),
        many => println!(
            "{} entries were on the {list} already; they now expire {}",
            many.len(),
            expiry(ttl)
        ),
    }
    for (cidr, remaining) in report.kept.iter().take(SHOWN) {
        let how = remaining.map_or_else(
            || "permanently".to_string(),
            |left| format!("for another {}", format_duration(left)),
        );
        println!(
            "{cidr} already {} {how}; kept (--replace gives it the new expiry)",
            which.verb()
        );
    }
    if report.kept.len() > SHOWN {
        println!(
            "... and {} more already listed longer; kept",
            report.kept.len() - SHOWN
        );
    }
}

fn expiry(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "never".into(), |t| format!("in {}", format_duration(t)))
}

pub fn remove(ctx: &Context, which: Which, args: &RemoveArgs) -> anyhow::Result<()> {
    let cidrs = gather(&args.addrs, args.file.as_ref())?;
    let filter = ctx.edit()?;
    let list = policy::list_name(which.kind());
    let keys: Vec<_> = match which {
        Which::Block => {
            let unblocked = filter.unblock(&cidrs)?;
            print_unblocked(&unblocked);
            // A named prefix is gone in every origin the CLI may have
            // recorded; at a lifted aggregate only the automatic block is.
            unblocked
                .removed
                .iter()
                .flat_map(|cidr| [(list, *cidr, Origin::Cli), (list, *cidr, Origin::Auto)])
                .chain(
                    unblocked
                        .lifted
                        .iter()
                        .map(|cidr| (list, *cidr, Origin::Auto)),
                )
                .collect()
        }
        Which::Allow => {
            filter.list_remove(ListKind::Allow, &cidrs)?;
            println!("removed {} from the allowlist", cidrs.len());
            cidrs
                .iter()
                .flat_map(|cidr| [(list, *cidr, Origin::Cli), (list, *cidr, Origin::Auto)])
                .collect()
        }
    };
    record(ctx, which.command_remove(), &[], &keys)
}

/// What `unblock` did: each entry while there are few, else counts.
fn print_unblocked(unblocked: &filter_ctl::maps::lists::Unblocked) {
    if unblocked.removed.len() + unblocked.lifted.len() <= SHOWN {
        for cidr in &unblocked.removed {
            println!("unblocked {cidr}");
        }
        for cidr in &unblocked.lifted {
            println!("unblocked {cidr} (its automatic block)");
        }
        return;
    }
    if unblocked.lifted.is_empty() {
        println!("unblocked {} entries", unblocked.removed.len());
    } else {
        println!(
            "unblocked {} entries and {} automatic blocks",
            unblocked.removed.len(),
            unblocked.lifted.len()
        );
    }
}

/// Records a live edit in the state directory and the audit log. The edit
/// is enforced already: a failure here is reported (the edit would not
/// survive a reboot), with exit status 1.
fn record(
    ctx: &Context,
    command: &str,
    added: &[filter_ctl::state::LiveEntry],
    removed: &[(filter_ctl::state::ListName, Cidr, Origin)],
) -> anyhow::Result<()> {
    recorded(
        ctx,
        ctx.state()
            .and_then(|state| policy::record_cli_edit(&state, command, added, removed)),
    )
}

/// The outcome of recording an enforced edit, with what a failure means.
fn recorded(ctx: &Context, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    outcome.map_err(|e| {
        e.context(format!(
            "the edit is enforced, but recording it in the state directory {} failed: it would not survive a reboot",
            ctx.state_dir.display()
        ))
    })
}

pub fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let filter = ctx.open()?;
    // The journal first: if there is none, the entries read next are whole
    // (a change that starts meanwhile writes its journal before any entry);
    // if there is one, a repair may finish before the entries are read.
    let interrupted = journal::interrupted(filter.pins());
    let allow = filter.list_entries(ListKind::Allow)?;
    let (block, auto) = filter.block_and_autoblocks()?;
    let listing = render::Listing {
        allow,
        block,
        auto,
        interrupted,
    };
    render::list(&listing, json)
}
