//! A packet flood generator that runs in the kernel: `BPF_PROG_TEST_RUN` in
//! live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) runs a tiny XDP program
//! that returns `XDP_TX` on the sending end of a lab's veth pair, so every
//! run puts one frame on the wire, into the receiving namespace's real
//! receive path (the peer veth's NAPI, its XDP program, the stack). One core
//! reaches several million packets per second, far more than sockets can.
//!
//! Also here, because they need the same raw `bpf(2)` calls: XDP programs made
//! of a few instructions (the bare `XDP_PASS`/`XDP_DROP` baselines), attaching
//! them with a BPF link, and running any program by file descriptor.
//!
//! Frames only ever carry addresses from the benchmarking range
//! (198.18.0.0/15) and only go to the lab's own namespaces. Every flood is
//! bounded by its packet count.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use filter_common::xdp_action;

pub use crate::netns::pin_thread_to_cpu;
use crate::netns::{NetNs, in_netns};

/// The kernel's largest live-frame batch (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// Instruction encoders, named after the assembly they stand for.
mod asm {
    use super::Insn;

    const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }

    /// `dst = imm` (64-bit).
    pub const fn mov_imm(dst: u8, imm: i32) -> Insn {
        insn(0xb7, dst, 0, 0, imm)
    }
    /// `dst = src` (64-bit).
    pub const fn mov_reg(dst: u8, src: u8) -> Insn {
        insn(0xbf, dst, src, 0, 0)
    }
    /// `dst += imm` (64-bit).
    pub const fn add_imm(dst: u8, imm: i32) -> Insn {
        insn(0x07, dst, 0, 0, imm)
    }
    /// `dst += src` (64-bit).
    pub const fn add_reg(dst: u8, src: u8) -> Insn {
        insn(0x0f, dst, src, 0, 0)
    }
    /// `dst = (u32)dst + imm` (32-bit, wraps).
    pub const fn add32_imm(dst: u8, imm: i32) -> Insn {
        insn(0x04, dst, 0, 0, imm)
    }
    /// `dst = (u32)dst % imm` (32-bit, unsigned).
    pub const fn mod32_imm(dst: u8, imm: i32) -> Insn {
        insn(0x94, dst, 0, 0, imm)
    }
    /// `dst &= imm` (64-bit).
    pub const fn and_imm(dst: u8, imm: i32) -> Insn {
        insn(0x57, dst, 0, 0, imm)
    }
    /// `dst >>= imm` (64-bit, logical).
    pub const fn rsh_imm(dst: u8, imm: i32) -> Insn {
        insn(0x77, dst, 0, 0, imm)
    }
    /// `dst ^= imm` (64-bit).
    pub const fn xor_imm(dst: u8, imm: i32) -> Insn {
        insn(0xa7, dst, 0, 0, imm)
    }
    /// `dst = htobe{bits}(dst)`.
    pub const fn to_be(dst: u8, bits: i32) -> Insn {
        insn(0xdc, dst, 0, 0, bits)
    }
    /// `dst = *(u32 *)(src + off)`.
    pub const fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x61, dst, src, off, 0)
    }
    /// `*(u16 *)(dst + off) = src`.
    pub const fn store_u16(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x6b, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = src`.
    pub const fn store_u32(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x63, dst, src, off, 0)
    }
    /// `if dst > src goto +off` (unsigned).
    pub const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x2d, dst, src, off, 0)
    }
    /// Calls helper number `helper`.
    pub const fn call(helper: i32) -> Insn {
        insn(0x85, 0, 0, 0, helper)
    }
    pub const fn exit() -> Insn {
        insn(0x95, 0, 0, 0, 0)
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised bpf_attr prefix for `cmd`, with
    // every pointer in it valid for the call; its size is passed along.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_LOAD`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `BPF_PROG_TEST_RUN`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_LINK_CREATE`'s part of `union bpf_attr` (the fields XDP uses).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct xdp_md`, the context of an XDP test run.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (veth supports it).
    Native,
    /// Generic XDP, after the socket buffer is allocated.
    Skb,
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value (the XDP action) on the last run.
    pub action: u32,
    /// The kernel's average time per run.
    pub duration: Duration,
}

