//! `kiln trust`: the deployment gate. It never rebuilds: it reads the artifact's signed
//! attestations and decides. Exit 0: the policy holds; 1: it does not (one line per reason);
//! 2: it cannot decide (the registry cannot be read, a malformed attestation).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{RegistryArgs, cancel_on_signals, runtime};

#[derive(clap::Args)]
pub struct TrustArgs {
    /// host[:port]/repository[:tag|@digest]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// A builder's public key: the provenance must be signed by one of them (repeatable).
    #[arg(long = "key", value_name = "FILE", required = true, num_args = 1..)]
    pub keys: Vec<PathBuf>,
    /// A rebuilder's public key: PASSED verdicts signed by these keys, other than the
    /// provenance signer's, are required (repeatable).
    #[arg(long = "rebuilt-by", value_name = "FILE", num_args = 1..)]
    pub rebuilt_by: Vec<PathBuf>,
    /// How many independent rebuilders (distinct --rebuilt-by keys, not the provenance
    /// signer's) must have signed a PASSED verdict.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "rebuilt_by")]
    pub min_rebuilds: usize,
    /// Print the decision and every attestation considered as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

const EXIT_REFUSED: u8 = 1;
const EXIT_UNDECIDED: u8 = 2;

pub fn trust(a: TrustArgs) -> Result<ExitCode> {
    let undecided = |msg: String| {
        eprintln!("kiln: cannot decide: {msg}");
        if a.json {
            println!(
                "{}",
                serde_json::json!({"trusted": false, "undecided": true, "error": msg})
            );
        }
        Ok(ExitCode::from(EXIT_UNDECIDED))
    };
    let policy = match (
        super::key::public_keys(&a.keys, "--key"),
        super::key::public_keys(&a.rebuilt_by, "--rebuilt-by"),
    ) {
        (Ok(keys), Ok(rebuilt_by)) => kiln::trust::Policy {
            keys,
            rebuilt_by,
            min_rebuilds: a.min_rebuilds,
        },
        (Err(e), _) | (_, Err(e)) => return undecided(super::chain(&e)),
    };
    let reference: kiln::reference::Reference = match a.reference.parse() {
        Ok(r) => r,
        Err(e) => return undecided(format!("{e}")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return undecided(super::chain(&e)),
    };
    let decision = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping");
        kiln::trust::decide(&reference, &a.registry.options(), &policy, &cancel).await
    });
    let decision = match decision {
        Ok(d) => d,
        Err(e) => return undecided(e.to_string()),
    };
    if a.json {
        match serde_json::to_string_pretty(&decision) {
            Ok(j) => println!("{j}"),
            Err(e) => return undecided(e.to_string()),
        }
    } else if decision.trusted {
        print!("{}", decision.text());
    } else {
        eprint!("{}", decision.text());
    }
    Ok(if decision.trusted {
        ExitCode::SUCCESS
    } else if decision.undecided {
        ExitCode::from(EXIT_UNDECIDED)
    } else {
        ExitCode::from(EXIT_REFUSED)
    })
}
