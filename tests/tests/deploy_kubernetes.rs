//! The Kubernetes manifests under `deploy/kubernetes/`, without a cluster:
//! every manifest parses, the `DaemonSet` keeps its contract (host network,
//! exactly the capabilities `BPF`, `NET_ADMIN` and `PERFMON`, not
//! privileged, the host's bpffs, the state and runtime directories on the
//! host, the policy from a `ConfigMap` at the path `run --policy` reads, the
//! Prometheus annotations, the readiness probe and the metrics address on
//! one port, a rolling update with `maxUnavailable`), and the `ConfigMap`'s
//! policy passes the real `filter-ctl policy check` laid out as the kubelet
//! mounts it (root-owned 0644 files behind `..data` symlinks). And the
//! capability set is enough: `filter-ctl run` started in a namespace lab
//! with only the `DaemonSet`'s capabilities (uid 0, bounding, permitted and
//! effective sets reduced by `setpriv`, `no_new_privs` as
//! `allowPrivilegeEscalation: false` sets it) loads, pins and attaches, an
//! edit under the same capabilities is served, and a blocked source is
//! dropped. Mirrors `deploy/kubernetes/`.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, binary},
    netns::{Lab, NetNs, UdpReceiver, count_from, is_root, udp_send, unique_id},
};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The capabilities the filter needs (see the `DaemonSet`'s comment and
/// `deploy/systemd/filter-ctl.service`), and no more.
const CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// `--state-dir`'s default (`filter_ctl::state::DEFAULT_STATE_DIR`).
const DEFAULT_STATE_DIR: &str = "/var/lib/filter-ctl";
/// The runtime dir, a fixed path (`filter_ctl::maps::pins::RUNTIME_ROOT`).
const RUNTIME_ROOT: &str = "/run/filter-ctl";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every `*.yaml` in `deploy/kubernetes/`, with the file
/// it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(manifests_dir())
        .expect("reading deploy/kubernetes/")
        .map(|entry| entry.expect("an entry of deploy/kubernetes/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes/");
    let mut docs = Vec::new();
    for file in files {
        let text =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
            if value.is_null() {
                continue; // an empty document (a trailing `---`)
            }
            assert!(
                value["apiVersion"].is_string() && value["kind"].is_string(),
                "{}: a manifest without apiVersion or kind",
                file.display()
            );
            docs.push((file.clone(), value));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn the_daemonset(docs: &[(PathBuf, Value)]) -> &Value {
    let sets = of_kind(docs, "DaemonSet");
    assert_eq!(
        sets.len(),
        1,
        "one DaemonSet expected in deploy/kubernetes/"
    );
    sets[0]
}

/// The filter-ctl container of the `DaemonSet` (the one running `run`).
fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("spec.template.spec.containers");
    let found: Vec<&Value> = containers
        .iter()
        .filter(|c| args(c).first().map(String::as_str) == Some("run"))
        .collect();
    assert_eq!(found.len(), 1, "one container running `filter-ctl run`");
    found[0]
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("args are strings").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value following `flag` in `args` (`--flag VALUE` or `--flag=VALUE`).
fn flag(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"].as_sequence()?.iter().find_map(|e| {
        (e["name"].as_str() == Some(name)).then(|| e["value"].as_str().map(str::to_owned))?
    })
}

/// The volume named `name` of the pod template.
fn volume<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("spec.template.spec.volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume named {name}"))
}