/// An XDP program loaded from raw instructions; unloaded when dropped (and
/// no link or pin holds it).
#[derive(Debug)]
pub struct XdpProgram {
    fd: OwnedFd,
}

impl XdpProgram {
    fn load(name: &str, insns: &[Insn]) -> io::Result<Self> {
        let license = CString::new("GPL").expect("static string");
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: u32::try_from(insns.len()).map_err(io::Error::other)?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: u32::try_from(log.len()).map_err(io::Error::other)?,
            log_buf: log.as_mut_ptr() as u64,
            expected_attach_type: BPF_XDP,
            ..ProgLoadAttr::default()
        };
        for (slot, byte) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *slot = byte;
        }
        match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(rc) => Ok(Self { fd: fd_from(rc)? }),
            Err(err) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                Err(io::Error::new(
                    err.kind(),
                    format!("loading XDP program {name}: {err}; verifier log:\n{text}"),
                ))
            }
        }
    }

    /// The two-instruction program `r0 = action; exit`: the bare baselines
    /// (`XDP_PASS` is the floor of any XDP program's cost, `XDP_DROP` the
    /// ceiling of any XDP filter's drop rate) and the single-source generator
    /// (`XDP_TX`).
    pub fn returning(action: u32) -> io::Result<Self> {
        let name = match action {
            xdp_action::PASS => "bare_pass",
            xdp_action::DROP => "bare_drop",
            xdp_action::TX => "flood_tx",
            _ => "bare_action",
        };
        let action = i32::try_from(action).map_err(io::Error::other)?;
        Self::load(name, &[asm::mov_imm(0, action), asm::exit()])
    }

    /// `XDP_DROP` after reading the IPv4 source of an untagged frame (one
    /// bounds-checked load from the frame's first cache line; a shorter
    /// frame is dropped unread): the ceiling of any filter that looks at
    /// a packet before it drops it, beside the bare `XDP_DROP`, which never
    /// touches the frame.
    pub fn drop_reading_source() -> io::Result<Self> {
        let drop = i32::try_from(xdp_action::DROP).map_err(io::Error::other)?;
        Self::load(
            "drop_read_src",
            &[
                // r2 = ctx->data, r3 = ctx->data_end
                asm::load_u32(2, 1, 0),
                asm::load_u32(3, 1, 4),
                // r4 = the end of the IPv4 header (Ethernet 14 + IPv4 20)
                asm::mov_reg(4, 2),
                asm::add_imm(4, 14 + 20),
                asm::jgt_reg(4, 3, 1),
                // r5 = the IPv4 source (offset 26)
                asm::load_u32(5, 2, 26),
                asm::mov_imm(0, drop),
                asm::exit(),
            ],
        )
    }

    /// A generator that rewrites the IPv4 source of `template` (an Ethernet
    /// frame without VLAN tags, IPv4 header without options) to
    /// `base + bpf_get_prandom_u32() % count`, fixes the header checksum,
    /// and returns `XDP_TX`. `base..base + count` must stay in 198.18.0.0/15.
    pub fn spread_ipv4_source(template: &[u8], base: Ipv4Addr, count: u32) -> io::Result<Self> {
        let range = benchmark_range();
        let last = u32::from(base)
            .checked_add(count.saturating_sub(1))
            .ok_or_else(|| io::Error::other("source range overflows"))?;
        if count == 0 || !range.contains(&u32::from(base)) || !range.contains(&last) {
            return Err(io::Error::other(format!(
                "sources {base} + {count} leave 198.18.0.0/15"
            )));
        }
        if template.len() < IPV4_END || template[12..14] != [0x08, 0x00] || template[14] != 0x45 {
            return Err(io::Error::other(
                "the template must be an untagged IPv4 frame without options",
            ));
        }
        // Sum of the header's 16-bit words except the checksum and the source.
        let rest: u32 = (0..10)
            .filter(|&word| word != 5 && word != 6 && word != 7)
            .map(|word| {
                let at = 14 + 2 * word;
                u32::from(u16::from_be_bytes([template[at], template[at + 1]]))
            })
            .sum();
        let modulus = i32::try_from(count).map_err(io::Error::other)?;
        #[expect(
            clippy::cast_possible_wrap,
            reason = "a 32-bit ALU add: the immediate is the address's bit pattern"
        )]
        let base_imm = u32::from(base) as i32;
        let rest_imm = i32::try_from(rest).map_err(io::Error::other)?;
        let headers_end = i32::try_from(IPV4_END).expect("small");
        let tx = i32::try_from(xdp_action::TX).expect("small");
        let head = [
            // r0 = base + random % count: the new source, in host order.
            asm::mov_reg(6, 1),
            asm::call(BPF_FUNC_GET_PRANDOM_U32),
            asm::mod32_imm(0, modulus),
            asm::add32_imm(0, base_imm),
            // r2 = data, r3 = data_end, r4 = data + Ethernet and IPv4 headers.
            asm::load_u32(2, 6, 0),
            asm::load_u32(3, 6, 4),
            asm::mov_reg(4, 2),
            asm::add_imm(4, headers_end),
        ];
        let rewrite = [
            // r5 = the source's two 16-bit words + the header's other words.
            asm::mov_reg(5, 0),
            asm::rsh_imm(5, 16),
            asm::mov_reg(7, 0),
            asm::and_imm(7, 0xffff),
            asm::add_reg(5, 7),
            asm::add_imm(5, rest_imm),
            // Fold the carries twice, take the ones' complement.
            asm::mov_reg(7, 5),
            asm::rsh_imm(7, 16),
            asm::and_imm(5, 0xffff),
            asm::add_reg(5, 7),
            asm::mov_reg(7, 5),
            asm::rsh_imm(7, 16),
            asm::and_imm(5, 0xffff),
            asm::add_reg(5, 7),
            asm::xor_imm(5, 0xffff),
            // Store the checksum and the source in network order.
            asm::to_be(5, 16),
            asm::store_u16(2, 5, 24),
            asm::to_be(0, 32),
            asm::store_u32(2, 0, 26),
        ];
        let skip = i16::try_from(rewrite.len()).expect("short program");
        let mut insns = head.to_vec();
        // A frame too short for the headers goes out as it is.
        insns.push(asm::jgt_reg(4, 3, skip));
        insns.extend(rewrite);
        insns.extend([asm::mov_imm(0, tx), asm::exit()]);
        Self::load("flood_spread", &insns)
    }

    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's id for the program (for `bpftool prog run id N`).
    pub fn id(&self) -> io::Result<u32> {
        program_id(self.fd())
    }

    /// Attaches to `ifindex` with a BPF link; dropping the link detaches.
    /// The index is looked up in the calling thread's network namespace: call
    /// it inside [`in_netns`].
    pub fn attach(&self, ifindex: u32, mode: AttachMode) -> io::Result<XdpLink> {
        let mut attr = LinkCreateAttr {
            prog_fd: raw_fd(self.fd())?,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: match mode {
                AttachMode::Native => XDP_FLAGS_DRV_MODE,
                AttachMode::Skb => XDP_FLAGS_SKB_MODE,
            },
        };
        Ok(XdpLink {
            _fd: fd_from(bpf(BPF_LINK_CREATE, &mut attr)?)?,
        })
    }

    /// Runs the program `repeat` times on `frame` (`BPF_PROG_TEST_RUN`).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> io::Result<TestRunResult> {
        test_run(self.fd(), frame, repeat)
    }
}

