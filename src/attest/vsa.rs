//! SLSA Verification Summary Attestations: a rebuild's verdict on an artifact, signed by the
//! host that rebuilt it (`kiln verify --attest`, the daemon's sampled verify, `kiln build
//! --verify`).
//!
//! What kiln claims, and no more: `verifiedLevels` is `["SLSA_BUILD_REPRODUCED"]` when the
//! rebuild gave the same digest, `["FAILED"]` otherwise. It claims no Build level: a level
//! depends on how the original builder kept its key and isolated its builds, which a rebuild
//! cannot observe. The rebuild itself is the evidence.

use serde_json::{Value, json};

use super::STATEMENT_TYPE;
use crate::digest::Digest;
use crate::image::rfc3339;

pub const PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";
/// kiln's rebuild policy: rebuild from the provenance alone, on the recorded builder, and
/// compare byte for byte.
pub const POLICY: &str = "https://github.com/kiln-build/kiln/policy/rebuild/v1";
/// The kiln-specific field of the predicate: what the rebuild found.
pub const KILN_FIELD: &str = "dev.kiln.rebuild";

/// One verdict.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The artifact's name (its repository, for a pushed one).
    pub name: String,
    /// The artifact's manifest digest.
    pub subject: Digest,
    /// The verifying host.
    pub verifier_id: String,
    /// Unix seconds.
    pub time: u64,
    /// The digest of the provenance (its envelope, or its statement) the rebuild followed.
    pub input: Option<Digest>,
    pub passed: bool,
    /// What the rebuild gave.
    pub rebuilt: Digest,
    /// Paths that differ (0 when passed).
    pub differing_paths: usize,
}

impl Verdict {
    /// `pkg:oci/<name>@sha256%3A<hex>`: the artifact by content, wherever it is pushed.
    pub fn resource_uri(&self) -> String {
        let name = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("pkg:oci/{name}@sha256%3A{}", self.subject.hex())
    }

    pub fn statement(&self) -> Value {
        let inputs: Vec<Value> = self
            .input
            .iter()
            .map(|d| json!({"name": "provenance", "digest": {"sha256": d.hex()}}))
            .collect();
        json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.name, "digest": {"sha256": self.subject.hex()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "verifier": {"id": self.verifier_id, "version": {"kiln": env!("CARGO_PKG_VERSION")}},
                "timeVerified": rfc3339(self.time),
                "resourceUri": self.resource_uri(),
                "policy": {"uri": POLICY},
                "inputAttestations": inputs,
                "verificationResult": if self.passed { "PASSED" } else { "FAILED" },
                "verifiedLevels": if self.passed { ["SLSA_BUILD_REPRODUCED"] } else { ["FAILED"] },
                "slsaVersion": "1.0",
                KILN_FIELD: {
                    "rebuiltDigest": self.rebuilt.to_string(),
                    "differingPaths": self.differing_paths,
                },
            },
        })
    }
}

/// What a VSA says, as `kiln inspect` and `kiln trust` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub result: String,
    pub verifier: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differing_paths: Option<u64>,
    /// The policy it verified against.
    pub policy: String,
    pub levels: Vec<String>,
}

impl Summary {
    /// Whether this is a passing verdict of kiln's rebuild policy: the rebuild reproduced it.
    pub fn reproduced(&self) -> bool {
        self.result == "PASSED"
            && self.policy == POLICY
            && self.levels.iter().any(|l| l == "SLSA_BUILD_REPRODUCED")
    }
}

pub fn summary(statement: &Value) -> Summary {
    let p = &statement["predicate"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    Summary {
        result: s(&p["verificationResult"]),
        verifier: s(&p["verifier"]["id"]),
        time: s(&p["timeVerified"]),
        differing_paths: p[KILN_FIELD]["differingPaths"].as_u64(),
        policy: s(&p["policy"]["uri"]),
        levels: p["verifiedLevels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect(),
    }
}