/// The mount of `container` under which `path` lies (the deepest one), and
/// the volume it mounts.
fn mount_of<'a>(ds: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("the container's volumeMounts");
    let mount = mounts
        .iter()
        .filter(|m| {
            let at = Path::new(m["mountPath"].as_str().expect("mountPath"));
            Path::new(path).starts_with(at)
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
        .unwrap_or_else(|| panic!("nothing mounted at or above {path}"));
    let name = mount["name"].as_str().expect("a mount's name");
    (mount, volume(ds, name))
}

#[test]
fn every_manifest_parses() {
    let docs = documents();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    assert!(kinds.contains("DaemonSet"), "kinds: {kinds:?}");
    assert!(kinds.contains("ConfigMap"), "kinds: {kinds:?}");
}

#[test]
fn daemonset_runs_on_the_host_network_with_only_the_capabilities_it_needs() {
    let docs = documents();
    let ds = the_daemonset(&docs);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_ne!(pod["hostPID"].as_bool(), Some(true), "no hostPID");
    let c = container(ds);
    let security = &c["securityContext"];
    assert_ne!(security["privileged"].as_bool(), Some(true), "privileged");
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().expect("a capability name"))
        .collect();
    assert_eq!(
        added,
        CAPABILITIES.iter().copied().collect(),
        "capabilities.add"
    );
    let dropped: Vec<&str> = security["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop")
        .iter()
        .map(|v| v.as_str().expect("a capability name"))
        .collect();
    assert_eq!(dropped, ["ALL"], "capabilities.drop");
    // Nothing else in the pod gets more: no other container, no init
    // container with capabilities of its own.
    assert!(pod["initContainers"].is_null(), "no init containers");
    assert_eq!(pod["containers"].as_sequence().map(Vec::len), Some(1));
    // A node agent: every node, tainted ones included.
    let tolerates_all = pod["tolerations"].as_sequence().is_some_and(|t| {
        t.iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null())
    });
    assert!(tolerates_all, "tolerations: operator Exists, any key");
}

#[test]
fn daemonset_keeps_pins_and_state_on_the_host() {
    let docs = documents();
    let ds = the_daemonset(&docs);
    let c = container(ds);

    let (mount, bpffs) = mount_of(ds, c, "/sys/fs/bpf/filter-ctl");
    assert_eq!(mount["mountPath"].as_str(), Some("/sys/fs/bpf"));
    assert_eq!(bpffs["hostPath"]["path"].as_str(), Some("/sys/fs/bpf"));

    let state_dir = flag(&args(c), "--state-dir")
        .or_else(|| env(c, "FILTER_CTL_STATE_DIR"))
        .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned());
    let (mount, state) = mount_of(ds, c, &state_dir);
    let host = state["hostPath"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("the state dir {state_dir} is not on a hostPath"));
    // A kubelet-made hostPath is 0755, which filter-ctl refuses as a state
    // dir: the state dir must be below the mount, created by filter-ctl.
    assert_ne!(
        mount["mountPath"].as_str(),
        Some(state_dir.as_str()),
        "the state dir must be a subdirectory of the hostPath mount"
    );
    assert!(
        host.starts_with(DEFAULT_STATE_DIR),
        "state on the host: {host}"
    );

    let (mount, run) = mount_of(ds, c, RUNTIME_ROOT);
    assert!(
        run["hostPath"]["path"].is_string(),
        "the runtime dir {RUNTIME_ROOT} is not on a hostPath"
    );
    assert_ne!(mount["mountPath"].as_str(), Some(RUNTIME_ROOT));
}

#[test]
fn daemonset_reads_the_policy_from_the_configmap() {
    let docs = documents();
    let ds = the_daemonset(&docs);
    let c = container(ds);
    let policy = flag(&args(c), "--policy").expect("run --policy");
    let (mount, volume) = mount_of(ds, c, &policy);
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "policy mount readOnly"
    );
    let name = volume["configMap"]["name"]
        .as_str()
        .expect("the policy comes from a ConfigMap");
    let relative = Path::new(&policy)
        .strip_prefix(mount["mountPath"].as_str().expect("mountPath"))
        .expect("the policy lies under its mount")
        .to_str()
        .expect("UTF-8")
        .to_owned();
    let key = volume["configMap"]["items"]
        .as_sequence()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["path"].as_str() == Some(relative.as_str()))
        })
        .map_or(relative.clone(), |i| {
            i["key"].as_str().expect("an item's key").to_owned()
        });
    let maps = of_kind(&docs, "ConfigMap");
    let map = maps
        .iter()
        .find(|m| m["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no ConfigMap named {name} in deploy/kubernetes/"));
    assert_eq!(
        ds["metadata"]["namespace"], map["metadata"]["namespace"],
        "the ConfigMap lives in the DaemonSet's namespace"
    );
    assert!(
        map["data"][key.as_str()]
            .as_str()
            .is_some_and(|t| !t.trim().is_empty()),
        "ConfigMap {name} has no data key {key}"
    );
}