/// An XDP attachment held by a BPF link; detached when dropped.
#[derive(Debug)]
pub struct XdpLink {
    _fd: OwnedFd,
}

fn raw_fd(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)
}

/// The id of the program behind `fd`.
pub fn program_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // The first fields of `struct bpf_prog_info`: type, id.
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: raw_fd(fd)?,
        info_len: u32::try_from(size_of::<[u32; 2]>()).expect("8 bytes"),
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

/// Runs the XDP program behind `fd` `repeat` times on `frame`.
pub fn test_run(fd: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRunResult> {
    let mut attr = TestRunAttr {
        prog_fd: raw_fd(fd)?,
        data_size_in: u32::try_from(frame.len()).map_err(io::Error::other)?,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunResult {
        action: attr.retval,
        duration: Duration::from_nanos(u64::from(attr.duration)),
    })
}

/// Runs `program` `count` times in live-frame mode with `frame` arriving on
/// interface `ifindex` of the calling thread's network namespace: whatever
/// the program returns happens for real (`XDP_TX` sends the frame out of that
/// interface). Returns the wall-clock time the kernel took.
pub fn run_live(
    program: &XdpProgram,
    frame: &[u8],
    ifindex: u32,
    count: u32,
    batch: u32,
) -> io::Result<Duration> {
    let size = u32::try_from(frame.len()).map_err(io::Error::other)?;
    let mut ctx = XdpMd {
        data_end: size,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: raw_fd(program.fd())?,
        data_size_in: size,
        data_in: frame.as_ptr() as u64,
        repeat: count,
        ctx_size_in: u32::try_from(size_of::<XdpMd>()).expect("24 bytes"),
        ctx_in: std::ptr::from_mut(&mut ctx) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch.clamp(1, MAX_BATCH),
        ..TestRunAttr::default()
    };
    let start = Instant::now();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(start.elapsed())
}

const IPV4_END: usize = 14 + 20;

fn benchmark_range() -> std::ops::RangeInclusive<u32> {
    u32::from(Ipv4Addr::new(198, 18, 0, 0))..=u32::from(Ipv4Addr::new(198, 19, 255, 255))
}

/// An untagged Ethernet + IPv4 (no options) + UDP frame.
#[derive(Clone, Copy, Debug)]
pub struct UdpFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Whole frame length without the FCS (60 is Ethernet's minimum).
    pub frame_len: usize,
}

impl UdpFrame {
    /// Builds the frame: correct IPv4 checksum, UDP checksum 0 (none), a
    /// recognisable payload. Panics when an address leaves 198.18.0.0/15 or
    /// the length is under 42 bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let range = benchmark_range();
        assert!(
            range.contains(&u32::from(self.src)) && range.contains(&u32::from(self.dst)),
            "flood frames stay in 198.18.0.0/15 ({} -> {})",
            self.src,
            self.dst
        );
        assert!(
            self.frame_len >= 42,
            "a UDP/IPv4 frame has at least 42 bytes"
        );
        let mut f = vec![0u8; self.frame_len];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = u16::try_from(self.frame_len - 14).expect("frame under 64 KiB");
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[18..20].copy_from_slice(&0x6662u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&self.src.octets());
        f[30..34].copy_from_slice(&self.dst.octets());
        let checksum = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&checksum.to_be_bytes());
        f[34..36].copy_from_slice(&self.src_port.to_be_bytes());
        f[36..38].copy_from_slice(&self.dst_port.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        for (i, byte) in f[42..].iter_mut().enumerate() {
            *byte = b"fbench-flood"[i % 12];
        }
        f
    }
}

