//! Every stage stops promptly when its cancellation token fires, and says truthfully whether
//! a retry can help: pushes (no tag moves), base fetches, inspect, docker load, downloads that
//! break off.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::net::{Registry, SlowProxy};
use common::*;
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Cancel `token` after `after`.
fn cancel_after(token: &CancellationToken, after: Duration) {
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        t.cancel();
    });
}

/// A server that accepts connections, reads the request and never answers.
fn silent_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

#[test]
fn a_cancelled_push_stops_promptly_and_moves_no_tag() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big"), random_bytes(6 << 20, 7)).unwrap();
    let layout = t.path().join("layout");
    pack(&dir, &layout, &["--tag", "t", "--compression", "none"]);
    let reg = Registry::start();
    // 30 ms per 64 KiB: the 6 MiB layer takes about three seconds to upload.
    let slow = SlowProxy::start(&reg.addr, Duration::from_millis(30));
    let l = kiln::store::OciLayout::open(&layout).unwrap();
    let desc = kiln::store::ContentStore::resolve(&l, "t")
        .unwrap()
        .unwrap();
    let rt = runtime();
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(400));
    let started = Instant::now();
    let result = rt.block_on(async {
        let client = kiln::registry::RegistryClient::new(&slow.addr, &Default::default()).unwrap();
        let mut pusher = kiln::registry::Pusher::new(&client, &l, "cancel/me");
        pusher.cancel = cancel.clone();
        pusher.push(&desc, &["t".to_owned()]).await
    });
    let took = started.elapsed();
    assert!(
        matches!(result, Err(kiln::registry::PushError::Cancelled)),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(2), "cancelling took {took:?}");
    require("skopeo");
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/cancel/me:t", reg.addr))
        .checked_output()
        .unwrap();
    assert!(!out.status.success(), "a tag moved after a cancelled push");
}

#[test]
fn base_fetches_and_inspect_stop_promptly_when_cancelled() {
    let rt = runtime();
    let t = tempfile::tempdir().unwrap();
    let layout = kiln::store::OciLayout::open_or_create(t.path().join("l")).unwrap();
    // A registry that never answers.
    let silent = silent_server();
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(300));
    let started = Instant::now();
    let r = rt.block_on(kiln::registry::base::fetch(
        &format!("{silent}/base/image:1"),
        &kiln::image::Platform::host(),
        &layout,
        &Default::default(),
        &cancel,
    ));
    assert!(
        matches!(r, Err(kiln::registry::PushError::Cancelled)),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A closed port: retried for minutes unless cancelled.
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(300));
    let started = Instant::now();
    let r = rt.block_on(kiln::inspect::inspect(
        &"127.0.0.1:1/nothing:here".parse().unwrap(),
        &Default::default(),
        &[],
        &cancel,
    ));
    assert!(
        matches!(r, Err(kiln::registry::PushError::Cancelled)),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_download_that_breaks_off_is_retryable_and_stores_nothing() {
    // Promises 100000 bytes, sends 10, hangs up: every time.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789");
            let _ = c.flush();
        }
    });
    let t = tempfile::tempdir().unwrap();
    let layout = kiln::store::OciLayout::open_or_create(t.path().join("l")).unwrap();
    let rt = runtime();
    let digest = kiln::Digest::of(b"the real blob");
    let r = rt.block_on(async {
        let client = kiln::registry::RegistryClient::new(&addr, &Default::default()).unwrap();
        let repo = kiln::registry::Repository::new(&client, "some/repo");
        repo.fetch_blob(&layout, &digest, 100_000).await
    });
    let e = r.expect_err("a broken download cannot succeed");
    assert!(
        e.is_retryable(),
        "a dropped connection is worth a retry: {e}"
    );
    assert!(e.to_string().contains("broke off"), "{e}");
    assert!(!layout.has_blob(&digest));
    let tmp: Vec<_> = std::fs::read_dir(layout.scratch().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(tmp.is_empty(), "partial download left behind: {tmp:?}");
}

#[test]
fn a_cancelled_docker_load_loads_nothing() {
    require_docker();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), b"load me").unwrap();
    let layout_dir = t.path().join("layout");
    let digest = pack(&dir, &layout_dir, &["--tag", "t"]);
    let layout = kiln::store::OciLayout::open(&layout_dir).unwrap();
    let archive = t.path().join("image.tar");
    let tag = format!("kiln-test/cancelled-load:{}", std::process::id());
    kiln::image::write_docker_archive(
        &layout,
        &digest.parse().unwrap(),
        &tag,
        std::fs::File::create(&archive).unwrap(),
    )
    .unwrap();
    let rt = runtime();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = rt.block_on(async {
        let runner = kiln::runner::connect().await.unwrap();
        runner.load_archive(&archive, &cancel).await
    });
    assert!(
        matches!(r, Err(kiln::runner::BuildError::Cancelled)),
        "{r:?}"
    );
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .checked_output()
        .unwrap();
    assert!(!inspect.status.success(), "the image was loaded anyway");
}
