//! A registry that misbehaves on a fixed schedule ([`Schedule::harsh`]): 503s, 429s with
//! `Retry-After`, slow answers, truncated answers and a connection reset every 8 MiB of
//! upload. `docker push` and `skopeo copy --retry-times 5` are each run against a fresh
//! registry behind the same schedule and fail; `kiln push` completes. An independent client
//! then reads every blob back, and a watcher polling the registry behind the proxy checks,
//! all along, that no tag ever points at an image with a missing blob.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::daemon::http;
use common::net::{FaultProxy, FaultStats, Registry, Schedule};
use common::*;

const REPO: &str = "fault/app";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// What the watcher saw: tag observations, and the ones that pointed at something incomplete.
#[derive(Default, Debug)]
struct Watch {
    polls: usize,
    tags_seen: usize,
    blobs_checked: usize,
    incomplete: Vec<String>,
}

/// The digests a manifest (or, through its children, an index) needs present.
fn needs(reg: &str, manifest: &serde_json::Value, out: &mut Vec<String>) -> Result<(), String> {
    if let Some(children) = manifest["manifests"].as_array() {
        for c in children {
            let d = c["digest"].as_str().ok_or("a child without a digest")?;
            let (st, body) = http(
                "GET",
                &format!("http://{reg}/v2/{REPO}/manifests/{d}"),
                &[("Accept", ACCEPT)],
                b"",
            );
            if st != 200 {
                return Err(format!("child manifest {d}: HTTP {st}"));
            }
            let child = serde_json::from_str(&body).map_err(|e| format!("child {d}: {e}"))?;
            needs(reg, &child, out)?;
        }
        return Ok(());
    }
    if let Some(d) = manifest["config"]["digest"].as_str() {
        out.push(d.to_owned());
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        out.push(
            l["digest"]
                .as_str()
                .ok_or("a layer without a digest")?
                .to_owned(),
        );
    }
    Ok(())
}