/// The IPv4 header checksum of `header` (its checksum field taken as zero).
#[must_use]
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// The interface index of `iface` in `ns`.
pub fn ifindex(ns: &NetNs, iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(io::Error::other)?;
    in_netns(ns, || {
        // SAFETY: valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(index)
        }
    })
}

fn ip_json(ns: &NetNs, args: &[&str]) -> io::Result<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j"])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip -n {} -j {}` failed: {}",
            ns.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

/// The MAC address of `iface` in `ns`.
pub fn mac_address(ns: &NetNs, iface: &str) -> io::Result<[u8; 6]> {
    let json = ip_json(ns, &["link", "show", "dev", iface])?;
    let text = json[0]["address"]
        .as_str()
        .ok_or_else(|| io::Error::other(format!("no address for {iface}")))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .ok_or_else(|| io::Error::other(format!("bad MAC {text}")))?;
        *byte = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}

/// Interface counters (`ip -s link`). For a veth, `rx_packets` counts every
/// frame taken off its receive ring (XDP drops included) and `rx_dropped`
/// includes frames its peer could not queue (ring full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkStats {
    /// Counter movement since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_sub(earlier.rx_packets),
            rx_dropped: self.rx_dropped.wrapping_sub(earlier.rx_dropped),
            tx_packets: self.tx_packets.wrapping_sub(earlier.tx_packets),
            tx_dropped: self.tx_dropped.wrapping_sub(earlier.tx_dropped),
        }
    }
}

