//! Frame builder for the XDP program's tests: Ethernet with up to any number
//! of VLAN tags, IPv4 (options, fragments, any IHL or total length) and IPv6
//! (extension header chains), TCP/UDP/ICMP/ICMPv6 or any other protocol.
//!
//! Every length field is computed unless overridden, so a test writes only the
//! malformation it is about: `Ipv4::new(..).ihl(4)`, `Tcp::new(..).data_offset(3)`,
//! `Udp::new(..).length(4)`, then [`Frame::build`] and truncate or edit bytes
//! at the offsets in [`Layout`]. Checksums are correct for well-formed frames
//! (the XDP program does not check them).
//!
//! Addresses are from the benchmarking ranges only: 198.18.0.0/15 and `2001:db8::/32`.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88A8;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_LLDP: u16 = 0x88CC;

/// IP protocol / IPv6 next-header numbers.
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// An IPv4 address from the lab range, `198.18.c.d`.
#[must_use]
pub fn v4(c: u8, d: u8) -> [u8; 4] {
    [198, 18, c, d]
}

/// Parses an IPv4 or IPv6 literal (tests only; panics on typos).
#[must_use]
pub fn ip4(text: &str) -> [u8; 4] {
    text.parse::<Ipv4Addr>()
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .octets()
}

#[must_use]
pub fn ip6(text: &str) -> [u8; 16] {
    text.parse::<Ipv6Addr>()
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .octets()
}

/// Default addresses used by the shortcuts.
pub const SRC4: [u8; 4] = [198, 18, 0, 1];
pub const DST4: [u8; 4] = [198, 19, 0, 1];
pub const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A whole Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags in wire order: (TPID, TCI). Any number, any TPID.
    pub vlans: Vec<(u16, u16)>,
    pub net: Net,
}

/// What follows the Ethernet header (and tags).
#[derive(Clone, Debug)]
pub enum Net {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    /// Any ethertype with raw payload (ARP, LLDP, or a lie: 0x0800 with junk).
    Other {
        ethertype: u16,
        payload: Vec<u8>,
    },
}

/// Offsets of the headers in a built frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start of each VLAN tag (its TPID).
    pub vlans: Vec<usize>,
    /// Start of the network header.
    pub l3: usize,
    /// Start of each IPv6 extension header.
    pub ext: Vec<usize>,
    /// Start of the transport header (or raw protocol payload).
    pub l4: usize,
    /// Start of the transport payload (after TCP options, UDP/ICMP header).
    pub payload: usize,
    /// End of the IP packet as built (trailer bytes follow).
    pub ip_end: usize,
    /// Total length.
    pub len: usize,
}

impl Layout {
    /// Every header boundary, deduplicated and sorted: where truncations bite.
    #[must_use]
    pub fn boundaries(&self) -> Vec<usize> {
        let mut all = vec![0, 12, ETH_HLEN];
        all.extend(&self.vlans);
        all.extend(self.vlans.iter().map(|v| v + 4));
        all.extend([self.l3, self.l4, self.payload, self.ip_end, self.len]);
        all.extend(&self.ext);
        all.retain(|&b| b <= self.len);
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Frame {
    #[must_use]
    pub fn new(net: Net) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlans: Vec::new(),
            net,
        }
    }

    #[must_use]
    pub fn ipv4(ip: Ipv4) -> Self {
        Self::new(Net::Ipv4(ip))
    }

    #[must_use]
    pub fn ipv6(ip: Ipv6) -> Self {
        Self::new(Net::Ipv6(ip))
    }

    #[must_use]
    pub fn other(ethertype: u16, payload: Vec<u8>) -> Self {
        Self::new(Net::Other { ethertype, payload })
    }

    /// Adds an 802.1Q tag (TPID 0x8100) after the existing ones.
    #[must_use]
    pub fn vlan(self, vid: u16) -> Self {
        self.tag(TPID_8021Q, vid)
    }