/// Poll the registry itself (not through the proxy) until `stop`: every tag's manifest, its
/// children and every blob they name must be there.
fn watch(reg: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Watch> {
    std::thread::spawn(move || {
        let mut w = Watch::default();
        while !stop.load(Ordering::SeqCst) {
            w.polls += 1;
            let (st, body) = http(
                "GET",
                &format!("http://{reg}/v2/{REPO}/tags/list"),
                &[],
                b"",
            );
            let tags: Vec<String> = if st == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                serde_json::from_value(v["tags"].clone()).unwrap_or_default()
            } else {
                Vec::new()
            };
            for tag in tags {
                w.tags_seen += 1;
                // A tag written again (a client's retried PUT) is briefly unreadable: the
                // registry's filesystem driver rewrites the tag's link file in place, so a
                // reader can meet it empty and answer 404 (distribution/distribution#4489:
                // empty link files under the filesystem driver). That is the registry between two
                // writes of the same tag, not a tag pointing at something incomplete: read
                // it again shortly; only a tag that stays unreadable counts.
                let get = || {
                    http(
                        "GET",
                        &format!("http://{reg}/v2/{REPO}/manifests/{tag}"),
                        &[("Accept", ACCEPT)],
                        b"",
                    )
                };
                let (mut st, mut body) = get();
                for _ in 0..5 {
                    if st != 404 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    (st, body) = get();
                }
                let mut blobs = Vec::new();
                let checked = if st == 200 {
                    serde_json::from_str(&body)
                        .map_err(|e| e.to_string())
                        .and_then(|m| needs(&reg, &m, &mut blobs))
                } else {
                    Err(format!("HTTP {st}"))
                };
                if let Err(e) = checked {
                    w.incomplete.push(format!("tag {tag}: {e}"));
                }
                for b in blobs {
                    w.blobs_checked += 1;
                    let (st, _) = http(
                        "HEAD",
                        &format!("http://{reg}/v2/{REPO}/blobs/{b}"),
                        &[],
                        b"",
                    );
                    if st != 200 {
                        w.incomplete
                            .push(format!("tag {tag}: blob {b} is HTTP {st}"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    })
}

/// A fresh registry behind a proxy on the harsh schedule; runs `client` against the proxy's
/// address while the watcher runs. Returns the registry, the command's output, how long it
/// took, what the proxy injected and what the watcher saw.
fn under_faults(
    client: impl FnOnce(&str) -> std::process::Output,
) -> (
    Registry,
    std::process::Output,
    Duration,
    Arc<FaultStats>,
    Watch,
) {
    let reg = Registry::start();
    let proxy = FaultProxy::with_schedule(&reg.addr, Schedule::harsh());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(reg.addr.clone(), stop.clone());
    let started = Instant::now();
    let out = client(&proxy.addr);
    let took = started.elapsed();
    // One more round of checks once the client is done.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let w = watcher.join().unwrap();
    (reg, out, took, proxy.stats.clone(), w)
}

fn summary(
    who: &str,
    out: &std::process::Output,
    took: Duration,
    s: &FaultStats,
    w: &Watch,
) -> String {
    let l = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::SeqCst);
    format!(
        "{who}: {} in {took:.1?}; injected {} x 503, {} x 429, {} slow, {} truncated, {} resets over {} connections, {} MiB forwarded; watcher: {} polls, {} tag views, {} blob checks, {} incomplete",
        if out.status.success() {
            "succeeded"
        } else {
            "failed"
        },
        l(&s.unavailable),
        l(&s.too_many),
        l(&s.slow),
        l(&s.truncated),
        l(&s.resets),
        l(&s.connections),
        l(&s.forwarded) >> 20,
        w.polls,
        w.tags_seen,
        w.blobs_checked,
        w.incomplete.len()
    )
}

#[test]
fn under_a_fault_schedule_that_defeats_docker_and_skopeo_kiln_pushes_a_complete_image() {
    require("skopeo");
    require_docker();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible: a 40 MiB layer, which a client starting over after each reset cannot
    // get through 12 resets placed every 8 MiB.
    let big = random_bytes(40 << 20, 0x5eed_fa17);
    std::fs::write(src.join("random.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let layout = t.path().join("l");
    let digest = pack(
        &src,
        &layout,
        &["--tag", "app", "--source-date-epoch", "1700000000"],
    );
    let source = format!("oci:{}:app", layout.display());

    // docker push, from the engine's own store.
    let local = format!("kiln-faults/app:{}", std::process::id());
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &source,
        &format!("docker-daemon:{local}"),
    ]));
    let mut docker_tags = vec![local.clone()];
    let (_r, out, took, stats, w) = under_faults(|addr| {
        let remote = format!("{addr}/{REPO}:v1");
        run_ok(Command::new("docker").args(["tag", &local, &remote]));
        docker_tags.push(remote.clone());
        Command::new("docker")
            .args(["push", &remote])
            .checked_output()
            .unwrap()
    });
    let docker = summary("docker push", &out, took, &stats, &w);
    eprintln!("{docker}\n{}", String::from_utf8_lossy(&out.stderr));
    for tag in &docker_tags {
        let _ = Command::new("docker").args(["rmi", tag]).output();
    }
    assert!(!out.status.success(), "docker push got through: {docker}");
    assert!(w.incomplete.is_empty(), "{:?}", w.incomplete);

    // skopeo, with its own retries.
    let (_r, out, took, stats, w) = under_faults(|addr| {
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--retry-times",
                "5",
                "--dest-tls-verify=false",
            ])
            .arg(&source)
            .arg(format!("docker://{addr}/{REPO}:v1"))
            .checked_output()
            .unwrap()
    });
    let skopeo = summary("skopeo copy --retry-times 5", &out, took, &stats, &w);
    eprintln!("{skopeo}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "skopeo got through: {skopeo}");
    assert!(w.incomplete.is_empty(), "{:?}", w.incomplete);

    // kiln, at its defaults.
    let (reg, out, took, stats, w) = under_faults(|addr| {
        kiln()
            .arg("push")
            .arg(format!("{}:app", layout.display()))
            .arg(format!("{addr}/{REPO}:v1"))
            .checked_output()
            .unwrap()
    });
    let kiln_run = summary("kiln push", &out, took, &stats, &w);
    eprintln!("{kiln_run}");
    assert!(
        out.status.success(),
        "{kiln_run}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let l = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::SeqCst);
    assert!(
        l(&stats.unavailable) >= 1
            && l(&stats.too_many) >= 1
            && l(&stats.slow) >= 1
            && l(&stats.truncated) >= 1
            && l(&stats.resets) >= 1,
        "every kind of fault met kiln: {kiln_run}"
    );
    assert!(w.incomplete.is_empty(), "{:?}", w.incomplete);
    assert!(
        w.tags_seen >= 1,
        "the watcher never saw the tag: {kiln_run}"
    );

    // Straight from the registry, an independent client reads and verifies every blob.
    let copy = t.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/{REPO}:v1", reg.addr))
            .arg(format!("oci:{}:v1", copy.display())),
    );
    validate(&copy);
    assert_eq!(layer_files(&copy, "v1")["random.bin"], big);
}
