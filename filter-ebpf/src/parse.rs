//! Strict header parsing. Every read goes through [`ptr_at`], which checks the
//! bounds right before the access. A frame that claims a header it does not
//! contain, or whose header fields contradict its length, is [`Malformed`].

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
pub use filter_common::{IPPROTO_TCP, IPPROTO_UDP};
use filter_common::{IPV4_MAPPED_WORD, Ipv6Bytes, source_bytes, source_words};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up (and calling the frame malformed).
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Largest header offset the parser accepts; keeps offsets bounded for the verifier.
const MAX_HEADER_OFFSET: usize = 4096;

/// The frame is not what its headers claim.
pub struct Malformed;

pub enum Parsed {
    /// ARP, LLDP and every other non-IP ethertype.
    NonIp,
    Ip(Packet),
}

/// What the decision needs from an IP packet.
pub struct Packet {
    pub is_v6: bool,
    /// Source address; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`). As
    /// `filter_common::source_words` reads it (four bytes in address order
    /// per word): what the host table, the summary and the rate limiter hash
    /// and compare, read from the packet in four loads (one for IPv4), and
    /// kept in four registers or stack slots, not sixteen.
    pub source: [u32; 4],
    /// Upper-layer protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// False for non-first fragments and for protocols without ports.
    pub has_ports: bool,
    pub dst_port: u16,
}

impl Packet {
    /// The source address's bytes (the IPv6 tries' key).
    #[inline(always)]
    pub fn source_bytes(&self) -> Ipv6Bytes {
        source_bytes(&self.source)
    }

    /// The IPv4 source address's bytes (the IPv4 tries' key).
    #[inline(always)]
    pub fn source_v4(&self) -> [u8; 4] {
        self.source[3].to_le_bytes()
    }
}

#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct VlanHdr {
    tci: [u8; 2],
    ether_type: [u8; 2],
}

#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    flags_frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// First 2 bytes of a hop-by-hop, routing or destination-options header; the
/// fragment header shares the first byte.
#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

/// Source and destination port, shared by TCP and UDP.
#[repr(C)]
#[allow(dead_code, reason = "mirrors the wire layout")]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
}

