//! `kiln verify`: a pushed artifact rebuilt from its provenance and compared.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;

use super::{EXIT_DIFFERENT, EXIT_UNVERIFIABLE, Progress, RegistryArgs, cancel_on_signals};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// host[:port]/repository[:tag|@digest]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Keep both unpacked trees in DIR/expected and DIR/rebuilt.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Honour the recipe's `network = true` in the rebuild.
    #[arg(long)]
    pub allow_network: bool,
    /// Rebuild only from a provenance signed by one of these public keys (repeatable): a
    /// forged provenance must not steer a rebuild.
    #[arg(long = "key", value_name = "FILE", num_args = 1..)]
    pub keys: Vec<PathBuf>,
    /// After the comparison, push a signed verdict (an SLSA VSA) as a referrer of the artifact.
    #[arg(long, requires = "sign_key")]
    pub attest: bool,
    /// The private key that signs the verdict.
    #[arg(long, value_name = "FILE", requires = "attest")]
    pub sign_key: Option<PathBuf>,
    /// Also attach each signed statement as a Sigstore bundle v0.3 (cosign's newer format).
    #[arg(long, requires = "sign_key")]
    pub sigstore_bundle: bool,
    /// This verifier's identity in the verdict. Defaults to $KILN_BUILDER_ID, else
    /// kiln://<hostname>.
    #[arg(long, value_name = "URI")]
    pub verifier_id: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let json = a.json;
    let unverifiable = |msg: String| {
        eprintln!("kiln: cannot verify: {msg}");
        if json {
            println!("{}", serde_json::json!({"verified": false, "error": msg}));
        }
        Ok(ExitCode::from(EXIT_UNVERIFIABLE))
    };
    let reference: kiln::reference::Reference = match a.reference.parse() {
        Ok(r) => r,
        Err(e) => return unverifiable(format!("{e}")),
    };
    let work = match tempfile::Builder::new().prefix("kiln-verify-").tempdir() {
        Ok(w) => w,
        Err(e) => return unverifiable(format!("creating a scratch directory: {e}")),
    };
    let keys = match super::key::public_keys(&a.keys, "--key") {
        Ok(k) => k,
        Err(e) => return unverifiable(super::chain(&e)),
    };
    let attest = match super::key::signer(a.sign_key.as_ref(), a.sigstore_bundle) {
        Ok(Some(s)) if a.attest => Some((
            s,
            a.verifier_id
                .clone()
                .unwrap_or_else(super::build::host_identity),
        )),
        Ok(_) => None,
        Err(e) => return unverifiable(super::chain(&e)),
    };
    let opts = kiln::verify::VerifyOptions {
        keys,
        attest,
        registry: a.registry.options(),
        keep: a.keep.clone(),
        tokens: kiln::forge::Tokens::from_env(),
        work: work.path().to_owned(),
        allow_network: a.allow_network,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return unverifiable(format!("{e:#}")),
    };
    let result = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping the verification");
        let runner = match kiln::runner::connect().await {
            Ok(r) => r,
            Err(e) => {
                return Err(kiln::verify::VerifyError::BuilderMissing {
                    image: "(any)".into(),
                    reason: e.to_string(),
                });
            }
        };
        let observer: Arc<dyn kiln::events::Observer + Send + Sync> =
            Progress::new(json, "rebuilding: ");
        kiln::verify::verify(&reference, &opts, runner.as_ref(), &cancel, observer).await
    });
    match result {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
            }
            if let Some(v) = &report.verdict {
                eprintln!("pushed a signed verdict: {v}");
            }
            Ok(if report.identical {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DIFFERENT)
            })
        }
        Err(e) => {
            // A failed rebuild's log is worth keeping: the scratch directory stays.
            if matches!(e, kiln::verify::VerifyError::Rebuild(_)) {
                let kept = work.keep();
                eprintln!(
                    "kiln: the rebuild's scratch directory (and its log) is kept in {}",
                    kept.display()
                );
            }
            unverifiable(e.to_string())
        }
    }
}
