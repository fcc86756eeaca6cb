//! The Docker engine, through bollard: one container per build, one exec per step.
//!
//! The container idles on `/bin/sh` reading an open stdin; the source tar is uploaded through
//! the archive API; each step runs as an exec (`/bin/sh -c STEP` in `workdir`) whose output
//! streams live; the output directory comes back through the archive API as a tar stream.
//! The container is removed whatever happens: success, failure, timeout or cancellation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, NetworkConnectRequest,
    NetworkDisconnectRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::markers::{DRIVER, Demux, Marker, Piece};
use super::steplog::{StepLog, Tail};
use super::{BuildError, BuilderImage, LABEL_BUILD, RunOutput, RunRequest, Runner, StepRecord, io};
use crate::events::{Event, Observer};

/// Lines of output kept for a failed step's error message.
const TAIL_LINES: usize = 15;
/// How long a missing builder image may take to pull.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long the work of a stopped build (output spooling, the source tar) may take to notice.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);
/// Steps `first..end` of one exec as their output and markers arrive.
struct StepRun {
    first: usize,
    end: usize,
    network: bool,
    /// The step running now: (1-based index, started, its output's tail).
    current: Option<(usize, std::time::Instant, Tail)>,
    /// The step that failed: (index, exit code, its output's tail).
    failed: Option<(usize, i64, Tail)>,
}

impl StepRun {
    fn take(
        &mut self,
        piece: Piece,
        req: &RunRequest<'_>,
        log: &mut StepLog<'_>,
        records: &mut Vec<StepRecord>,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<(), BuildError> {
        let b = req.build;
        let network = self.network;
        match piece {
            Piece::Output(bytes) => {
                if let Some((_, _, tail)) = self.current.as_mut() {
                    tail.push(&bytes);
                }
                log.output(&bytes, observer)?;
            }
            Piece::Marker(Marker::Start(i)) if (1..=self.end - self.first).contains(&i) => {
                let index = self.first + i;
                let command = &b.steps[index - 1].run;
                observer.event(&Event::StepStarted {
                    index,
                    total: b.steps.len(),
                    command: command.clone(),
                    network,
                });
                tracing::info!(step = index, command = %command, network, "running step");
                log.line(&format!(
                    "{} {command}",
                    if network { "$ (network)" } else { "$" }
                ))?;
                self.current = Some((index, std::time::Instant::now(), Tail::default()));
            }
            Piece::Marker(Marker::End(i, code))
                if self.current.as_ref().is_some_and(|c| c.0 == self.first + i) =>
            {
                let Some((index, started, tail)) = self.current.take() else {
                    return Ok(());
                };
                let millis = started.elapsed().as_millis() as u64;
                observer.event(&Event::StepFinished {
                    index,
                    exit_code: code,
                    millis,
                });
                if code != 0 {
                    let _ = log.line(&format!("kiln: step {index} exited with code {code}"));
                    self.failed = Some((index, code, tail));
                } else {
                    records.push(StepRecord {
                        index,
                        command: b.steps[index - 1].run.clone(),
                        exit_code: code,
                        millis,
                        network,
                    });
                }
            }
            // A marker out of turn (a step that forged one): ignored.
            Piece::Marker(_) => {}
        }
        Ok(())
    }
}

/// Bytes kept of what kiln's own execs in a build container print (`du`).
const EXEC_OUTPUT: usize = 64 * 1024;

/// The engine's network a build with networked steps is connected to while they run.
const NETWORK: &str = "bridge";

/// What a finished drive hands back: the spool, the output's root in it, the steps as they
/// ran, and the caches' sizes.
type Driven = (
    tempfile::TempDir,
    std::path::PathBuf,
    Vec<StepRecord>,
    BTreeMap<String, u64>,
);

fn engine(op: &'static str) -> impl FnOnce(DockerError) -> BuildError {
    move |source| BuildError::Engine { op, source }
}

/// Runs builds on a Docker engine.
pub struct DockerRunner {
    docker: Docker,
}

impl DockerRunner {
    /// Connect as the docker CLI does (DOCKER_HOST, else the local socket) and agree on an
    /// API version the engine supports.
    pub async fn connect() -> Result<Self, BuildError> {
        let docker = Docker::connect_with_defaults().map_err(engine("connect"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(engine("negotiate the API version"))?;
        docker.ping().await.map_err(engine("ping"))?;
        Ok(DockerRunner { docker })
    }

    /// The engine's record of an image, pulling it if it is missing.
    async fn inspect_or_pull(
        &self,
        reference: &str,
    ) -> Result<bollard::models::ImageInspect, BuildError> {
        match self.docker.inspect_image(reference).await {
            Ok(info) => Ok(info),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.pull(reference).await?;
                self.docker
                    .inspect_image(reference)
                    .await
                    .map_err(engine("inspect the builder image"))
            }
            Err(e) => Err(BuildError::Engine {
                op: "inspect the builder image",
                source: e,
            }),
        }
    }

    async fn pull(&self, reference: &str) -> Result<(), BuildError> {
        let unavailable = |reason: String| BuildError::ImageUnavailable {
            image: reference.to_owned(),
            reason,
        };
        // Without a tag the engine would pull every tag of the repository.
        let untagged = reference
            .parse::<crate::reference::Reference>()
            .is_ok_and(|r| r.tag.is_none() && r.digest.is_none());
        let mut opts = CreateImageOptionsBuilder::default().from_image(reference);
        if untagged {
            opts = opts.tag("latest");
        }
        let opts = opts.build();
        let pull = self
            .docker
            .create_image(Some(opts), None, None)
            .try_collect::<Vec<_>>();
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(BuildError::PullTimeout {
                image: reference.to_owned(),
                after: PULL_TIMEOUT,
            }),
        }
    }

