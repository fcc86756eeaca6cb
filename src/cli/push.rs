//! `kiln push`: an image or artifact from a local OCI layout to a registry.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use kiln::store::{ContentStore, OciLayout};

use super::{Progress, RegistryArgs, cancel_on_signals, human, runtime};

#[derive(clap::Args)]
pub struct PushArgs {
    /// The local layout, with the tag to push if it holds more than one image.
    #[arg(value_name = "LAYOUT[:TAG]")]
    pub source: String,
    /// Where to push: host[:port]/repository[:tag]. Without a tag, the layout's tag is used.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Sign the artifact's provenance with this private key before pushing (the layout's
    /// unsigned statement is replaced by a DSSE envelope over it).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Also attach each signed statement as a Sigstore bundle v0.3 (cosign's newer format).
    #[arg(long, requires = "sign_key")]
    pub sigstore_bundle: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `LAYOUT[:TAG]`: a tag only when what follows the last ':' is one and the rest is a layout.
fn split_layout_tag(s: &str) -> (PathBuf, Option<String>) {
    if let Some((path, tag)) = s.rsplit_once(':')
        && kiln::store::validate_tag(tag).is_ok()
        && !tag.contains('/')
        && std::path::Path::new(path).join("oci-layout").is_file()
    {
        return (PathBuf::from(path), Some(tag.to_owned()));
    }
    (PathBuf::from(s), None)
}

/// The manifest a `LAYOUT[:TAG]` names: the tag's, or the only one.
fn resolve_in_layout(
    layout: &OciLayout,
    tag: Option<&str>,
) -> Result<(oci_spec::image::Descriptor, Option<String>)> {
    match tag {
        Some(t) => {
            let d = layout
                .resolve(t)?
                .with_context(|| format!("no tag {t:?} in {}", layout.root().display()))?;
            Ok((d, Some(t.to_owned())))
        }
        None => {
            let index = layout.index()?;
            let tagged: Vec<_> = index
                .manifests()
                .iter()
                .filter(|d| {
                    d.annotations()
                        .as_ref()
                        .is_some_and(|a| a.contains_key(kiln::store::REF_NAME))
                })
                .collect();
            match tagged.as_slice() {
                [one] => {
                    let t = one
                        .annotations()
                        .as_ref()
                        .and_then(|a| a.get(kiln::store::REF_NAME))
                        .cloned();
                    Ok(((*one).clone(), t))
                }
                [] => bail!("{} has no tagged image", layout.root().display()),
                _ => bail!(
                    "{} holds several images: name one as LAYOUT:TAG",
                    layout.root().display()
                ),
            }
        }
    }
}

pub fn push(a: PushArgs) -> Result<ExitCode> {
    let (path, tag) = split_layout_tag(&a.source);
    let layout = OciLayout::open(&path)?;
    let (desc, layout_tag) = resolve_in_layout(&layout, tag.as_deref())?;
    if let Some(signer) = super::key::signer(a.sign_key.as_ref(), a.sigstore_bundle)? {
        let digest = kiln::digest::Digest::from_oci(desc.digest())?;
        // The key vouches for how the artifact was built: without a provenance (a
        // `kiln pack --sbom` layout holds only an SBOM) nothing is signed, nothing pushed.
        let provenance = layout.referrers(&digest)?.iter().any(|r| {
            kiln::attest::is_attestation(r)
                && r.annotations().as_ref().is_some_and(|a| {
                    a.get(kiln::attest::PREDICATE_ANNOTATION)
                        .map(String::as_str)
                        == Some(kiln::attest::provenance::PREDICATE_TYPE)
                })
        });
        let n = if provenance {
            kiln::attest::sign_in_place(&layout, &desc, &signer)?
        } else {
            0
        };
        let signed = provenance
            && layout.referrers(&digest)?.iter().any(|r| {
                r.artifact_type().as_ref().is_some_and(|t| {
                    t.to_string()
                        == kiln::attest::signed_artifact_type(
                            kiln::attest::provenance::PREDICATE_TYPE,
                        )
                })
            });
        if !signed {
            bail!(
                "--sign-key: {} holds no kiln provenance for {} to sign; nothing was pushed",
                layout.root().display(),
                desc.digest()
            );
        }
        eprintln!("signed {n} statement(s) with {}", signer.keyid());
    }
    let reference: kiln::reference::Reference = a.reference.parse()?;
    if reference.digest.is_some() {
        bail!("push to a tag, not a digest: {reference}");
    }
    let tag = reference
        .tag
        .clone()
        .or(layout_tag)
        .unwrap_or_else(|| "latest".to_owned());
    let rt = runtime()?;
    let started = Instant::now();
    let progress = Progress::new(false, "");
    let report = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping the push (no tag was moved)");
        let client =
            kiln::registry::RegistryClient::for_reference(&reference, &a.registry.options())?;
        let mut pusher = kiln::registry::Pusher::new(&client, &layout, &reference.repository);
        pusher.observer = progress.as_ref();
        pusher.cancel = cancel;
        anyhow::Ok(pusher.push(&desc, std::slice::from_ref(&tag)).await?)
    })?;
    eprintln!(
        "pushed {}:{tag} in {:.2}s: {} blobs uploaded ({}), {} mounted, {} already there",
        format_args!("{}/{}", reference.registry, reference.repository),
        started.elapsed().as_secs_f64(),
        report.uploaded.len(),
        human(report.bytes_uploaded),
        report.mounted.len(),
        report.skipped.len()
    );
    println!("{}", desc.digest());
    Ok(ExitCode::SUCCESS)
}
