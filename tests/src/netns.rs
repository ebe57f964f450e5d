//! Network-namespace labs for the integration tests: RAII guards for
//! namespaces and veth pairs, a way to run code inside a namespace, and
//! traffic helpers built on real sockets.
//!
//! Tests run as parallel threads of one process, so every name here is unique
//! per process (pid) and per guard (a counter). Every loop is bounded in count
//! and in time, and traffic only goes to addresses inside the test's own
//! namespaces.

use std::{
    fs::File,
    io::{self, ErrorKind},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Serialises `ip netns add/del` within the process: they mount /run/netns
/// on first use and race with each other there.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A number unique within this process.
#[must_use]
pub fn unique_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Whether the tests run as root (needed for namespaces and BPF).
pub use filter_devtools::is_root;

/// Prints the skip message and returns true when the test cannot run here.
#[must_use]
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: {test} needs root and BPF");
    true
}

/// Runs `ip ARGS`, returning its output whatever the exit status.
#[must_use]
pub fn ip_output(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e}", args.join(" ")))
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lock_netns() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A network namespace, deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ft-<tag>-<pid>-<n>` and brings its loopback up.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let tag: String = tag.chars().take(12).collect();
        let name = format!("ft-{tag}-{}-{}", std::process::id(), unique_id());
        {
            let _guard = lock_netns();
            ip(&["netns", "add", &name]);
        }
        // From here on the guard owns the namespace: a panic below deletes it.
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace (`/run/netns/NAME`).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _guard = lock_netns();
        let out = ip_output(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: deleting netns {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Runs `f` on a fresh thread that has joined `ns`'s network namespace (only
/// that thread moves) and returns its result. Sockets created there stay in
/// `ns` wherever they are used afterwards.
pub fn in_netns<T, F>(ns: &NetNs, f: F) -> T
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = ns.path();
    thread::scope(|scope| {
        let handle = scope.spawn(move || {
            let file =
                File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            // SAFETY: valid fd; CLONE_NEWNET only moves this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(
                rc == 0,
                "setns({}) failed: {}",
                path.display(),
                io::Error::last_os_error()
            );
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Lets root open `SOCK_DGRAM` ICMP ("ping") sockets in `ns`, for both families.
pub fn allow_ping_sockets(ns: &NetNs) {
    in_netns(ns, || {
        // /proc/sys/net follows the opening thread's network namespace.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            .expect("writing net.ipv4.ping_group_range");
    });
}

const SRC_MAC: &str = "02:66:74:00:00:01";
const DST_MAC: &str = "02:66:74:00:00:02";
/// Host part of the first source address (IPv4 198.18.N.10, IPv6 `2001:db8:N::10`).
const PRIMARY_HOST: u8 = 0x10;

/// Two namespaces joined by a veth pair: traffic goes from `src` to `dst`,
/// where the filter is attached (`dst_if`).
///
/// Lab number N gives IPv4 198.18.0.0/15's Nth /24 and IPv6 `2001:db8:N::/48`;
/// all addresses are on-link (/24 and /48), IPv6 ones without DAD. Neighbour
/// entries are static on both sides, so no ARP or neighbour discovery frames
/// are sent and every frame the filter sees is one a test sent (plus
/// link-local IPv6 background such as MLD, from `fe80::/10`).
#[derive(Debug)]
pub struct Lab {
    pub src: NetNs,
    pub dst: NetNs,
    /// Interface in `src`.
    pub src_if: String,
    /// Interface in `dst`, where the filter runs.
    pub dst_if: String,
    net: u16,
}

impl Lab {
    /// Creates the namespaces, the veth pair, the primary addresses and ping permissions.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let id = unique_id();
        let net = u16::try_from(id % 512).expect("below 512");
        let src = NetNs::new(&format!("{tag}-s"));
        let dst = NetNs::new(&format!("{tag}-d"));
        let pid = std::process::id();
        // At most 1 + 6 hex digits + 1 + 5 digits: within IFNAMSIZ - 1 = 15.
        let suffix = format!("{:x}-{}", pid % 0x100_0000, id % 100_000);
        let lab = Self {
            src_if: format!("s{suffix}"),
            dst_if: format!("d{suffix}"),
            src,
            dst,
            net,
        };
        lab.create_link();
        lab.add_src(IpAddr::V4(lab.src_v4()));
        lab.add_src(IpAddr::V6(lab.src_v6()));
        allow_ping_sockets(&lab.src);
        lab
    }

    /// Creates the veth pair, the destination's addresses and the source's
    /// neighbour entries, and brings both ends up.
    fn create_link(&self) {
        let lab = self;
        ip(&[
            "link",
            "add",
            &lab.src_if,
            "address",
            SRC_MAC,
            "netns",
            lab.src.name(),
            "type",
            "veth",
            "peer",
            "name",
            &lab.dst_if,
            "address",
            DST_MAC,
            "netns",
            lab.dst.name(),
        ]);
        let dst_v4 = lab.dst_v4().to_string();
        let dst_v6 = lab.dst_v6().to_string();
        lab.dst
            .ip(&["addr", "add", &format!("{dst_v4}/24"), "dev", &lab.dst_if]);
        lab.dst.ip(&[
            "addr",
            "add",
            &format!("{dst_v6}/48"),
            "dev",
            &lab.dst_if,
            "nodad",
        ]);
        for (ns, iface) in [(&lab.src, &lab.src_if), (&lab.dst, &lab.dst_if)] {
            ns.ip(&["link", "set", iface, "up"]);
        }
        for addr in [dst_v4, dst_v6] {
            lab.src.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                DST_MAC,
                "dev",
                &lab.src_if,
                "nud",
                "permanent",
            ]);
        }
    }

    /// Deletes the veth pair and creates it again with the same names and
    /// addresses, as a flapping interface would (source addresses added
    /// with [`Lab::add_src`] other than the primary ones must be added again).
    pub fn recreate_link(&self) {
        self.dst.ip(&["link", "del", &self.dst_if]);
        self.create_link();
        self.add_src(IpAddr::V4(self.src_v4()));
        self.add_src(IpAddr::V6(self.src_v6()));
    }

    /// 198.18.0.0/15's address `host` in this lab's /24.
    #[must_use]
    pub fn v4(&self, host: u8) -> Ipv4Addr {
        let [hi, lo] = self.net.to_be_bytes();
        Ipv4Addr::new(198, 18 + hi, lo, host)
    }

    /// `2001:db8:N:subnet::host` in this lab's /48.
    #[must_use]
    pub fn v6(&self, subnet: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, self.net, subnet, 0, 0, 0, host)
    }

    /// This lab's IPv4 /24 (`198.18.N.0/24`).
    #[must_use]
    pub fn v4_net(&self) -> String {
        format!("{}/24", self.v4(0))
    }

    /// This lab's IPv6 /48.
    #[must_use]
    pub fn v6_net(&self) -> String {
        format!("{}/48", self.v6(0, 0))
    }

    #[must_use]
    pub fn dst_v4(&self) -> Ipv4Addr {
        self.v4(1)
    }

    #[must_use]
    pub fn dst_v6(&self) -> Ipv6Addr {
        self.v6(0, 1)
    }

    /// The first source address (the interface's primary one).
    #[must_use]
    pub fn src_v4(&self) -> Ipv4Addr {
        self.v4(PRIMARY_HOST)
    }

    #[must_use]
    pub fn src_v6(&self) -> Ipv6Addr {
        self.v6(0, u16::from(PRIMARY_HOST))
    }

    /// Adds a source address on the `src` side (with the `dst` side's static
    /// neighbour entry for it). It must lie in this lab's /24 or /48.
    pub fn add_src(&self, addr: IpAddr) -> IpAddr {
        let with_prefix = match addr {
            IpAddr::V4(_) => format!("{addr}/24"),
            IpAddr::V6(_) => format!("{addr}/48"),
        };
        let mut args = vec!["addr", "add", with_prefix.as_str(), "dev", &self.src_if];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.src.ip(&args);
        let text = addr.to_string();
        self.dst.ip(&[
            "neigh",
            "replace",
            &text,
            "lladdr",
            SRC_MAC,
            "dev",
            &self.dst_if,
            "nud",
            "permanent",
        ]);
        addr
    }

    /// Adds `198.18.N.host` as a source address.
    pub fn add_src_v4(&self, host: u8) -> IpAddr {
        self.add_src(IpAddr::V4(self.v4(host)))
    }

    /// Adds `2001:db8:N:subnet::host` as a source address.
    pub fn add_src_v6(&self, subnet: u16, host: u16) -> IpAddr {
        self.add_src(IpAddr::V6(self.v6(subnet, host)))
    }

    /// The destination address of the same family as `src`.
    #[must_use]
    pub fn dst_for(&self, src: IpAddr) -> IpAddr {
        match src {
            IpAddr::V4(_) => IpAddr::V4(self.dst_v4()),
            IpAddr::V6(_) => IpAddr::V6(self.dst_v6()),
        }
    }

    /// Whether `ip link show` reports an XDP program on the filtered interface.
    #[must_use]
    pub fn xdp_attached(&self) -> bool {
        let text = self.dst.ip(&["link", "show", &self.dst_if]);
        text.contains(" xdp") || text.contains("prog/xdp")
    }
}

/// A UDP socket bound to `bind`, created inside `ns`.
#[must_use]
pub fn udp_socket(ns: &NetNs, bind: SocketAddr) -> UdpSocket {
    in_netns(ns, || {
        UdpSocket::bind(bind).unwrap_or_else(|e| panic!("binding UDP {bind} in {}: {e}", ns.name()))
    })
}

/// Sends `count` datagrams from `src` (any port) to `dst`, `interval` apart.
/// Returns how many the kernel accepted.
#[must_use]
pub fn udp_send(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    count: usize,
    interval: Duration,
) -> usize {
    let sock = udp_socket(ns, SocketAddr::new(src, 0));
    let mut sent = 0;
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            thread::sleep(interval);
        }
        if sock.send_to(&payload(i), dst).is_ok() {
            sent += 1;
        }
    }
    sent
}

const PAYLOAD_TAG: &[u8; 8] = b"ft-probe";

/// Test datagram: a tag and the sender's sequence number.
fn payload(seq: usize) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(PAYLOAD_TAG);
    p[8..].copy_from_slice(&(seq as u64).to_be_bytes());
    p
}

/// The sequence number of a test datagram.
fn payload_seq(data: &[u8]) -> Option<u64> {
    if data.len() != 16 || &data[..8] != PAYLOAD_TAG {
        return None;
    }
    Some(u64::from_be_bytes(data[8..].try_into().ok()?))
}

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    pub from: IpAddr,
    /// When the receiver read it.
    pub at: Instant,
    /// The sender's sequence number, for datagrams sent by these helpers.
    pub seq: Option<u64>,
}

/// How many of `datagrams` came from `ip`.
#[must_use]
pub fn count_from(datagrams: &[Datagram], ip: IpAddr) -> usize {
    datagrams.iter().filter(|d| d.from == ip).count()
}

/// A UDP socket receiving in `dst`.
#[derive(Debug)]
pub struct UdpReceiver {
    sock: UdpSocket,
}

impl UdpReceiver {
    /// Binds in `ns` with a large receive buffer (so floods are not lost in the socket).
    #[must_use]
    pub fn bind(ns: &NetNs, addr: SocketAddr) -> Self {
        let sock = in_netns(ns, || {
            let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
                .expect("UDP socket");
            if addr.is_ipv6() {
                sock.set_only_v6(true).expect("IPV6_V6ONLY");
            }
            sock.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
            sock.bind(&SockAddr::from(addr))
                .unwrap_or_else(|e| panic!("binding UDP {addr} in {}: {e}", ns.name()));
            UdpSocket::from(sock)
        });
        Self { sock }
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local address")
    }

    /// Reads until nothing arrived for `quiet`, or `max` has passed.
    #[must_use]
    pub fn drain(&self, quiet: Duration, max: Duration) -> Vec<Datagram> {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        self.sock
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("SO_RCVTIMEO");
        while start.elapsed() < max && last.elapsed() < quiet {
            match self.sock.recv_from(&mut buf) {
                Ok((len, from)) => {
                    last = Instant::now();
                    out.push(Datagram {
                        from: from.ip(),
                        at: last,
                        seq: payload_seq(&buf[..len]),
                    });
                }
                // A signal (the test harness's, a child's exit) may interrupt the wait.
                Err(e) if is_retryable(&e) => {}
                Err(e) => panic!("receiving UDP on {}: {e}", self.addr()),
            }
        }
        out
    }

    /// Moves the socket to a thread that records every datagram until stopped
    /// (or for at most `max`).
    #[must_use]
    pub fn collect(self, max: Duration) -> Collector {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    let batch = self.drain(Duration::from_millis(20), Duration::from_millis(50));
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(batch);
                }
            })
        };
        Collector {
            log,
            stop,
            handle: Some(handle),
        }
    }
}

/// A background UDP receiver (see [`UdpReceiver::collect`]).
#[derive(Debug)]
pub struct Collector {
    log: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Collector {
    /// What arrived so far.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Datagram> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Datagrams from `ip` so far.
    #[must_use]
    pub fn count_from(&self, ip: IpAddr) -> usize {
        count_from(&self.snapshot(), ip)
    }

    /// Stops the thread (after it drained what is queued) and returns everything received.
    #[must_use]
    pub fn stop(mut self) -> Vec<Datagram> {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take()
            && let Err(panic) = handle.join()
            && !thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A TCP listener in `dst`; connections are counted, not served.
#[derive(Debug)]
pub struct TcpServer {
    listener: TcpListener,
}

impl TcpServer {
    #[must_use]
    pub fn bind(ns: &NetNs, addr: SocketAddr) -> Self {
        let listener = in_netns(ns, || {
            TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("binding TCP {addr} in {}: {e}", ns.name()))
        });
        listener.set_nonblocking(true).expect("O_NONBLOCK");
        Self { listener }
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local address")
    }

    /// Accepts (and closes) every queued connection; returns the peers.
    #[must_use]
    pub fn accepted(&self) -> Vec<IpAddr> {
        let mut peers = Vec::new();
        // Bounded: the backlog cannot hold more.
        for _ in 0..4096 {
            match self.listener.accept() {
                Ok((_, peer)) => peers.push(peer.ip()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("accepting on {}: {e}", self.addr()),
            }
        }
        peers
    }
}

/// One TCP connection attempt from `src` to `dst`: whether the handshake
/// completed within `timeout`. With a timeout under the kernel's initial
/// retransmission timeout (1 s), a failed attempt sends exactly one SYN.
#[must_use]
pub fn tcp_connect(ns: &NetNs, src: IpAddr, dst: SocketAddr, timeout: Duration) -> bool {
    in_netns(ns, || {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
            .expect("TCP socket");
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .unwrap_or_else(|e| panic!("binding TCP {src} in {}: {e}", ns.name()));
        sock.connect_timeout(&SockAddr::from(dst), timeout).is_ok()
    })
}

/// Sends `count` ICMP echo requests from `src` to `dst` (one at a time,
/// waiting up to `timeout` for each reply); returns how many were answered.
/// Uses a `SOCK_DGRAM` ICMP socket: see [`allow_ping_sockets`].
#[must_use]
pub fn ping(ns: &NetNs, src: IpAddr, dst: IpAddr, count: u16, timeout: Duration) -> usize {
    let (domain, protocol, request, reply) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let sock: UdpSocket = in_netns(ns, || {
        let sock = Socket::new(domain, Type::DGRAM, Some(protocol)).unwrap_or_else(|e| {
            panic!(
                "ICMP socket in {} (net.ipv4.ping_group_range?): {e}",
                ns.name()
            )
        });
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .unwrap_or_else(|e| panic!("binding ICMP {src} in {}: {e}", ns.name()));
        // A plain datagram socket as far as send/recv go.
        UdpSocket::from(sock)
    });
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("SO_RCVTIMEO");
    let mut answered = 0;
    let mut buf = [0u8; 2048];
    for seq in 1..=count {
        // Type, code, checksum and identifier are filled in by the kernel
        // (checksum, identifier); the sequence number is ours.
        let mut echo = [0u8; 24];
        echo[0] = request;
        echo[6..8].copy_from_slice(&seq.to_be_bytes());
        echo[8..].copy_from_slice(b"ft-ping-payload!");
        sock.send_to(&echo, SocketAddr::new(dst, 0))
            .unwrap_or_else(|e| panic!("sending echo {src} -> {dst}: {e}"));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 8 && buf[0] == reply && buf[6..8] == seq.to_be_bytes() => {
                    answered += 1;
                    break;
                }
                Ok(_) => {}
                // A signal (the test harness's, a child's exit) may interrupt the wait.
                Err(e) if is_retryable(&e) => {}
                Err(e) => panic!("receiving echo reply {dst} -> {src}: {e}"),
            }
        }
    }
    answered
}

/// A receive that timed out, found nothing, or was interrupted by a signal:
/// try again.
fn is_retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (checked below).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("no CPU {cpu}")));
    }
    // SAFETY: cpu is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid.
    let rc = unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A thread sending one UDP datagram every `interval` from `src` to `dst`
/// until stopped (or for at most `max`). Datagram `n` carries sequence number `n`.
#[derive(Debug)]
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<StreamReport>>,
}

/// What a [`UdpStream`] sent.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    /// Datagrams the kernel accepted (sequence numbers `0..sent`).
    pub sent: u64,
    /// When the first `send` returned.
    pub first: Option<Instant>,
    /// When the last `send` returned.
    pub last: Option<Instant>,
    /// For each sequence number, the time just before its `send` call: the
    /// filter saw that datagram after this instant.
    pub send_started: Vec<Instant>,
}

impl UdpStream {
    #[must_use]
    pub fn start(
        ns: &NetNs,
        src: IpAddr,
        dst: SocketAddr,
        interval: Duration,
        max: Duration,
    ) -> Self {
        Self::spawn(ns, src, dst, interval, max, None)
    }

    /// [`UdpStream::start`] with the sending thread pinned to `cpu`: a
    /// veth runs the peer's XDP program on the sender's CPU, so streams
    /// pinned to different CPUs exercise the filter on each of them.
    #[must_use]
    pub fn start_on_cpu(
        ns: &NetNs,
        src: IpAddr,
        dst: SocketAddr,
        interval: Duration,
        max: Duration,
        cpu: usize,
    ) -> Self {
        Self::spawn(ns, src, dst, interval, max, Some(cpu))
    }

    fn spawn(
        ns: &NetNs,
        src: IpAddr,
        dst: SocketAddr,
        interval: Duration,
        max: Duration,
        cpu: Option<usize>,
    ) -> Self {
        let sock = udp_socket(ns, SocketAddr::new(src, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            thread::spawn(move || {
                if let Some(cpu) = cpu {
                    pin_thread_to_cpu(cpu)
                        .unwrap_or_else(|e| panic!("pinning a UDP stream to CPU {cpu}: {e}"));
                }
                let start = Instant::now();
                let mut report = StreamReport::default();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    let before = Instant::now();
                    let seq = report.send_started.len();
                    if sock.send_to(&payload(seq), dst).is_ok() {
                        let after = Instant::now();
                        report.send_started.push(before);
                        report.first.get_or_insert(after);
                        report.last = Some(after);
                        report.sent += 1;
                        sent.store(report.sent, Ordering::Relaxed);
                    }
                    thread::sleep(interval);
                }
                report
            })
        };
        Self {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    /// Datagrams sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the thread and returns what it sent.
    #[must_use]
    pub fn stop(mut self) -> StreamReport {
        self.halt().unwrap_or_default()
    }

    fn halt(&mut self) -> Option<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take()?.join() {
            Ok(report) => Some(report),
            Err(panic) if !thread::panicking() => std::panic::resume_unwind(panic),
            Err(_) => None,
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