    /// The container a build runs in: idle until removed, never privileged, no host mounts
    /// (its caches are the engine's volumes), the host's limits, and no network unless the
    /// recipe asks and the host allows it. A build whose networked steps are only some of
    /// them is created on the engine's bridge and disconnected before it starts
    /// ([`Self::set_network`]).
    fn container(req: &RunRequest<'_>, builder: &BuilderImage) -> ContainerCreateBody {
        let b = req.build;
        let networked = b.wants_network();
        let mounts: Vec<Mount> = req
            .caches
            .iter()
            .map(|c| Mount {
                target: Some(c.path.clone()),
                source: Some(c.volume.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            })
            .collect();
        let (memory, cpus) = req.limits.effective(b);
        // The fixed world: the recipe may set TZ itself, never SOURCE_DATE_EPOCH.
        let mut env = vec![
            format!("SOURCE_DATE_EPOCH={}", req.epoch),
            format!("TZ={}", super::TZ),
        ];
        env.retain(|e| !b.env.keys().any(|k| e.starts_with(&format!("{k}="))));
        env.extend(b.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut labels: HashMap<String, String> = req.labels.clone().into_iter().collect();
        labels.insert(LABEL_BUILD.to_owned(), req.build_id.to_owned());
        ContainerCreateBody {
            image: Some(builder.id.clone()),
            // Idle until removed: a shell reading a stdin that never closes. Steps are execs.
            entrypoint: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "while read -r _; do :; done".into(),
            ]),
            cmd: None,
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(false),
            tty: Some(false),
            hostname: Some(super::HOSTNAME.into()),
            domainname: Some(super::HOSTNAME.into()),
            env: Some(env),
            labels: Some(labels),
            network_disabled: Some(!networked),
            host_config: Some(HostConfig {
                network_mode: Some(if networked { NETWORK } else { "none" }.into()),
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(
                    super::KEPT_CAPABILITIES
                        .iter()
                        .map(|c| (*c).to_owned())
                        .collect(),
                ),
                memory: Some(memory as i64),
                // No swap beyond the memory limit.
                memory_swap: Some(memory as i64),
                nano_cpus: Some((cpus * 1e9) as i64),
                pids_limit: Some(req.limits.pids),
                binds: None,
                mounts: (!mounts.is_empty()).then_some(mounts),
                auto_remove: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Remove a container, killing it first; one that is gone already is fine.
    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let rm = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(rm)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Everything inside the container: the source in, the steps, the output out.
    async fn drive(
        &self,
        id: &str,
        req: &RunRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<Driven, BuildError> {
        let spool = tempfile::Builder::new()
            .prefix("kiln-build-")
            .tempdir_in(req.scratch)
            .map_err(io("create a directory in", req.scratch))?;
        self.upload_source(id, req, spool.path(), cancel).await?;
        let b = req.build;
        // Only the steps that ask have the network: off until the first of them.
        let mut connected = b.wants_network();
        if connected && !b.network {
            self.set_network(id, false).await?;
            connected = false;
        }
        self.docker
            .start_container(id, None)
            .await
            .map_err(engine("start the build container"))?;
        // An engine that attached a network anyway must not run an offline step with it.
        if b.wants_network() && !connected {
            self.check_offline(id).await?;
        }
        // The engine writes the container's own address into /etc/hosts when it has a
        // network: the build sees localhost only, like an offline one.
        if b.wants_network() {
            self.fix_hosts(id).await?;
        }
        let mut log = StepLog::open(req.log, req.limits.log)?;
        let total = b.steps.len();
        let mut records = Vec::new();
        // Consecutive steps with the same network run in one exec (one process start in the
        // engine, not one per step); the network changes only between such runs.
        let mut first = 0;
        while first < total {
            let network = b.step_network(first);
            let end = (first..total)
                .find(|&i| b.step_network(i) != network)
                .unwrap_or(total);
            if network != connected {
                self.set_network(id, network).await?;
                // Connecting writes the container's address into /etc/hosts again.
                self.fix_hosts(id).await?;
                connected = network;
            }
            let run = StepRun {
                first,
                end,
                network,
                current: None,
                failed: None,
            };
            self.steps(id, req, run, &mut log, &mut records, observer)
                .await?;
            first = end;
        }
        if connected && !b.network {
            self.set_network(id, false).await?;
        }
        let cache_bytes = self.cache_bytes(id, req).await;
        let root = self.collect_output(id, req, spool.path(), cancel).await?;
        Ok((spool, root, records, cache_bytes))
    }

    /// Connect the container to the build network, or disconnect it (then it has only its
    /// loopback).
    async fn set_network(&self, id: &str, on: bool) -> Result<(), BuildError> {
        if on {
            tracing::debug!(container = %id, "connecting the network for a step");
            self.docker
                .connect_network(
                    NETWORK,
                    NetworkConnectRequest {
                        container: id.to_owned(),
                        endpoint_config: None,
                    },
                )
                .await
                .map_err(engine("connect the build to the network"))
        } else {
            self.docker
                .disconnect_network(
                    NETWORK,
                    NetworkDisconnectRequest {
                        container: id.to_owned(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(engine("disconnect the build from the network"))?;
            // Before start the engine records the choice; once running it must hold now.
            match self
                .docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
                    self.check_offline(id).await
                }
                _ => Ok(()),
            }
        }
    }

    /// Fail unless the container has no network (only its loopback).
    async fn check_offline(&self, id: &str) -> Result<(), BuildError> {
        let info = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(engine("inspect the build container"))?;
        let attached: Vec<String> = info
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default();
        if attached.is_empty() {
            Ok(())
        } else {
            Err(BuildError::NotOffline { networks: attached })
        }
    }

    /// The bytes in each cache after the steps, measured inside the container with `du`
    /// (as root, so nothing is unreadable); a builder without `du` leaves them unmeasured.
    async fn cache_bytes(&self, id: &str, req: &RunRequest<'_>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        if req.caches.is_empty() {
            return out;
        }
        let mut cmd = vec!["du".to_owned(), "-sk".to_owned()];
        cmd.extend(req.caches.iter().map(|c| c.path.clone()));
        let text = match self.exec_root(id, cmd, "measure the build caches").await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "the caches could not be measured");
                return out;
            }
        };
        for line in text.lines() {
            if let Some((kib, path)) = line.split_once('\t')
                && let Ok(kib) = kib.trim().parse::<u64>()
            {
                out.insert(path.trim().to_owned(), kib * 1024);
            }
        }
        out
    }

    /// The source, as a deterministic tar rooted at the workdir (plus an empty output
    /// directory), copied into the container.
    async fn upload_source(
        &self,
        id: &str,
        req: &RunRequest<'_>,
        spool: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        let b = req.build;
        let tar_path = spool.join("source.tar");
        {
            let (source, tar_path, workdir, output, epoch, cancel) = (
                req.source.to_owned(),
                tar_path.clone(),
                b.workdir.clone(),
                b.output.clone(),
                req.epoch,
                cancel.clone(),
            );
            let fresh = req.fresh.map(|(set, t)| (set.clone(), t));
            tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
                let f = File::create(&tar_path).map_err(io("create", &tar_path))?;
                let mut w = std::io::BufWriter::new(f);
                let fresh = fresh.as_ref().map(|(set, t)| (set, *t));
                crate::pack::write_tree_tar(
                    &source,
                    &workdir,
                    &[&output],
                    epoch,
                    fresh,
                    &mut w,
                    &cancel,
                )?;
                w.flush().map_err(io("write", &tar_path))
            })
            .await
            .map_err(|e| BuildError::Io {
                op: "prepare the source tar",
                path: req.source.to_owned(),
                source: std::io::Error::other(e),
            })??;
        }
        let file = tokio::fs::File::open(&tar_path)
            .await
            .map_err(io("open", &tar_path))?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let up = UploadToContainerOptionsBuilder::default()
            .path("/")
            .copy_uidgid("true")
            .build();
        self.docker
            .upload_to_container(id, Some(up), body)
            .await
            .map_err(engine("copy the source into the container"))?;
        std::fs::remove_file(&tar_path).map_err(io("remove", &tar_path))
    }

