//! Real network peers for registry tests: the CNCF distribution registry on a free loopback
//! port (plain, or TLS with htpasswd), and small in-test HTTP servers where the behaviour to
//! test cannot be had from a real registry (injected faults, nonsense answers).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{require, run_ok};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

/// TLS material made with openssl: a CA and a server certificate for 127.0.0.1.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// The setup the Docker registry documentation shows: one self-signed certificate for
    /// 127.0.0.1 (whose basic constraints say CA:TRUE), used as the server's certificate.
    pub fn self_signed(dir: &Path) -> Tls {
        require("openssl");
        run_ok(
            Command::new("openssl")
                .current_dir(dir)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "self.key",
                    "-out",
                    "self.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .stdin(Stdio::null()),
        );
        Tls {
            ca: dir.join("self.crt"),
            cert: dir.join("self.crt"),
            key: dir.join("self.key"),
        }
    }

    pub fn make(dir: &Path) -> Tls {
        require("openssl");
        let o = |args: &[&str]| {
            run_ok(
                Command::new("openssl")
                    .current_dir(dir)
                    .args(args)
                    .stdin(Stdio::null()),
            )
        };
        o(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kiln-test-ca",
        ]);
        o(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        o(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Tls {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }
}

impl Registry {
    /// A plain-HTTP registry on a free loopback port.
    pub fn start() -> Registry {
        Registry::start_with(|_, _| String::new())
    }

    /// `extra(dir, addr)` returns more YAML for the `http:` section's siblings (auth, ...) and
    /// may write files into `dir`.
    pub fn start_with(extra: impl FnOnce(&Path, &str) -> String) -> Registry {
        Registry::start_full(None, extra)
    }

    pub fn start_full(tls: Option<&Tls>, extra: impl FnOnce(&Path, &str) -> String) -> Registry {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let more = extra(dir.path(), &addr);
        let tls_yaml = tls.map_or(String::new(), |t| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            )
        });
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_yaml}{more}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr, dir }
    }

    /// Everything the registry logged (it logs every request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Docker config directory with credentials for `registry`.
pub fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let d = dir.join("docker-config");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("config.json"),
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    d
}

/// Faults a [`FaultProxy`] injected.
#[derive(Default)]
pub struct FaultStats {
    pub unavailable: AtomicUsize,
    pub too_many: AtomicUsize,
    pub resets: AtomicUsize,
    pub slow: AtomicUsize,
    pub truncated: AtomicUsize,
    pub connections: AtomicUsize,
    /// Request bytes forwarded so far, over all connections.
    pub forwarded: AtomicUsize,
}

/// What a [`FaultProxy`] does, decided only by a new connection's number and by how many
/// request bytes it forwarded in all, so that every client meets the same faults.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// New connections are numbered from 0; their number modulo `cycle` picks their fault.
    pub cycle: usize,
    /// Answered `503 Service Unavailable` and closed.
    pub unavailable: Vec<usize>,
    /// Answered `429 Too Many Requests` with `Retry-After: 1` and closed.
    pub too_many: Vec<usize>,
    /// Forwarded, but the first response waits `slow_by` before it starts.
    pub slow: Vec<usize>,
    pub slow_by: Duration,
    /// Forwarded, but the first response is cut short (half its body, or half its head when
    /// it has no body) and the connection reset.
    pub truncated: Vec<usize>,
    /// The connection carrying the forwarded request bytes (all connections together) past
    /// each of these marks is reset on the spot, mid-upload.
    pub resets_at: Vec<usize>,
}

impl Schedule {
    /// Some 503s and 429s, and two resets (past 6 MiB and past 22 MiB).
    pub fn mild() -> Schedule {
        Schedule {
            cycle: 6,
            unavailable: vec![1],
            too_many: vec![3],
            slow: vec![],
            slow_by: Duration::ZERO,
            truncated: vec![],
            resets_at: vec![6 << 20, 22 << 20],
        }
    }

    /// Of every 8 new connections, one 503, one 429, one slow (2 s) and one truncated; and a
    /// reset every 8 MiB of request bytes, 12 times: a client that starts an upload over after
    /// a reset needs more than 12 tries for a blob over 8 MiB.
    pub fn harsh() -> Schedule {
        Schedule {
            cycle: 8,
            unavailable: vec![1],
            too_many: vec![3],
            slow: vec![5],
            slow_by: Duration::from_secs(2),
            truncated: vec![6],
            resets_at: (1..=12).map(|i| i * (8 << 20)).collect(),
        }
    }
}

/// A TCP proxy in front of a registry that breaks things on a [`Schedule`].
pub struct FaultProxy {
    pub addr: String,
    pub stats: Arc<FaultStats>,
}

/// A TCP proxy that only slows request bytes down (a slow link), to make a push last.
pub struct SlowProxy {
    pub addr: String,
}

impl SlowProxy {
    pub fn start(upstream: &str, per_64k: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = upstream.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let up = up.clone();
                std::thread::spawn(move || {
                    let Ok(mut s) = TcpStream::connect(&up) else {
                        return;
                    };
                    let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                    let back = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(per_64k);
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = back.join();
                });
            }
        });
        SlowProxy { addr }
    }
}

impl FaultProxy {
    /// A proxy on the [`Schedule::mild`] schedule.
    pub fn start(upstream: &str) -> FaultProxy {
        FaultProxy::with_schedule(upstream, Schedule::mild())
    }