#[test]
fn metrics_port_is_scraped_probed_and_not_loopback() {
    let docs = documents();
    let ds = the_daemonset(&docs);
    let c = container(ds);
    let addr = flag(&args(c), "--metrics-addr").expect("run --metrics-addr");
    let (host, port) = addr.rsplit_once(':').expect("--metrics-addr ADDR:PORT");
    let port: u16 = port.parse().expect("a port number");
    // With hostNetwork, loopback is the node's: Prometheus could not reach it.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().expect("an IP address");
    assert!(!ip.is_loopback(), "--metrics-addr {addr} is loopback-only");

    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str()),
        "prometheus.io/port (a string) is the --metrics-addr port"
    );
    if let Some(path) = annotations["prometheus.io/path"].as_str() {
        assert_eq!(path, "/metrics");
    }
    let ports = c["ports"].as_sequence().expect("the container's ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(u64::from(port))),
        "containerPort {port}"
    );
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/metrics"), "readiness path");
    let probe_port = &probe["port"];
    let by_number = probe_port.as_u64() == Some(u64::from(port));
    let by_name = probe_port.as_str().is_some_and(|name| {
        ports.iter().any(|p| {
            p["name"].as_str() == Some(name) && p["containerPort"].as_u64() == Some(u64::from(port))
        })
    });
    assert!(by_number || by_name, "readiness probe port {probe_port:?}");
}

#[test]
fn daemonset_rolls_out_node_by_node() {
    let docs = documents();
    let ds = the_daemonset(&docs);
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    let max = &strategy["rollingUpdate"]["maxUnavailable"];
    assert!(
        max.as_u64().is_some_and(|n| n >= 1) || max.as_str().is_some_and(|s| s.ends_with('%')),
        "maxUnavailable: {max:?}"
    );
    let resources = &container(ds)["resources"];
    assert!(resources["requests"].is_mapping(), "resources.requests");
    assert!(
        resources["limits"]["memory"].is_string(),
        "resources.limits.memory"
    );
}

/// A `ConfigMap` volume as the kubelet lays it out: the volume directory
/// (0777), a timestamped directory holding the files (root-owned, the
/// volume's `defaultMode`), `..data` a symlink to it, each key a symlink
/// into `..data`. Removed on drop.
struct ConfigMapVolume(PathBuf);

