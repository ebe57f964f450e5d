//! Interface events from rtnetlink (`RTNLGRP_LINK`, what `ip monitor link`
//! shows), as a stream of [`LinkEvent`]s: no polling.

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};
use tokio::sync::mpsc;

/// What happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface was created, or changed (same index then).
    Added { name: String, index: u32 },
    /// An interface was deleted (or moved to another namespace).
    Removed { name: String },
    /// Events were lost (the socket overran): compare everything again.
    Overrun,
}

/// Starts watching; events arrive on the returned channel until the
/// runtime ends. Must be called inside the tokio runtime.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => name_of(&link)
                    .map(|name| LinkEvent::Added {
                        name,
                        index: link.header.index,
                    }),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    name_of(&link).map(|name| LinkEvent::Removed { name })
                }
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => Some(LinkEvent::Overrun),
                _ => None,
            };
            if let Some(event) = event
                && tx.send(event).is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}