    /// Run steps `first..end` (0-based) in one exec of the step driver
    /// ([`super::markers`]): each `/bin/sh -c STEP` under a fixed umask in `workdir`, stopping
    /// at the first that fails. Output streams into the log; each step is recorded; a step
    /// that exits non-zero is [`BuildError::StepFailed`].
    async fn steps(
        &self,
        id: &str,
        req: &RunRequest<'_>,
        mut run: StepRun,
        log: &mut StepLog<'_>,
        records: &mut Vec<StepRecord>,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<(), BuildError> {
        let b = req.build;
        let (first, end) = (run.first, run.end);
        let total = b.steps.len();
        let nonce = crate::ids::new_id();
        let mut cmd: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            DRIVER.replace("@UMASK@", super::UMASK),
            "kiln-steps".into(),
            nonce.clone(),
        ];
        cmd.extend(b.steps[first..end].iter().map(|s| s.run.clone()));
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions::<String> {
                    cmd: Some(cmd),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    working_dir: Some(b.workdir.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine("create a step"))?
            .id;
        let mut demux = Demux::new(&nonce);
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec, None)
            .await
            .map_err(engine("start a step"))?
        {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(engine("read a step's output"))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        for piece in demux.push(&message) {
                            run.take(piece, req, log, records, observer)?;
                        }
                    }
                    // The driver's own complaints (it cannot start a shell, say).
                    LogOutput::StdErr { message } => {
                        run.take(Piece::Output(message.to_vec()), req, log, records, observer)?
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        if let Some(piece) = demux.finish() {
            run.take(piece, req, log, records, observer)?;
        }
        let code = self.exit_code(&exec).await?;
        match (run.failed, code) {
            (None, 0) if records.len() == end => Ok(()),
            (Some((index, code, tail)), _) => Err(BuildError::StepFailed {
                index,
                total,
                command: b.steps[index - 1].run.clone(),
                code,
                tail: tail.lines(TAIL_LINES),
            }),
            // The driver itself stopped (killed, or it could not run a step): the step it was
            // on, else the first not recorded, failed with its exit code.
            (None, code) => {
                let index = run
                    .current
                    .as_ref()
                    .map_or(records.len() + 1, |c| c.0)
                    .min(total);
                let code = if code == 0 { 1 } else { code };
                if let Some((_, started, _)) = &run.current {
                    observer.event(&Event::StepFinished {
                        index,
                        exit_code: code,
                        millis: started.elapsed().as_millis() as u64,
                    });
                }
                let _ = log.line(&format!("kiln: step {index} exited with code {code}"));
                Err(BuildError::StepFailed {
                    index,
                    total,
                    command: b.steps[index - 1].run.clone(),
                    code,
                    tail: run
                        .current
                        .map(|c| c.2)
                        .unwrap_or_default()
                        .lines(TAIL_LINES),
                })
            }
        }
    }

    /// A step's exit code. The output stream can end before the exec is reaped (a step that
    /// closed its stdio): wait until the engine says it is done.
    async fn exit_code(&self, exec: &str) -> Result<i64, BuildError> {
        loop {
            let info = self
                .docker
                .inspect_exec(exec)
                .await
                .map_err(engine("inspect a step"))?;
            match (info.running, info.exit_code) {
                (Some(false), Some(code)) | (None, Some(code)) => return Ok(code),
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// The output directory, streamed out as a tar and spooled (safely) to local disk; the
    /// path of its copy.
    async fn collect_output(
        &self,
        id: &str,
        req: &RunRequest<'_>,
        spool: &Path,
        cancel: &CancellationToken,
    ) -> Result<std::path::PathBuf, BuildError> {
        let output = &req.build.output;
        let down = DownloadFromContainerOptionsBuilder::default()
            .path(output)
            .build();
        let mut stream = self.docker.download_from_container(id, Some(down)).boxed();
        let first = match stream.next().await {
            Some(Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            })) => {
                return Err(BuildError::NoOutput {
                    path: output.clone(),
                });
            }
            Some(Err(e)) => {
                return Err(BuildError::Engine {
                    op: "copy the output out of the container",
                    source: e,
                });
            }
            Some(Ok(b)) => Some(b),
            None => None,
        };
        let stream = futures_util::stream::iter(first.map(Ok))
            .chain(stream)
            .map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let out_dir = spool.join("output");
        std::fs::create_dir(&out_dir).map_err(io("create", &out_dir))?;
        let (dst, c) = (out_dir.clone(), cancel.clone());
        let max = req.limits.output;
        tokio::task::spawn_blocking(move || crate::pack::unpack_tar_limited(reader, &dst, &c, max))
            .await
            .map_err(|e| BuildError::Io {
                op: "collect the output",
                path: out_dir.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|e| match e {
                crate::pack::PackError::TooLarge { limit } => BuildError::OutputTooLarge { limit },
                e => BuildError::Output(e),
            })?;
        let base = Path::new(output)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let root = out_dir.join(base);
        // Never follow a symlink here: a step that replaced the output directory with a link
        // to, say, /home would otherwise have kiln pack the host's files.
        match std::fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => Ok(root),
            Ok(m) if m.file_type().is_symlink() => Err(BuildError::OutputIsSymlink {
                path: output.clone(),
            }),
            _ => Err(BuildError::NoOutput {
                path: output.clone(),
            }),
        }
    }

    /// Replace /etc/hosts with localhost entries only (as root inside the container).
    async fn fix_hosts(&self, id: &str) -> Result<(), BuildError> {
        let script = "printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' > /etc/hosts";
        self.exec_root(
            id,
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            "prepare /etc/hosts",
        )
        .await
        .map(drop)
    }

    /// Run `cmd` as root in the container; its standard output.
    async fn exec_root(
        &self,
        id: &str,
        cmd: Vec<String>,
        op: &'static str,
    ) -> Result<String, BuildError> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions::<String> {
                    cmd: Some(cmd),
                    user: Some("0".into()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine(op))?
            .id;
        let mut out = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec, None)
            .await
            .map_err(engine(op))?
        {
            // What the image's own tools print is bounded: they come with the commit's builder.
            while let Some(chunk) = output.next().await {
                if let Ok(LogOutput::StdOut { message }) = chunk {
                    let room = EXEC_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&message[..message.len().min(room)]);
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[async_trait::async_trait]
impl Runner for DockerRunner {
    async fn resolve_image(
        &self,
        reference: &str,
        cancel: &CancellationToken,
    ) -> Result<BuilderImage, BuildError> {
        let info = tokio::select! {
            r = self.inspect_or_pull(reference) => r?,
            _ = cancel.cancelled() => return Err(BuildError::Cancelled),
        };
        let cfg = info.config.clone().unwrap_or_default();
        let digest = super::content_digest(
            &info
                .root_fs
                .as_ref()
                .and_then(|r| r.layers.clone())
                .unwrap_or_default(),
            &cfg.env.clone().unwrap_or_default(),
            cfg.user.as_deref().unwrap_or(""),
            cfg.working_dir.as_deref().unwrap_or(""),
            info.os.as_deref().unwrap_or(""),
            info.architecture.as_deref().unwrap_or(""),
            info.variant.as_deref().unwrap_or(""),
        );
        Ok(BuilderImage {
            reference: reference.to_owned(),
            id: info.id.unwrap_or_default(),
            digest,
            repo_digests: info.repo_digests.unwrap_or_default(),
        })
    }

    /// Remove every container (running or not) carrying `label=value`: what a dead run of
    /// this host left behind. Returns their names.
    async fn remove_labelled(&self, label: &str, value: &str) -> Result<Vec<String>, BuildError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_owned(), vec![format!("{label}={value}")]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(engine("list containers"))?;
        let mut removed = Vec::new();
        for c in found {
            let Some(id) = c.id else { continue };
            self.remove(&id)
                .await
                .map_err(engine("remove a leftover container"))?;
            removed.push(
                c.names
                    .and_then(|n| n.first().cloned())
                    .unwrap_or(id)
                    .trim_start_matches('/')
                    .to_owned(),
            );
        }
        Ok(removed)
    }

    async fn run(
        &self,
        req: &RunRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<RunOutput, BuildError> {
        let b = req.build;
        // The host decides: a recipe cannot turn the network on by itself.
        if b.wants_network() && !req.limits.allow_network {
            return Err(BuildError::NetworkNotAllowed {
                hint: " (allow it with --allow-network on the command line, or allow_network = true for the repo in the daemon config)",
                step: !b.network,
            });
        }
        let builder = match req.builder {
            Some(b) => b.clone(),
            None => self.resolve_image(&req.build.image, cancel).await?,
        };
        let name = format!("kiln-{}", req.build_id);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = self
            .docker
            .create_container(Some(opts), Self::container(req, &builder))
            .await
            .map_err(engine("create the build container"))?
            .id;
        tracing::debug!(container = %id, "created build container");

        // The run's own token: a timeout stops the blocking work (tar spooling) too, not
        // only the futures that are dropped.
        let run_cancel = cancel.child_token();
        let drive = self.drive(&id, req, &run_cancel, observer);
        tokio::pin!(drive);
        let stopped = tokio::select! {
            r = &mut drive => Ok(r),
            _ = tokio::time::sleep(b.timeout) => Err(BuildError::Timeout { after: b.timeout }),
            _ = cancel.cancelled() => Err(BuildError::Cancelled),
        };
        let result = match stopped {
            Ok(r) => r,
            Err(why) => {
                // Stop everything: the token for blocking work, the container for the engine
                // streams; then let the drive unwind (removing its spool) before reporting.
                run_cancel.cancel();
                let _ = self
                    .docker
                    .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
                    .await;
                if tokio::time::timeout(DRAIN, &mut drive).await.is_err() {
                    tracing::warn!(container = %id, "the stopped build did not unwind within {DRAIN:?}");
                }
                Err(why)
            }
        };
        // Always remove the container (force kills it first), whatever happened above.
        if let Err(e) = self.remove(&id).await {
            tracing::warn!(container = %id, error = %e, "could not remove the build container");
            if result.is_ok() {
                return Err(BuildError::Engine {
                    op: "remove the build container",
                    source: e,
                });
            }
        }
        let (dir, root, steps, cache_bytes) = result?;
        Ok(RunOutput {
            dir,
            root,
            builder,
            steps,
            cache_bytes,
            caches: Vec::new(),
            tree: None,
        })
    }

    async fn create_volume(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), BuildError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                labels: Some(labels.into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(engine("create a cache volume"))
            .map(drop)
    }

    async fn has_volume(&self, name: &str) -> Result<bool, BuildError> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(BuildError::Engine {
                op: "inspect a cache volume",
                source: e,
            }),
        }
    }

    /// Any container still using the volume is a dead build's (its cache lock is free, so
    /// no live build holds it): it goes first, or the engine refuses to remove the volume.
    async fn remove_volume(&self, name: &str) -> Result<(), BuildError> {
        let mut filters = HashMap::new();
        filters.insert("volume".to_owned(), vec![name.to_owned()]);
        let list = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let users = self
            .docker
            .list_containers(Some(list))
            .await
            .map_err(engine("list a cache volume's containers"))?;
        for c in users.into_iter().filter_map(|c| c.id) {
            tracing::info!(container = %c, volume = %name, "removing a dead build's container that still holds its cache");
            self.remove(&c)
                .await
                .map_err(engine("remove a dead build's container"))?;
        }
        let opts = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self.docker.remove_volume(name, Some(opts)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(BuildError::Engine {
                op: "remove a cache volume",
                source: e,
            }),
        }
    }

    /// Load a `docker save`-format archive into the engine (`docker load`). Cancelling drops
    /// the upload, and the engine discards the partial image.
    async fn load_archive(
        &self,
        archive: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(io("open", archive))?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let load = self
            .docker
            .import_image(opts, body, None)
            .try_collect::<Vec<_>>();
        tokio::select! {
            r = load => { r.map_err(engine("load the image"))?; }
            _ = cancel.cancelled() => return Err(BuildError::Cancelled),
        }
        Ok(())
    }
}