    pub fn with_schedule(upstream: &str, schedule: Schedule) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(FaultStats::default());
        let (st, up) = (stats.clone(), upstream.to_owned());
        let schedule = Arc::new(schedule);
        std::thread::spawn(move || {
            for (k, conn) in listener.incoming().enumerate() {
                let Ok(client) = conn else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (st, up, sc) = (st.clone(), up.clone(), schedule.clone());
                std::thread::spawn(move || {
                    let r = k % sc.cycle;
                    if sc.unavailable.contains(&r) {
                        canned(client, "503 Service Unavailable", "", &st.unavailable)
                    } else if sc.too_many.contains(&r) {
                        canned(
                            client,
                            "429 Too Many Requests",
                            "Retry-After: 1\r\n",
                            &st.too_many,
                        )
                    } else {
                        let answer = if sc.slow.contains(&r) {
                            Answer::Slow(sc.slow_by)
                        } else if sc.truncated.contains(&r) {
                            Answer::Truncated
                        } else {
                            Answer::Whole
                        };
                        pipe(client, &up, &st, &sc.resets_at, answer)
                    }
                });
            }
        });
        FaultProxy { addr, stats }
    }
}

/// How a piped connection's first response is passed back.
#[derive(Clone, Copy)]
enum Answer {
    Whole,
    Slow(Duration),
    Truncated,
}

/// Pass the server's answers back to the client, the first one as `answer` says.
fn answer_back(mut server: TcpStream, mut client: TcpStream, answer: Answer, stats: &FaultStats) {
    match answer {
        Answer::Whole => {}
        Answer::Slow(by) => {
            let mut first = [0u8; 1];
            if server.read_exact(&mut first).is_err() {
                return;
            }
            stats.slow.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(by);
            if client.write_all(&first).is_err() {
                return;
            }
        }
        Answer::Truncated => {
            let head = read_head(&mut server);
            if head.is_empty() {
                return;
            }
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if length >= 2 {
                let _ = client.write_all(&head);
                let _ = std::io::copy(&mut (&mut server).take(length / 2), &mut client);
            } else {
                let _ = client.write_all(&head[..head.len() / 2]);
            }
            stats.truncated.fetch_add(1, Ordering::SeqCst);
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
}

fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
        // A TLS ClientHello (0x16) on this plain-HTTP server: answer as real HTTP servers do,
        // in plain HTTP, which is how a client learns the server does not speak TLS.
        if head == [0x16] {
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
            let _ = s.flush();
            return Vec::new();
        }
    }
    head
}

fn canned(mut client: TcpStream, status: &str, extra: &str, counter: &AtomicUsize) {
    let _ = read_head(&mut client);
    counter.fetch_add(1, Ordering::SeqCst);
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = client.flush();
}

fn pipe(
    client: TcpStream,
    upstream: &str,
    stats: &Arc<FaultStats>,
    resets_at: &[usize],
    answer: Answer,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let st = stats.clone();
    let back = std::thread::spawn(move || answer_back(s2, c2, answer, &st));
    let (mut c, mut s) = (client, server);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).is_err() {
            break;
        }
        let before = stats.forwarded.fetch_add(n, Ordering::SeqCst);
        if resets_at.iter().any(|&at| before < at && before + n >= at) {
            stats.resets.fetch_add(1, Ordering::SeqCst);
            // An abrupt close (RST), as a dying proxy or a dropped link gives.
            // Shut both sockets down first: the reader thread holds duplicates of them.
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
            return;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

/// A response from a [`FakeServer`] handler.
pub struct Reply {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: &'static str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.body = b.into();
        self
    }
}

/// A request as a [`FakeServer`] handler sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server: one request per connection, answered by `handler`.
pub struct FakeServer {
    pub addr: String,
}

impl FakeServer {
    /// Answer by method and path only.
    pub fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_full(move |r: &Request| handler(&r.method, &r.path))
    }

    pub fn start_full(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let head = String::from_utf8_lossy(&read_head(&mut s)).into_owned();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split_whitespace();
                    let (method, path) = (
                        first.next().unwrap_or("").to_owned(),
                        first.next().unwrap_or("").to_owned(),
                    );
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .collect();
                    let req = Request {
                        method,
                        path,
                        headers,
                    };
                    // Drain a request body so the client sees our answer, not a reset.
                    let len: u64 = req
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let _ = std::io::copy(&mut (&mut s).take(len), &mut std::io::sink());
                    let r = handler(&req);
                    let mut out = format!(
                        "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        r.status,
                        r.body.len()
                    );
                    for (k, v) in &r.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let _ = s.write_all(out.as_bytes());
                    let _ = s.write_all(&r.body);
                    let _ = s.flush();
                });
            }
        });
        FakeServer { addr }
    }
}

/// A TCP proxy whose open connections can all be cut at once (a network blip between a
/// browser and the daemon); new connections go through as before.
pub struct CutProxy {
    pub addr: String,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    pub connections: Arc<AtomicUsize>,
}

impl CutProxy {
    pub fn start(upstream: &str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (up, o, n) = (upstream.to_owned(), open.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let Ok(mut s) = TcpStream::connect(&up) else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                {
                    let mut o = o.lock().unwrap();
                    o.push(c.try_clone().unwrap());
                    o.push(s.try_clone().unwrap());
                }
                let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CutProxy {
            addr,
            open,
            connections,
        }
    }

    /// Cut every connection open now; returns how many sockets were shut.
    pub fn cut(&self) -> usize {
        let mut o = self.open.lock().unwrap();
        let n = o.len();
        for s in o.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        n
    }
}
