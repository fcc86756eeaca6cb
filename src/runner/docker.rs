//! The Docker engine, through bollard: one container per build, one exec per step.
//!
//! The container idles on `/bin/sh` reading an open stdin; the source tar is uploaded through
//! the archive API; each step runs as an exec (`/bin/sh -c STEP` in `workdir`) whose output
//! streams live; the output directory comes back through the archive API as a tar stream.
//! The container is removed whatever happens: success, failure, timeout or cancellation.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::{BuildError, BuildOutput, BuildRequest, BuilderImage, LABEL_BUILD, StepRecord};
use crate::events::{Event, Observer};

/// Lines of output kept for a failed step's error message.
const TAIL_LINES: usize = 15;
/// How long a missing builder image may take to pull.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long the work of a stopped build (output spooling, the source tar) may take to notice.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

fn engine(op: &'static str) -> impl FnOnce(DockerError) -> BuildError {
    move |source| BuildError::Engine { op, source }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Runs builds on a Docker engine.
#[derive(Clone)]
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

    /// The builder image as the engine has it, pulling it if it is missing.
    pub async fn resolve_image(
        &self,
        reference: &str,
        cancel: &CancellationToken,
    ) -> Result<BuilderImage, BuildError> {
        let inspect = async {
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
        };
        let info = tokio::select! {
            r = inspect => r?,
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

    /// Remove every container (running or not) carrying `label=value`: what a dead run of
    /// this host left behind. Returns their names.
    pub async fn remove_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, BuildError> {
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
            let rm = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(&id, Some(rm)).await {
                Ok(())
                | Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => removed.push(
                    c.names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or(id)
                        .trim_start_matches('/')
                        .to_owned(),
                ),
                Err(e) => {
                    return Err(BuildError::Engine {
                        op: "remove a leftover container",
                        source: e,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// Run a build. The container is always removed before this returns.
    pub async fn run(
        &self,
        req: &BuildRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<BuildOutput, BuildError> {
        let b = req.build;
        // The host decides: a recipe cannot turn the network on by itself.
        if b.network && !req.limits.allow_network {
            return Err(BuildError::NetworkNotAllowed {
                hint: " (allow it with --allow-network on the command line, or allow_network = true for the repo in the daemon config)",
            });
        }
        let builder = self.resolve_image(&req.build.image, cancel).await?;
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
        let config = ContainerCreateBody {
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
            network_disabled: Some(!b.network),
            host_config: Some(HostConfig {
                network_mode: Some(if b.network { "bridge" } else { "none" }.into()),
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
                mounts: None,
                auto_remove: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("kiln-{}", req.build_id);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = self
            .docker
            .create_container(Some(opts), config)
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
        let rm = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&id, Some(rm)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "could not remove the build container");
                if result.is_ok() {
                    return Err(BuildError::Engine {
                        op: "remove the build container",
                        source: e,
                    });
                }
            }
        }
        let (dir, root, steps) = result?;
        Ok(BuildOutput {
            dir,
            root,
            builder,
            steps,
        })
    }

    async fn drive(
        &self,
        id: &str,
        req: &BuildRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<(tempfile::TempDir, std::path::PathBuf, Vec<StepRecord>), BuildError> {
        let b = req.build;
        // The source, as a deterministic tar rooted at the workdir, plus an empty output dir.
        let spool = tempfile::Builder::new()
            .prefix("kiln-build-")
            .tempdir_in(req.scratch)
            .map_err(io("create a directory in", req.scratch))?;
        let tar_path = spool.path().join("source.tar");
        {
            let (source, tar_path, workdir, output, epoch, cancel) = (
                req.source.to_owned(),
                tar_path.clone(),
                b.workdir.clone(),
                b.output.clone(),
                req.epoch,
                cancel.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
                let f = File::create(&tar_path).map_err(io("create", &tar_path))?;
                let mut w = std::io::BufWriter::new(f);
                crate::pack::write_tree_tar(&source, &workdir, &[&output], epoch, &mut w, &cancel)?;
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
        std::fs::remove_file(&tar_path).map_err(io("remove", &tar_path))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(engine("start the build container"))?;
        // The engine writes the container's own address into /etc/hosts when it has a
        // network: the build sees localhost only, like an offline one.
        if b.network {
            self.fix_hosts(id).await?;
        }

        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(req.log)
            .map_err(io("open the build log", req.log))?;
        let total = b.steps.len();
        let mut records = Vec::new();
        // Step output kept in the log so far, against the host's limit.
        let mut logged: u64 = 0;
        let mut log_full = false;
        for (i, step) in b.steps.iter().enumerate() {
            let step_started = std::time::Instant::now();
            let index = i + 1;
            observer.event(&Event::StepStarted {
                index,
                total,
                command: step.clone(),
            });
            tracing::info!(step = index, command = %step, "running step");
            writeln!(log, "$ {step}").map_err(io("write", req.log))?;
            let exec = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions::<String> {
                        // The step as written, under a fixed umask.
                        cmd: Some(vec![
                            "/bin/sh".into(),
                            "-c".into(),
                            format!("umask {}\n{step}", super::UMASK),
                        ]),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        working_dir: Some(b.workdir.clone()),
                        ..Default::default()
                    },
                )
                .await
                .map_err(engine("create a step"))?
                .id;
            let mut tail = Tail::default();
            match self
                .docker
                .start_exec(&exec, None)
                .await
                .map_err(engine("start a step"))?
            {
                StartExecResults::Attached { mut output, .. } => {
                    while let Some(chunk) = output.next().await {
                        let bytes = match chunk.map_err(engine("read a step's output"))? {
                            LogOutput::StdOut { message }
                            | LogOutput::StdErr { message }
                            | LogOutput::Console { message } => message,
                            LogOutput::StdIn { .. } => continue,
                        };
                        tail.push(&bytes);
                        // Past the log limit, output is dropped (once said so); the build
                        // goes on.
                        let room = req.limits.log.saturating_sub(logged);
                        if room > 0 {
                            let keep = &bytes[..bytes.len().min(room as usize)];
                            log.write_all(keep).map_err(io("write", req.log))?;
                            logged += keep.len() as u64;
                            observer.event(&Event::StepOutput {
                                bytes: keep.to_vec(),
                            });
                        } else if !log_full {
                            log_full = true;
                            let note = format!(
                                "\nkiln: the log reached its limit of {} bytes; further output is not kept\n",
                                req.limits.log
                            );
                            log.write_all(note.as_bytes())
                                .map_err(io("write", req.log))?;
                            observer.event(&Event::StepOutput {
                                bytes: note.into_bytes(),
                            });
                        }
                    }
                }
                StartExecResults::Detached => {}
            }
            // The output stream can end before the exec is reaped (a step that closed its
            // stdio): wait until the engine says it is done.
            let code = loop {
                let info = self
                    .docker
                    .inspect_exec(&exec)
                    .await
                    .map_err(engine("inspect a step"))?;
                match (info.running, info.exit_code) {
                    (Some(false), Some(code)) | (None, Some(code)) => break code,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            };
            let millis = step_started.elapsed().as_millis() as u64;
            observer.event(&Event::StepFinished {
                index,
                exit_code: code,
                millis,
            });
            records.push(StepRecord {
                index,
                command: step.clone(),
                exit_code: code,
                millis,
            });
            if code != 0 {
                let _ = writeln!(log, "kiln: step {index} exited with code {code}");
                return Err(BuildError::StepFailed {
                    index,
                    total,
                    command: step.clone(),
                    code,
                    tail: tail.lines(TAIL_LINES),
                });
            }
        }

        // The output directory, streamed out as a tar and spooled (safely) to local disk.
        let down = DownloadFromContainerOptionsBuilder::default()
            .path(&b.output)
            .build();
        let mut stream = self.docker.download_from_container(id, Some(down)).boxed();
        let first = match stream.next().await {
            Some(Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            })) => {
                return Err(BuildError::NoOutput {
                    path: b.output.clone(),
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
        let out_dir = spool.path().join("output");
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
        let base = Path::new(&b.output)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let root = out_dir.join(base);
        // Never follow a symlink here: a step that replaced the output directory with a link
        // to, say, /home would otherwise have kiln pack the host's files.
        match std::fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(BuildError::OutputIsSymlink {
                    path: b.output.clone(),
                });
            }
            _ => {
                return Err(BuildError::NoOutput {
                    path: b.output.clone(),
                });
            }
        }
        Ok((spool, root, records))
    }

    /// Replace /etc/hosts with localhost entries only (as root inside the container).
    async fn fix_hosts(&self, id: &str) -> Result<(), BuildError> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions::<String> {
                    cmd: Some(vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' > /etc/hosts".into(),
                    ]),
                    user: Some("0".into()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine("prepare /etc/hosts"))?
            .id;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec, None)
            .await
            .map_err(engine("prepare /etc/hosts"))?
        {
            while output.next().await.is_some() {}
        }
        Ok(())
    }

    /// Load a `docker save`-format archive into the engine (`docker load`). Cancelling drops
    /// the upload, and the engine discards the partial image.
    pub async fn load_archive(
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

/// The last bytes of a step's output, for its error message.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const KEEP: usize = 16 * 1024;

    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * Self::KEEP {
            self.0.drain(..self.0.len() - Self::KEEP);
        }
    }

    fn lines(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