    /// Adds an 802.1ad tag (TPID 0x88A8) after the existing ones.
    #[must_use]
    pub fn qinq(self, vid: u16) -> Self {
        self.tag(TPID_8021AD, vid)
    }

    /// Adds a tag with any TPID.
    #[must_use]
    pub fn tag(mut self, tpid: u16, tci: u16) -> Self {
        self.vlans.push((tpid, tci));
        self
    }

    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    #[must_use]
    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::with_capacity(128);
        let mut layout = Layout::default();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        let ethertype = match &self.net {
            Net::Ipv4(_) => ETHERTYPE_IPV4,
            Net::Ipv6(_) => ETHERTYPE_IPV6,
            Net::Other { ethertype, .. } => *ethertype,
        };
        for (tpid, tci) in &self.vlans {
            layout.vlans.push(out.len());
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        // Wire order: dst, src, TPID1, TCI1, TPID2, TCI2, ethertype.
        out.extend_from_slice(&ethertype.to_be_bytes());
        layout.l3 = out.len();
        match &self.net {
            Net::Ipv4(ip) => ip.write(&mut out, &mut layout),
            Net::Ipv6(ip) => ip.write(&mut out, &mut layout),
            Net::Other { payload, .. } => {
                layout.l4 = out.len();
                layout.payload = out.len();
                out.extend_from_slice(payload);
                layout.ip_end = out.len();
            }
        }
        layout.len = out.len();
        (out, layout)
    }
}

/// IPv4 header and what it carries.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub version: u8,
    /// IHL field override (in 32-bit words); None = computed from the options.
    pub ihl: Option<u8>,
    /// Options, padded with zeros (end of list) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Total length override; None = computed.
    pub total_length: Option<u16>,
    /// Protocol override; None = from the payload.
    pub protocol: Option<u8>,
    /// Flags and fragment offset field, raw (offset in 8-byte units, low 13 bits).
    pub frag: u16,
    pub ttl: u8,
    pub id: u16,
    pub payload: L4,
    /// Bytes after the IP packet (Ethernet padding), outside the total length.
    pub trailer: Vec<u8>,
}

impl Ipv4 {
    #[must_use]
    pub fn new(src: [u8; 4], dst: [u8; 4], payload: L4) -> Self {
        Self {
            src,
            dst,
            version: 4,
            ihl: None,
            options: Vec::new(),
            total_length: None,
            protocol: None,
            frag: 0,
            ttl: 64,
            id: 0x1234,
            payload,
            trailer: Vec::new(),
        }
    }

    #[must_use]
    pub fn options(mut self, options: Vec<u8>) -> Self {
        self.options = options;
        self
    }

    /// `words` 32-bit words of options (NOPs), giving IHL = 5 + words.
    #[must_use]
    pub fn nop_options(self, words: usize) -> Self {
        self.options(vec![1; words * 4])
    }

    #[must_use]
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    #[must_use]
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    #[must_use]
    pub fn total_length(mut self, total_length: u16) -> Self {
        self.total_length = Some(total_length);
        self
    }

    #[must_use]
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Fragment offset in 8-byte units and the more-fragments flag.
    #[must_use]
    pub fn fragment(mut self, offset_units: u16, more: bool) -> Self {
        self.frag = (offset_units & 0x1fff) | if more { 0x2000 } else { 0 };
        self
    }

    /// Sets the don't-fragment flag (keeps the offset).
    #[must_use]
    pub fn dont_fragment(mut self) -> Self {
        self.frag |= 0x4000;
        self
    }

    #[must_use]
    pub fn trailer(mut self, trailer: Vec<u8>) -> Self {
        self.trailer = trailer;
        self
    }