/// The counters of `iface` in `ns`.
pub fn link_stats(ns: &NetNs, iface: &str) -> io::Result<LinkStats> {
    let json = ip_json(ns, &["-s", "link", "show", "dev", iface])?;
    let stats = &json[0]["stats64"];
    let get = |dir: &str, field: &str| stats[dir][field].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: get("rx", "packets"),
        rx_dropped: get("rx", "dropped"),
        tx_packets: get("tx", "packets"),
        tx_dropped: get("tx", "dropped"),
    })
}

/// Turns on GRO on a veth (the legacy `ETHTOOL_SGRO` ioctl, so no ethtool
/// binary is needed). A veth only takes frames sent with `XDP_TX`/redirect
/// from its peer when its NAPI is running, which needs either an XDP program
/// of its own or GRO: without one, a flood would be dropped at the veth
/// before any filter under test saw it.
pub fn enable_veth_napi(ns: &NetNs, iface: &str) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("interface name {iface} too long")));
    }
    in_netns(ns, || {
        // SAFETY: plain socket(2); the result is checked.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut value = EthtoolValue {
            cmd: ETHTOOL_SGRO,
            data: 1,
        };
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(iface.bytes()) {
            *slot = byte.cast_signed();
        }
        request.ifr_ifru.ifru_data = std::ptr::from_mut(&mut value).cast();
        // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live
        // ethtool_value, as the ioctl expects.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut request) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

/// The sending side of a flood: a generator program and the frame it sends
/// from one interface of one namespace.
#[derive(Debug)]
pub struct Flood {
    program: XdpProgram,
    frame: Vec<u8>,
    sources: u32,
}

/// One flood's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodRun {
    /// Frames the generator sent.
    pub sent: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl FloodRun {
    /// Frames sent per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "packet counts stay far below 2^52"
        )]
        let sent = self.sent as f64;
        sent / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Options of [`Flood::run`].
#[derive(Clone, Copy, Debug)]
pub struct FloodOptions {
    /// Frames to send.
    pub packets: u32,
    /// Frames per live-frame batch (at most [`MAX_BATCH`]).
    pub batch: u32,
    /// Pin the sending thread to this CPU (the receiving side's NAPI runs on
    /// the CPU that queued the frames, so the whole path shares it).
    pub cpu: Option<usize>,
}

impl Default for FloodOptions {
    fn default() -> Self {
        Self {
            packets: 1_000_000,
            batch: 64,
            cpu: None,
        }
    }
}

impl Flood {
    /// Sends `frame` as it is, every time.
    pub fn single(frame: Vec<u8>) -> io::Result<Self> {
        Ok(Self {
            program: XdpProgram::returning(xdp_action::TX)?,
            frame,
            sources: 1,
        })
    }

    /// Sends `frame` with its IPv4 source drawn at random from
    /// `base..base + count` for every packet (see
    /// [`XdpProgram::spread_ipv4_source`]).
    pub fn spread(frame: Vec<u8>, base: Ipv4Addr, count: u32) -> io::Result<Self> {
        Ok(Self {
            program: XdpProgram::spread_ipv4_source(&frame, base, count)?,
            frame,
            sources: count,
        })
    }

    /// How many distinct sources the flood draws from.
    #[must_use]
    pub fn sources(&self) -> u32 {
        self.sources
    }