impl ConfigMapVolume {
    fn new(key: &str, text: &str, mode: u32) -> Self {
        let root = PathBuf::from(format!(
            "/tmp/ft-k8s-cm-{}-{}",
            std::process::id(),
            unique_id()
        ));
        let data = root.join("..2026_12_03_06_00_00.000000001");
        fs::create_dir_all(&data).expect("creating the volume directory");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).expect("chmod");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).expect("chmod");
        let file = data.join(key);
        fs::write(&file, text).expect("writing the policy");
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).expect("chmod");
        symlink(data.file_name().expect("a name"), root.join("..data")).expect("symlink");
        symlink(Path::new("..data").join(key), root.join(key)).expect("symlink");
        Self(root)
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn configmap_policy_passes_policy_check_as_mounted() {
    if !is_root() {
        eprintln!("skipped: needs root (the mounted files are root-owned, as the kubelet's are)");
        return;
    }
    let docs = documents();
    let ds = the_daemonset(&docs);
    let volume = volume(ds, "policy");
    let mode = volume["configMap"]["defaultMode"]
        .as_u64()
        .map_or(0o644, |m| u32::try_from(m).expect("a file mode"));
    let maps = of_kind(&docs, "ConfigMap");
    assert!(!maps.is_empty());
    for map in maps {
        let name = map["metadata"]["name"].as_str().unwrap_or("?");
        let data = map["data"].as_mapping().expect("ConfigMap data");
        for (key, text) in data {
            let key = key.as_str().expect("a data key");
            if Path::new(key).extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let mounted = ConfigMapVolume::new(key, text.as_str().expect("text data"), mode);
            let path = mounted.0.join(key);
            let out = Command::new(binary())
                .args(["policy", "check"])
                .arg(&path)
                .output()
                .expect("running filter-ctl policy check");
            assert!(
                out.status.success(),
                "ConfigMap {name} key {key}: `filter-ctl policy check` failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// How long `run` may take to load, pin and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const UDP_PORT: u16 = 5000;

/// `setpriv` arguments giving a uid-0 process exactly `caps` (Kubernetes
/// names, `NET_ADMIN`): the bounding set (what exec grants root), no
/// inheritable or ambient capabilities, `no_new_privs`.
fn setpriv_args(caps: &[&str]) -> Vec<String> {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    vec![
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
        "--".into(),
    ]
}

/// `filter-ctl ARGS` in `ns` with only `caps`, for `ctl`'s pin and state
/// directories.
fn reduced(ctl: &Ctl, ns: &NetNs, caps: &[&str], args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .arg("setpriv")
        .args(setpriv_args(caps))
        .arg(binary())
        .arg("--pin-dir")
        .arg(ctl.pin_dir())
        .arg("--state-dir")
        .arg(ctl.state_dir())
        .args(args)
        .env_remove("FILTER_CTL_PIN_DIR")
        .env_remove("FILTER_CTL_STATE_DIR");
    command
}

/// A `run` started here: terminated (SIGTERM, then SIGKILL after 5 s) on
/// drop, also on panic; its stderr kept in a file for the messages.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

#[test]
fn filter_ctl_runs_with_only_the_daemonsets_capabilities() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, BPF)");
        return;
    }
    let docs = documents();
    let ds = the_daemonset(&docs);
    let caps: Vec<&str> = container(ds)["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().expect("a capability name"))
        .collect();

    let lab = Lab::new("k8scaps");
    let ctl = Ctl::new("k8scaps");
    let log = PathBuf::from(format!(
        "/tmp/ft-k8scaps-{}-{}.log",
        std::process::id(),
        unique_id()
    ));
    let stderr = fs::File::create(&log).expect("creating the run log");
    let child = reduced(&ctl, &lab.dst, &caps, &["run", "--iface", &lab.dst_if])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting filter-ctl run under setpriv");
    let mut run = Running { child, log };

    // Loaded, pinned, attached: `status` (as full root) says so.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(status) = run.child.try_wait().expect("waiting for run") {
            panic!(
                "`filter-ctl run` with only {caps:?} exited ({status}):\n{}",
                run.log()
            );
        }
        // `status` fails until the pins exist.
        let out = ctl.cmd(&["status", "--json"]);
        let status: serde_json::Value = if out.status.success() {
            serde_json::from_slice(&out.stdout).unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        let attached = status["interfaces"].as_array().is_some_and(|list| {
            list.iter()
                .any(|i| i["name"] == lab.dst_if.as_str() && i["state"] == "attached")
        });
        if attached && status["controller_state"] == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`filter-ctl run` with only {caps:?} did not attach within {ATTACH_TIMEOUT:?}:\n{}",
            run.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.dst.ip(&["link", "show", &lab.dst_if]).contains("xdp"));
    assert!(
        ctl.pin_dir().exists(),
        "pins under {}",
        ctl.pin_dir().display()
    );

    // An edit with the same capabilities (`kubectl exec ... filter-ctl
    // block`), and the blocked source is dropped while another passes.
    let receiver = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    );
    let bad = lab.add_src_v4(0x31);
    let good = lab.add_src_v4(0x32);
    let out = reduced(&ctl, &lab.dst, &caps, &["block", &bad.to_string()])
        .output()
        .expect("running filter-ctl block under setpriv");
    assert!(
        out.status.success(),
        "`filter-ctl block` with only {caps:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (src, expected) in [(bad, 0), (good, 10)] {
        assert_eq!(
            udp_send(&lab.src, src, receiver.addr(), 10, Duration::from_millis(1)),
            10,
            "sending from {src}"
        );
        let arrived = count_from(
            &receiver.drain(Duration::from_millis(200), Duration::from_secs(3)),
            src,
        );
        assert_eq!(arrived, expected, "datagrams from {src} that arrived");
    }
    drop(run);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
