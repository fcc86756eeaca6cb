//! `kiln key generate DIR`: a signing key pair for provenance and verdicts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use kiln::attest::sign::{self, KeyType, PublicKey, Signer};

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Write DIR/kiln.key (PKCS#8 PEM, mode 0600) and DIR/kiln.pub (SPKI PEM), and print the
    /// key id (sha256: + the hex SHA-256 of the public key's SPKI DER).
    Generate {
        dir: PathBuf,
        /// ecdsa-p256 (cosign's default) or ed25519.
        #[arg(long = "type", default_value = "ecdsa-p256", value_name = "TYPE")]
        kind: KeyType,
    },
}

pub fn key(c: KeyCommand) -> Result<ExitCode> {
    match c {
        KeyCommand::Generate { dir, kind } => {
            let public = sign::generate(&dir, kind)?;
            eprintln!(
                "wrote {} (private, mode 0600) and {} ({})",
                dir.join(sign::PRIVATE_FILE).display(),
                dir.join(sign::PUBLIC_FILE).display(),
                kind.name()
            );
            println!("{}", public.keyid());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The private key a `--sign-key FILE` names; `bundle`: also publish Sigstore bundles.
pub fn signer(path: Option<&PathBuf>, bundle: bool) -> Result<Option<Arc<Signer>>> {
    path.map(|p| {
        Signer::load(p)
            .map(|s| Arc::new(s.with_sigstore_bundle(bundle)))
            .context("--sign-key")
    })
    .transpose()
}

/// The public keys `--key FILE...` name.
pub fn public_keys(paths: &[PathBuf], flag: &str) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| PublicKey::load(p).with_context(|| flag.to_owned()))
        .collect()
}
