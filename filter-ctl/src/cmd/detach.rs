//! `filter-ctl detach`.

use filter_ctl::{error::Error, maps::loader};

use super::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only detach from this interface (keeps the maps and other attachments).
    #[arg(long)]
    iface: Option<String>,
}

pub fn run(ctx: &Context, args: &Args) -> anyhow::Result<()> {
    let pins = &ctx.pins;
    match std::fs::symlink_metadata(pins.root()) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::Permission(format!(
                "permission denied reading {}: filter-ctl needs root",
                pins.root().display()
            ))
            .into());
        }
        Err(_) => {
            return Err(Error::NotLoaded(format!(
                "nothing to detach: {} does not exist",
                pins.root().display()
            ))
            .into());
        }
    }
    pins.check_secure()?;
    if let Some(iface) = &args.iface {
        loader::detach(pins, iface)?;
        println!("detached from {iface}");
        return Ok(());
    }
    let ifaces = loader::detach_all(pins)?;
    if ifaces.is_empty() {
        println!(
            "no interface was attached; removed the pins under {}",
            pins.root().display()
        );
    } else {
        println!(
            "detached from {} and removed the pins under {}",
            ifaces.join(", "),
            pins.root().display()
        );
    }
    Ok(())
}
