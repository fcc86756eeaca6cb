//! A real PostgreSQL server for tests, from Debian's `postgresql` package: `initdb` in a temp
//! dir as the `postgres` user, listening on a free loopback port, with a password-protected
//! role `kiln` (scram-sha-256 over TCP). Each test takes fresh databases from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::net::free_port;
use super::run_ok;

/// The `kiln` role's password (also scanned for in every log, like the other test secrets).
pub const DB_PASSWORD: &str = "pg-test-password-7fQz2";

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    databases: AtomicUsize,
}

/// The newest PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL is required for this test: run .ci/run or apt-get install postgresql")
}

/// `runuser -u postgres -- <bin>/<tool> args...`
fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

impl Postgres {
    /// `initdb`, start, and create the role `kiln` with [`DB_PASSWORD`].
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres {
            port: free_port(),
            dir,
            bin,
            databases: AtomicUsize::new(0),
        };
        std::os::unix::fs::chown(pg.dir.path(), Some(uid("postgres")), None).unwrap();
        std::fs::create_dir(pg.socket_dir()).unwrap();
        std::os::unix::fs::chown(pg.socket_dir(), Some(uid("postgres")), None).unwrap();
        run_ok(
            as_postgres(&pg.bin, "initdb")
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .args(["-E", "UTF8", "--no-sync", "-D"])
                .arg(pg.data_dir()),
        );
        pg.start_server();
        pg.psql(&format!(
            "CREATE ROLE kiln LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'"
        ));
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn start_server(&self) {
        run_ok(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    self.port,
                    self.socket_dir().display()
                ))
                .arg("start"),
        );
    }

    /// Stop the server (fast: connections are closed), for a database outage.
    pub fn stop(&self) {
        run_ok(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "fast", "stop"]),
        );
    }

    /// Start it again after [`Postgres::stop`].
    pub fn restart(&self) {
        self.start_server();
    }

    /// Run SQL as the superuser over the local socket.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Run SQL as the superuser in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = run_ok(
            as_postgres(&self.bin, "psql")
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
                .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh database owned by `kiln`; returns its URL (without the password).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("kiln_{n}");
        self.psql(&format!("CREATE DATABASE {name} OWNER kiln"));
        format!("postgres://kiln@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

fn uid(user: &str) -> u32 {
    let out = run_ok(Command::new("id").args(["-u", user]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