    fn write(&self, out: &mut Vec<u8>, layout: &mut Layout) {
        let start = out.len();
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let header_len = 20 + options.len();
        let l4 = self.payload.bytes(&Pseudo::V4 {
            src: self.src,
            dst: self.dst,
        });
        let total = self
            .total_length
            .unwrap_or_else(|| u16::try_from(header_len + l4.len()).unwrap_or(u16::MAX));
        let ihl = self
            .ihl
            .unwrap_or_else(|| u8::try_from(header_len / 4).unwrap_or(15));
        out.push((self.version << 4) | (ihl & 0x0f));
        out.push(0);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.frag.to_be_bytes());
        out.push(self.ttl);
        out.push(self.protocol.unwrap_or_else(|| self.payload.protocol()));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&options);
        let sum = checksum(&[&out[start..]]);
        out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        layout.l4 = out.len();
        layout.payload = out.len() + self.payload.header_len();
        out.extend_from_slice(&l4);
        layout.ip_end = out.len();
        out.extend_from_slice(&self.trailer);
    }
}

/// IPv6 header, extension headers and what they carry.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub version: u8,
    pub hop_limit: u8,
    /// Payload length override; None = computed.
    pub payload_length: Option<u16>,
    /// Next-header override of the fixed header; None = first extension or payload.
    pub next_header: Option<u8>,
    pub ext: Vec<Ext>,
    pub payload: L4,
    pub trailer: Vec<u8>,
}

impl Ipv6 {
    #[must_use]
    pub fn new(src: [u8; 16], dst: [u8; 16], payload: L4) -> Self {
        Self {
            src,
            dst,
            version: 6,
            hop_limit: 64,
            payload_length: None,
            next_header: None,
            ext: Vec::new(),
            payload,
            trailer: Vec::new(),
        }
    }

    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    #[must_use]
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    #[must_use]
    pub fn payload_length(mut self, payload_length: u16) -> Self {
        self.payload_length = Some(payload_length);
        self
    }

    #[must_use]
    pub fn next_header(mut self, next_header: u8) -> Self {
        self.next_header = Some(next_header);
        self
    }

    #[must_use]
    pub fn trailer(mut self, trailer: Vec<u8>) -> Self {
        self.trailer = trailer;
        self
    }

    fn write(&self, out: &mut Vec<u8>, layout: &mut Layout) {
        let l4 = self.payload.bytes(&Pseudo::V6 {
            src: self.src,
            dst: self.dst,
        });
        let upper = self.payload.protocol();
        let mut chain = Vec::new();
        let mut ext_offsets = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = ext
                .next
                .unwrap_or_else(|| self.ext.get(i + 1).map_or(upper, |e| e.kind));
            ext_offsets.push(chain.len());
            let mut bytes = ext.bytes.clone();
            if let Some(first) = bytes.first_mut() {
                *first = next;
            }
            chain.extend_from_slice(&bytes);
        }
        let payload_length = self
            .payload_length
            .unwrap_or_else(|| u16::try_from(chain.len() + l4.len()).unwrap_or(u16::MAX));
        let next = self
            .next_header
            .unwrap_or_else(|| self.ext.first().map_or(upper, |e| e.kind));
        out.push(self.version << 4);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&payload_length.to_be_bytes());
        out.push(next);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        let base = out.len();
        layout.ext = ext_offsets.iter().map(|o| base + o).collect();
        out.extend_from_slice(&chain);
        layout.l4 = out.len();
        layout.payload = out.len() + self.payload.header_len();
        out.extend_from_slice(&l4);
        layout.ip_end = out.len();
        out.extend_from_slice(&self.trailer);
    }
}

/// One IPv6 extension header. `bytes[0]` (next header) is filled in when the
/// chain is built unless `next` overrides it.
#[derive(Clone, Debug)]
pub struct Ext {
    pub kind: u8,
    pub next: Option<u8>,
    pub bytes: Vec<u8>,
}

impl Ext {
    /// An options header (hop-by-hop or destination options) of
    /// `(hdr_ext_len + 1) * 8` bytes, filled with one `PadN` option.
    fn options(kind: u8, hdr_ext_len: u8) -> Self {
        let len = (usize::from(hdr_ext_len) + 1) * 8;
        let mut bytes = vec![0; len];
        bytes[1] = hdr_ext_len;
        bytes[2] = 1; // PadN
        bytes[3] = u8::try_from(len - 4).unwrap_or(u8::MAX);
        Self {
            kind,
            next: None,
            bytes,
        }
    }