/// Pointer to a `T` at `offset`, if the whole `T` lies inside the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_HEADER_OFFSET || start + offset + size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Whether `len` bytes starting at `offset` lie inside the frame.
#[inline(always)]
fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let mut ether_type = be16(unsafe { (*eth).ether_type });
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset)?;
        // SAFETY: `ptr_at` checked that the header lies inside the frame.
        ether_type = be16(unsafe { (*vlan).ether_type });
        offset += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, offset).map(Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, offset).map(Parsed::Ip),
        // A third tag is more than we inspect: refuse rather than pass it blind.
        ETH_P_8021Q | ETH_P_8021AD => Err(Malformed),
        _ => Ok(Parsed::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let version_ihl = unsafe { (*ip).version_ihl };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let total_len = usize::from(be16(unsafe { (*ip).total_len }));
    if version_ihl >> 4 != 4
        || header_len < size_of::<Ipv4Hdr>()
        || total_len < header_len
        || !has_bytes(ctx, offset, total_len)
    {
        return Err(Malformed);
    }
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let src = u32::from_le_bytes(unsafe { (*ip).src });
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let protocol = unsafe { (*ip).protocol };
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let frag = be16(unsafe { (*ip).flags_frag_off });
    let mut packet = Packet {
        is_v6: false,
        source: [0, 0, IPV4_MAPPED_WORD, src],
        protocol,
        has_ports: false,
        dst_port: 0,
    };
    // Non-first fragments carry no transport header: classify by address only.
    if frag & 0x1fff != 0 {
        return Ok(packet);
    }
    parse_l4(
        ctx,
        offset + header_len,
        total_len - header_len,
        &mut packet,
    )?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Packet, Malformed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let payload_len = usize::from(be16(unsafe { (*ip).payload_len }));
    // Version 6 only; payload length 0 would be a jumbogram, which XDP never sees legitimately.
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    if unsafe { (*ip).version_class_flow[0] } >> 4 != 6
        || payload_len == 0
        || !has_bytes(ctx, offset + IPV6_HLEN, payload_len)
    {
        return Err(Malformed);
    }
    // An IPv4-mapped source (::ffff:0:0/96) never appears on the wire (RFC 4291
    // 2.5.5.2); it would also alias the IPv4 source's rate-limit bucket.
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let src = source_words(&unsafe { (*ip).src });
    if src[0] == 0 && src[1] == 0 && src[2] == IPV4_MAPPED_WORD {
        return Err(Malformed);
    }
    let mut packet = Packet {
        is_v6: true,
        source: src,
        // SAFETY: `ptr_at` checked that the header lies inside the frame.
        protocol: unsafe { (*ip).next_header },
        has_ports: false,
        dst_port: 0,
    };
    // Bytes of the payload not yet consumed by extension headers.
    let mut remaining = payload_len;
    let mut next = offset + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext_len = match packet.protocol {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: *const Ipv6ExtHdr = ptr_at(ctx, next)?;
                // SAFETY: `ptr_at` checked that the header lies inside the frame.
                (usize::from(unsafe { (*ext).len }) + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let frag: *const Ipv6FragHdr = ptr_at(ctx, next)?;
                // SAFETY: `ptr_at` checked that the header lies inside the frame.
                if be16(unsafe { (*frag).offset_flags }) & 0xfff8 != 0 {
                    // Non-first fragment: no transport header to read.
                    if remaining < size_of::<Ipv6FragHdr>() {
                        return Err(Malformed);
                    }
                    // SAFETY: `ptr_at` checked that the header lies inside the frame.
                    packet.protocol = unsafe { (*frag).next_header };
                    return Ok(packet);
                }
                size_of::<Ipv6FragHdr>()
            }
            _ => {
                parse_l4(ctx, next, remaining, &mut packet)?;
                return Ok(packet);
            }
        };
        if ext_len > remaining {
            return Err(Malformed);
        }
        let ext: *const Ipv6ExtHdr = ptr_at(ctx, next)?;
        // SAFETY: `ptr_at` checked that the header lies inside the frame.
        packet.protocol = unsafe { (*ext).next_header };
        remaining -= ext_len;
        next += ext_len;
    }
    // More extension headers than we walk: refuse rather than guess.
    match packet.protocol {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => Err(Malformed),
        _ => {
            parse_l4(ctx, next, remaining, &mut packet)?;
            Ok(packet)
        }
    }
}

/// Checks the transport header at `offset`; `ip_payload` is how many bytes the
/// IP header says follow (the transport header must fit inside them).
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    offset: usize,
    ip_payload: usize,
    packet: &mut Packet,
) -> Result<(), Malformed> {
    let min_len = match packet.protocol {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        IPPROTO_ICMPV6 => 4,
        // GRE, ESP, SCTP, ...: no header we validate.
        _ => return Ok(()),
    };
    if ip_payload < min_len || !has_bytes(ctx, offset, min_len) {
        return Err(Malformed);
    }
    match packet.protocol {
        IPPROTO_TCP => {
            // Data offset (upper nibble of byte 12) counts 32-bit words, at least 5.
            let data_offset: *const u8 = ptr_at(ctx, offset + 12)?;
            // SAFETY: `ptr_at` checked that the header lies inside the frame.
            let header_len = usize::from(unsafe { *data_offset } >> 4) * 4;
            if header_len < 20 || header_len > ip_payload {
                return Err(Malformed);
            }
        }
        IPPROTO_UDP => {
            let length: *const [u8; 2] = ptr_at(ctx, offset + 4)?;
            // SAFETY: `ptr_at` checked that the header lies inside the frame.
            let udp_len = usize::from(be16(unsafe { *length }));
            if udp_len < 8 || udp_len > ip_payload {
                return Err(Malformed);
            }
        }
        _ => return Ok(()),
    }
    let ports: *const Ports = ptr_at(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    packet.dst_port = be16(unsafe { (*ports).dst });
    packet.has_ports = true;
    Ok(())
}
