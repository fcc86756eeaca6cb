//! Running git: a clean environment, a deadline, and cancellation that kills the process.
//!
//! Every git kiln runs goes through [`Git`]. It never inherits the caller's `GIT_*` variables
//! (a `GIT_DIR` or `GIT_INDEX_FILE` left by a hook would point it at another repository), never
//! prompts, speaks C-locale English, and runs in a process group of its own, so a timeout or a
//! cancellation kills git and every helper it started (`git-remote-https`, `git-upload-pack`).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::SourceError;

/// Local commands (rev-parse, ls-tree, cat-file on a local repository).
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Commands that cross the network (fetch).
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(1800);

/// A git invocation being prepared.
pub struct Git {
    dir: PathBuf,
    args: Vec<OsString>,
    /// Extra environment (for example a token's `http.extraHeader` through
    /// `GIT_CONFIG_COUNT`): never shown in errors or logs.
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

const NOT_KILLED: u8 = 0;
const KILLED_CANCEL: u8 = 1;
const KILLED_TIMEOUT: u8 = 2;

impl Git {
    /// `git -C dir ARGS...`.
    pub fn new<I, S>(dir: &Path, args: I) -> Git
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Git {
            dir: dir.to_owned(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            timeout: LOCAL_TIMEOUT,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Git {
        self.timeout = t;
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Git {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The arguments as shown in errors.
    pub fn shown(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new("git");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GIT_") {
                c.env_remove(&k);
            }
        }
        c.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            // Never run the user's hooks, pagers or fsmonitor from kiln.
            .env("GIT_PAGER", "cat")
            .arg("-c")
            .arg("core.fsmonitor=false")
            .arg("-C")
            .arg(&self.dir)
            .args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        // Its own process group: a kill reaches the helpers git starts.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c
    }

    fn failed(&self, message: String, retryable: bool) -> SourceError {
        SourceError::Git {
            dir: self.dir.clone(),
            args: self.shown(),
            message,
            retryable,
        }
    }

    fn spawn_error(&self, e: std::io::Error) -> SourceError {
        if e.kind() == std::io::ErrorKind::NotFound {
            SourceError::GitMissing
        } else {
            self.failed(format!("cannot start git: {e}"), true)
        }
    }

    /// Run to completion; stdout on success (exit 0), else an error carrying stderr.
    /// `retryable` says whether a non-zero exit could go away on its own (network commands).
    pub fn output(
        &self,
        cancel: &CancellationToken,
        retryable: bool,
    ) -> Result<Vec<u8>, SourceError> {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let proc = Process::watch(child, cancel, self.timeout);
        let err_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.by_ref().take(64 * 1024).read_to_end(&mut v);
                // Drain the rest so git never blocks on a full pipe.
                let _ = std::io::copy(&mut e, &mut std::io::sink());
            }
            v
        });
        let mut out = Vec::new();
        if let Some(mut o) = stdout {
            let _ = o.read_to_end(&mut out);
        }
        let err = err_reader.join().unwrap_or_default();
        let (status, killed) = proc.wait();
        self.check(status, killed, &err, retryable)?;
        Ok(out)
    }

    /// Run to completion and return stdout as trimmed text.
    pub fn text(&self, cancel: &CancellationToken) -> Result<String, SourceError> {
        let out = self.output(cancel, false)?;
        Ok(String::from_utf8_lossy(&out)
            .trim_end_matches('\n')
            .to_owned())
    }

    /// Start git with piped stdin and stdout for a streaming conversation (`cat-file --batch`);
    /// it is killed on cancellation, at the deadline, or when the handle is dropped.
    pub fn spawn_piped(&self, cancel: &CancellationToken) -> Result<Piped, SourceError> {
        let mut cmd = self.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        Ok(Piped {
            stdin,
            stdout,
            proc: Some(Process::watch(child, cancel, self.timeout)),
        })
    }

    fn check(
        &self,
        status: std::io::Result<ExitStatus>,
        killed: u8,
        stderr: &[u8],
        retryable: bool,
    ) -> Result<(), SourceError> {
        match killed {
            KILLED_CANCEL => return Err(SourceError::Cancelled),
            KILLED_TIMEOUT => {
                return Err(SourceError::GitTimeout {
                    args: self.shown(),
                    after: self.timeout,
                });
            }
            _ => {}
        }
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => {
                let msg = String::from_utf8_lossy(stderr).trim().to_owned();
                let msg = if msg.is_empty() { s.to_string() } else { msg };
                Err(self.failed(msg, retryable))
            }
            Err(e) => Err(self.failed(format!("waiting for git: {e}"), true)),
        }
    }
}