    #[must_use]
    pub fn hop_by_hop(hdr_ext_len: u8) -> Self {
        Self::options(proto::HOPOPTS, hdr_ext_len)
    }

    #[must_use]
    pub fn dest_opts(hdr_ext_len: u8) -> Self {
        Self::options(proto::DSTOPTS, hdr_ext_len)
    }

    /// A routing header of an experimental type (253) with no segments left.
    #[must_use]
    pub fn routing(hdr_ext_len: u8) -> Self {
        let len = (usize::from(hdr_ext_len) + 1) * 8;
        let mut bytes = vec![0; len];
        bytes[1] = hdr_ext_len;
        bytes[2] = 253;
        Self {
            kind: proto::ROUTING,
            next: None,
            bytes,
        }
    }

    /// A fragment header: offset in 8-byte units, more-fragments flag.
    #[must_use]
    pub fn fragment(offset_units: u16, more: bool, id: u32) -> Self {
        let field = ((offset_units & 0x1fff) << 3) | u16::from(more);
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(&field.to_be_bytes());
        bytes.extend_from_slice(&id.to_be_bytes());
        Self {
            kind: proto::FRAGMENT,
            next: None,
            bytes,
        }
    }

    /// Any header type with raw bytes (byte 0 is set to the next header).
    #[must_use]
    pub fn raw(kind: u8, bytes: Vec<u8>) -> Self {
        Self {
            kind,
            next: None,
            bytes,
        }
    }

    /// Overrides the next-header byte.
    #[must_use]
    pub fn next(mut self, next: u8) -> Self {
        self.next = Some(next);
        self
    }
}

/// Transport layer (or any protocol's raw bytes).
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    /// ICMP (protocol 1).
    Icmp(Icmp),
    /// `ICMPv6` (protocol 58).
    Icmpv6(Icmp),
    /// Any protocol number with raw bytes.
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    #[must_use]
    pub fn protocol(&self) -> u8 {
        match self {
            Self::Tcp(_) => proto::TCP,
            Self::Udp(_) => proto::UDP,
            Self::Icmp(_) => proto::ICMP,
            Self::Icmpv6(_) => proto::ICMPV6,
            Self::Raw { protocol, .. } => *protocol,
        }
    }

    /// Length of the transport header as built (where the payload starts).
    #[must_use]
    pub fn header_len(&self) -> usize {
        match self {
            Self::Tcp(t) => t.header_len(),
            Self::Udp(_) | Self::Icmp(_) | Self::Icmpv6(_) => 8,
            Self::Raw { .. } => 0,
        }
    }

    #[must_use]
    pub fn raw(protocol: u8, bytes: Vec<u8>) -> Self {
        Self::Raw { protocol, bytes }
    }

    fn bytes(&self, pseudo: &Pseudo) -> Vec<u8> {
        match self {
            Self::Tcp(t) => {
                let mut b = t.encode();
                let sum = pseudo.checksum(proto::TCP, &b);
                b[16..18].copy_from_slice(&sum.to_be_bytes());
                b
            }
            Self::Udp(u) => {
                let mut b = u.bytes();
                let mut sum = pseudo.checksum(proto::UDP, &b);
                if sum == 0 {
                    sum = 0xffff;
                }
                b[6..8].copy_from_slice(&sum.to_be_bytes());
                b
            }
            Self::Icmp(i) => {
                let mut b = i.bytes();
                let sum = checksum(&[&b]);
                b[2..4].copy_from_slice(&sum.to_be_bytes());
                b
            }
            Self::Icmpv6(i) => {
                let mut b = i.bytes();
                let sum = pseudo.checksum(proto::ICMPV6, &b);
                b[2..4].copy_from_slice(&sum.to_be_bytes());
                b
            }
            Self::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Data offset field override (32-bit words, 4 bits); None = computed.
    pub data_offset: Option<u8>,
    /// Options, padded with zeros to a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A SYN from `sport` to `dport`.
    #[must_use]
    pub fn new(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            seq: 1,
            ack: 0,
            flags: 0x02,
            window: 65535,
            data_offset: None,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    #[must_use]
    pub fn data_offset(mut self, words: u8) -> Self {
        self.data_offset = Some(words);
        self
    }

    #[must_use]
    pub fn options(mut self, options: Vec<u8>) -> Self {
        self.options = options;
        self
    }

    #[must_use]
    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    #[must_use]
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    fn header_len(&self) -> usize {
        20 + self.options.len().div_ceil(4) * 4
    }

    /// The segment as bytes, checksum left zero (for raw payloads).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let words = self
            .data_offset
            .unwrap_or_else(|| u8::try_from((20 + options.len()) / 4).unwrap_or(15));
        let mut b = Vec::with_capacity(20 + options.len() + self.payload.len());
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ack.to_be_bytes());
        b.push(words << 4);
        b.push(self.flags);
        b.extend_from_slice(&self.window.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&options);
        b.extend_from_slice(&self.payload);
        b
    }
}