    #[must_use]
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Sends `options.packets` frames out of `iface` in `ns` (they arrive
    /// on its peer) and returns when the kernel has sent them all.
    pub fn run(&self, ns: &NetNs, iface: &str, options: &FloodOptions) -> io::Result<FloodRun> {
        let index = ifindex(ns, iface)?;
        let elapsed = in_netns(ns, || {
            if let Some(cpu) = options.cpu {
                pin_thread_to_cpu(cpu)?;
            }
            run_live(
                &self.program,
                &self.frame,
                index,
                options.packets,
                options.batch,
            )
        })?;
        Ok(FloodRun {
            sent: u64::from(options.packets),
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{Lab, skip_unless_root};

    /// `Udp: NoPorts` of the namespace: datagrams that reached UDP for a closed port.
    fn udp_no_ports(ns: &NetNs) -> u64 {
        let text = in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .expect("reading /proc/net/snmp");
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "NoPorts")
            .and_then(|(_, v)| v.parse().ok())
            .expect("a NoPorts counter")
    }

    #[test]
    fn floods_reach_the_peers_stack_with_valid_headers() {
        if skip_unless_root("floods_reach_the_peers_stack_with_valid_headers") {
            return;
        }
        let lab = Lab::new("flood");
        in_netns(&lab.dst, || {
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "0")
                    .expect("rp_filter off");
            }
        });
        enable_veth_napi(&lab.dst, &lab.dst_if).expect("GRO on");
        let frame = UdpFrame {
            dst_mac: mac_address(&lab.dst, &lab.dst_if).expect("dst MAC"),
            src_mac: mac_address(&lab.src, &lab.src_if).expect("src MAC"),
            src: lab.src_v4(),
            dst: lab.dst_v4(),
            src_port: 40_000,
            // Nothing listens: every frame that the stack accepts counts as NoPorts.
            dst_port: 9,
            frame_len: 60,
        }
        .build();
        // Away from the lab's own /24: its addresses are martian sources.
        let base = if lab.dst_v4().octets()[1] == 18 {
            Ipv4Addr::new(198, 19, 0, 0)
        } else {
            Ipv4Addr::new(198, 18, 0, 0)
        };
        let floods = [
            (
                "one source",
                Flood::single(frame.clone()).expect("generator"),
            ),
            (
                "1000 sources",
                Flood::spread(frame, base, 1000).expect("spread generator"),
            ),
        ];
        let options = FloodOptions {
            packets: 5000,
            ..FloodOptions::default()
        };
        for (name, flood) in floods {
            let link_before = link_stats(&lab.dst, &lab.dst_if).expect("link stats");
            let no_ports_before = udp_no_ports(&lab.dst);
            let run = flood
                .run(&lab.src, &lab.src_if, &options)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(run.sent, 5000);
            std::thread::sleep(Duration::from_millis(50));
            let link = link_stats(&lab.dst, &lab.dst_if)
                .expect("link stats")
                .since(&link_before);
            let no_ports = udp_no_ports(&lab.dst) - no_ports_before;
            assert!(link.rx_packets >= 5000, "{name}: {link:?}");
            // A bad checksum or address would stop frames before UDP.
            assert_eq!(no_ports, 5000, "{name}: {link:?}");
        }
    }

    #[test]
    fn checksum_of_a_known_header() {
        // Example from RFC 1071 style references: 45 00 00 73 00 00 40 00 40 11
        // (checksum) c0 a8 00 01 c0 a8 00 c7 -> b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn frames_have_valid_checksums_and_lengths() {
        let frame = UdpFrame {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(198, 18, 0, 10),
            dst: Ipv4Addr::new(198, 18, 0, 1),
            src_port: 4000,
            dst_port: 5000,
            frame_len: 60,
        }
        .build();
        assert_eq!(frame.len(), 60);
        assert_eq!(
            ipv4_checksum(&frame[14..34]),
            u16::from_be_bytes([frame[24], frame[25]])
        );
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 46);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 26);
    }
}