/// A running git with its pipes; see [`Git::spawn_piped`].
pub struct Piped {
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    proc: Option<Process>,
}

impl Piped {
    /// Close the pipes, stop git and report how it ended: `Cancelled` or a timeout if the
    /// watchdog killed it.
    pub fn finish(mut self) -> Result<(), SourceError> {
        self.stdin.take();
        self.stdout.take();
        let Some(proc) = self.proc.take() else {
            return Ok(());
        };
        proc.kill();
        let timeout = proc.timeout;
        let (_, killed) = proc.wait();
        match killed {
            KILLED_CANCEL => Err(SourceError::Cancelled),
            KILLED_TIMEOUT => Err(SourceError::GitTimeout {
                args: "cat-file --batch".into(),
                after: timeout,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the watchdog killed git (cancellation or deadline), to tell a broken pipe from
    /// a stop that was asked for.
    pub fn interrupted(&self) -> Option<SourceError> {
        let p = self.proc.as_ref()?;
        match p.killed.load(Ordering::SeqCst) {
            KILLED_CANCEL => Some(SourceError::Cancelled),
            KILLED_TIMEOUT => Some(SourceError::GitTimeout {
                args: "cat-file --batch".into(),
                after: p.timeout,
            }),
            _ => None,
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
            let _ = p.wait();
        }
    }
}

/// A child process watched by a thread that kills its process group on cancellation or at
/// the deadline.
struct Process {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicU8>,
    /// Dropped (or sent on) when the child is done: the watcher stops at once, not at its
    /// next look at the token (a git call of a few milliseconds does not wait for it).
    stop: Option<std::sync::mpsc::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
    timeout: Duration,
}

/// How often the watcher looks at the cancellation token.
const WATCH: Duration = Duration::from_millis(20);

/// Kill the child's process group, unless the child was already reaped (then its pid, and so
/// its group id, may belong to someone else).
fn kill_group(child: &Mutex<Child>) {
    let mut c = crate::sync::lock(child);
    if matches!(c.try_wait(), Ok(None)) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads; the
        // child is not reaped (try_wait said so while we hold the lock), so the id is its own.
        unsafe {
            libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = c.kill();
    }
}

impl Process {
    fn watch(child: Child, cancel: &CancellationToken, timeout: Duration) -> Process {
        let child = Arc::new(Mutex::new(child));
        let killed = Arc::new(AtomicU8::new(NOT_KILLED));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let deadline = Instant::now() + timeout;
        let watcher = {
            let (child, killed, cancel) = (child.clone(), killed.clone(), cancel.clone());
            std::thread::spawn(move || {
                loop {
                    let why = if cancel.is_cancelled() {
                        KILLED_CANCEL
                    } else if Instant::now() >= deadline {
                        KILLED_TIMEOUT
                    } else {
                        match stopped.recv_timeout(WATCH) {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                            // Done, or the handle is gone.
                            _ => return,
                        }
                    };
                    killed.store(why, Ordering::SeqCst);
                    kill_group(&child);
                    return;
                }
            })
        };
        Process {
            child,
            killed,
            stop: Some(stop),
            watcher: Some(watcher),
            timeout,
        }
    }

    fn kill(&self) {
        kill_group(&self.child);
    }

    /// Wait for the child (polling, so the watcher can take the lock to kill it).
    fn wait(mut self) -> (std::io::Result<ExitStatus>, u8) {
        let mut pause = Duration::from_millis(1);
        let status = loop {
            let r = crate::sync::lock(&self.child).try_wait();
            match r {
                Ok(Some(s)) => break Ok(s),
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(25));
                }
                Err(e) => break Err(e),
            }
        };
        self.stop.take();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        (status, self.killed.load(Ordering::SeqCst))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_and_deadlines_kill_git_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        // `git -c alias...` runs a shell alias: a stand-in for a fetch that hangs.
        let slow = || Git::new(dir.path(), ["-c", "alias.hang=!sleep 30", "hang"]);
        let t = Instant::now();
        let e = slow()
            .timeout(Duration::from_millis(300))
            .output(&cancel, true)
            .unwrap_err();
        assert!(matches!(e, SourceError::GitTimeout { .. }), "{e}");
        assert!(e.is_retryable());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.cancel();
        });
        let t = Instant::now();
        let e = slow().output(&cancel, true).unwrap_err();
        assert!(matches!(e, SourceError::Cancelled), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