impl From<Tcp> for L4 {
    fn from(t: Tcp) -> Self {
        Self::Tcp(t)
    }
}

#[derive(Clone, Debug)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    /// Length field override; None = computed.
    pub length: Option<u16>,
    pub payload: Vec<u8>,
}

impl Udp {
    #[must_use]
    pub fn new(sport: u16, dport: u16) -> Self {
        Self {
            sport,
            dport,
            length: None,
            payload: b"lab".to_vec(),
        }
    }

    #[must_use]
    pub fn length(mut self, length: u16) -> Self {
        self.length = Some(length);
        self
    }

    #[must_use]
    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let length = self
            .length
            .unwrap_or_else(|| u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX));
        let mut b = Vec::with_capacity(8 + self.payload.len());
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.payload);
        b
    }
}

impl From<Udp> for L4 {
    fn from(u: Udp) -> Self {
        Self::Udp(u)
    }
}

/// ICMP or `ICMPv6` message: type, code, 4 bytes of "rest of header", payload.
#[derive(Clone, Debug)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    pub payload: Vec<u8>,
}

impl Icmp {
    /// ICMP echo request (type 8).
    #[must_use]
    pub fn echo_v4() -> Self {
        Self {
            kind: 8,
            code: 0,
            rest: [0, 1, 0, 1],
            payload: b"ping".to_vec(),
        }
    }

    /// `ICMPv6` echo request (type 128).
    #[must_use]
    pub fn echo_v6() -> Self {
        Self {
            kind: 128,
            ..Self::echo_v4()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.kind, self.code, 0, 0];
        b.extend_from_slice(&self.rest);
        b.extend_from_slice(&self.payload);
        b
    }
}

