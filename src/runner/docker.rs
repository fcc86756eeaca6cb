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
    ImportImageOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::{BuildError, BuildOutput, BuildRequest, BuilderImage, LABEL_BUILD};
use crate::events::{Event, Observer};

/// Lines of output kept for a failed step's error message.
const TAIL_LINES: usize = 15;

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
    pub async fn resolve_image(&self, reference: &str) -> Result<BuilderImage, BuildError> {
        let info = match self.docker.inspect_image(reference).await {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.pull(reference).await?;
                self.docker
                    .inspect_image(reference)
                    .await
                    .map_err(engine("inspect the builder image"))?
            }
            Err(e) => {
                return Err(BuildError::Engine {
                    op: "inspect the builder image",
                    source: e,
                });
            }
        };
        Ok(BuilderImage {
            reference: reference.to_owned(),
            id: info.id.unwrap_or_default(),
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
        match tokio::time::timeout(std::time::Duration::from_secs(300), pull).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable("the pull timed out after 5 minutes".into())),
        }
    }

    /// Run a build. The container is always removed before this returns.
    pub async fn run(
        &self,
        req: &BuildRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<BuildOutput, BuildError> {
        let builder = self.resolve_image(&req.build.image).await?;
        let b = req.build;
        let mut env = vec![format!("SOURCE_DATE_EPOCH={}", req.epoch)];
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
            env: Some(env),
            labels: Some(labels),
            network_disabled: Some(!b.network),
            host_config: Some(HostConfig {
                network_mode: Some(if b.network { "bridge" } else { "none" }.into()),
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: b.memory.map(|m| m as i64),
                nano_cpus: b.cpus.map(|c| (c * 1e9) as i64),
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

        let drive = self.drive(&id, req, cancel, observer);
        let result = tokio::select! {
            r = tokio::time::timeout(b.timeout, drive) => r.unwrap_or(Err(BuildError::Timeout { after: b.timeout })),
            _ = cancel.cancelled() => Err(BuildError::Cancelled),
        };
        // Always remove the container (force kills it first), whatever happened above.
        let rm = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(&id, Some(rm)).await {
            tracing::warn!(container = %id, error = %e, "could not remove the build container");
            if result.is_ok() {
                return Err(BuildError::Engine {
                    op: "remove the build container",
                    source: e,
                });
            }
        }
        let (dir, root) = result?;
        Ok(BuildOutput { dir, root, builder })
    }

    async fn drive(
        &self,
        id: &str,
        req: &BuildRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<(tempfile::TempDir, std::path::PathBuf), BuildError> {
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

        let mut log = File::create(req.log).map_err(io("create the build log", req.log))?;
        let total = b.steps.len();
        for (i, step) in b.steps.iter().enumerate() {
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
                        cmd: Some(vec!["/bin/sh".into(), "-c".into(), step.clone()]),
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
                        log.write_all(&bytes).map_err(io("write", req.log))?;
                        tail.push(&bytes);
                        observer.event(&Event::StepOutput {
                            bytes: bytes.to_vec(),
                        });
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
        tokio::task::spawn_blocking(move || crate::pack::unpack_tar(reader, &dst, &c))
            .await
            .map_err(|e| BuildError::Io {
                op: "collect the output",
                path: out_dir.clone(),
                source: std::io::Error::other(e),
            })??;
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
        Ok((spool, root))
    }

    /// Load a `docker save`-format archive into the engine (`docker load`).
    pub async fn load_archive(&self, archive: &Path) -> Result<(), BuildError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(io("open", archive))?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        self.docker
            .import_image(opts, body, None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(engine("load the image"))?;
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
