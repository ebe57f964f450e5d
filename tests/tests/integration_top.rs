//! `filter-ctl top` in a real terminal (tmux): it shows the source being
//! dropped, the reasons' counters, and quits on `q`. Needs root and tmux
//! (installed by `cargo xtask setup`).

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, binary},
    netns::{Lab, UdpReceiver, skip_unless_root, udp_send, unique_id},
};

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self {
            socket: format!("ft-top-{}-{}", std::process::id(), unique_id()),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_flooding_source_and_quits_on_q() {
    if skip_unless_root("top_shows_the_flooding_source_and_quits_on_q") {
        return;
    }
    let lab = Lab::new("top");
    let ctl = Ctl::new("top");
    let mut controller = ctl.run_background_with(
        &lab.dst,
        &[&lab.dst_if],
        &["--sample", "blocklist=1", "--drop-log-interval", "60s"],
    );
    let src = IpAddr::V4(lab.src_v4());
    ctl.ok(&["block", &src.to_string()]);
    let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), 5000));
    assert_eq!(
        udp_send(&lab.src, src, receiver.addr(), 300, Duration::ZERO),
        300
    );

    let tmux = Tmux::new();
    let command = format!(
        "env -u FILTER_CTL_PIN_DIR {} --pin-dir {} top",
        binary().display(),
        ctl.pin_dir().display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "40",
        &command,
    ]);
    assert!(out.status.success(), "starting tmux: {out:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let screen = loop {
        let screen = tmux.screen();
        if screen.contains(&src.to_string()) && screen.contains("~300") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "top did not show {src} with ~300 drops within 15 s:\n{screen}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(screen.contains("blocklist"), "{screen}");
    assert!(screen.contains("reasons"), "{screen}");
    assert!(screen.contains("q quits"), "{screen}");

    let _ = tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "top did not quit on q:\n{}",
            tmux.screen()
        );
        thread::sleep(Duration::from_millis(100));
    }
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