enum Pseudo {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl Pseudo {
    fn checksum(&self, protocol: u8, data: &[u8]) -> u16 {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match self {
            Self::V4 { src, dst } => {
                let len16 = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
                let head = [0, protocol, len16[0], len16[1]];
                checksum(&[src, dst, &head, data])
            }
            Self::V6 { src, dst } => {
                let len = len.to_be_bytes();
                let head = [len[0], len[1], len[2], len[3], 0, 0, 0, protocol];
                checksum(&[src, dst, &head, data])
            }
        }
    }
}

/// Internet checksum over the concatenation of `parts`.
#[must_use]
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

// ---- shortcuts ----------------------------------------------------------------

/// IPv4 UDP from `src` to port `dport`.
#[must_use]
pub fn udp4(src: [u8; 4], dport: u16) -> Ipv4 {
    Ipv4::new(src, DST4, Udp::new(40000, dport).into())
}

/// IPv4 TCP SYN from `src` to port `dport`.
#[must_use]
pub fn tcp4(src: [u8; 4], dport: u16) -> Ipv4 {
    Ipv4::new(src, DST4, Tcp::new(40000, dport).into())
}

/// IPv4 ICMP echo from `src`.
#[must_use]
pub fn icmp4(src: [u8; 4]) -> Ipv4 {
    Ipv4::new(src, DST4, L4::Icmp(Icmp::echo_v4()))
}

/// IPv6 UDP from `src` to port `dport`.
#[must_use]
pub fn udp6(src: [u8; 16], dport: u16) -> Ipv6 {
    Ipv6::new(src, DST6, Udp::new(40000, dport).into())
}

/// IPv6 TCP SYN from `src` to port `dport`.
#[must_use]
pub fn tcp6(src: [u8; 16], dport: u16) -> Ipv6 {
    Ipv6::new(src, DST6, Tcp::new(40000, dport).into())
}

/// IPv6 `ICMPv6` echo from `src`.
#[must_use]
pub fn icmp6(src: [u8; 16]) -> Ipv6 {
    Ipv6::new(src, DST6, L4::Icmpv6(Icmp::echo_v6()))
}

/// An ARP request (who-has 198.19.0.1 tell 198.18.0.1).
#[must_use]
pub fn arp() -> Frame {
    let mut p = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    p.extend_from_slice(&SRC4);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&DST4);
    let mut f = Frame::other(ETHERTYPE_ARP, p);
    f.dst_mac = [0xff; 6];
    f
}

/// An LLDP frame with chassis ID, port ID and TTL TLVs.
#[must_use]
pub fn lldp() -> Frame {
    let payload = vec![
        0x02, 0x07, 0x04, 0x02, 0, 0, 0, 0, 0x01, // chassis ID (MAC)
        0x04, 0x02, 0x07, b'1', // port ID (local)
        0x06, 0x02, 0x00, 0x78, // TTL 120
        0x00, 0x00, // end
    ];
    let mut f = Frame::other(ETHERTYPE_LLDP, payload);
    f.dst_mac = [0x01, 0x80, 0xc2, 0, 0, 0x0e];
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_udp_layout_and_checksums() {
        let (bytes, layout) = Frame::ipv4(udp4(SRC4, 53)).build_with_layout();
        assert_eq!(layout.l3, 14);
        assert_eq!(layout.l4, 34);
        assert_eq!(layout.payload, 42);
        assert_eq!(bytes.len(), 45);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
        assert_eq!(bytes[14], 0x45);
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), 31);
        // A header with a correct checksum sums to zero.
        assert_eq!(checksum(&[&bytes[14..34]]), 0);
        assert_eq!(u16::from_be_bytes([bytes[36], bytes[37]]), 53);
    }

    #[test]
    fn vlan_tags_in_wire_order() {
        let bytes = Frame::ipv4(udp4(SRC4, 53)).qinq(100).vlan(200).build();
        assert_eq!(
            &bytes[12..22],
            &[0x88, 0xa8, 0, 100, 0x81, 0, 0, 200, 0x08, 0]
        );
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let ip = udp6(SRC6, 53)
            .ext(Ext::hop_by_hop(0))
            .ext(Ext::routing(1))
            .ext(Ext::fragment(0, true, 7))
            .ext(Ext::dest_opts(0));
        let (bytes, layout) = Frame::ipv6(ip).build_with_layout();
        assert_eq!(bytes[20], proto::HOPOPTS);
        assert_eq!(layout.ext, vec![54, 62, 78, 86]);
        assert_eq!(bytes[54], proto::ROUTING);
        assert_eq!(bytes[62], proto::FRAGMENT);
        assert_eq!(bytes[78], proto::DSTOPTS);
        assert_eq!(bytes[86], proto::UDP);
        assert_eq!(layout.l4, 94);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[18], bytes[19]])),
            bytes.len() - 54
        );
    }
}
