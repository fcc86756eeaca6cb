//! CycloneDX 1.5 JSON, converted from kiln's SPDX document (`kiln sbom --format
//! cyclonedx-json`). Written with serde_json: the Rust `cyclonedx-bom` crate would add its own
//! model and a dozen dependencies for what is a field-for-field mapping here, and the result
//! is checked by CycloneDX's own validator in the tests.
//!
//! The mapping: the root package is `metadata.component`; the base and the detected packages
//! are `components` (`container` and `library`); listed files are `file` components with
//! their SHA-1 and SHA-256; `CONTAINS` and `DEPENDS_ON` become `dependencies`. No
//! `serialNumber` (it would have to be random), so the same SBOM converts to the same bytes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Convert an SPDX document kiln wrote.
pub fn from_spdx(doc: &Value) -> Result<Value, String> {
    let packages = doc["packages"]
        .as_array()
        .ok_or("the SPDX document has no packages")?;
    let root_id = doc["relationships"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["relationshipType"] == "DESCRIBES")
        .and_then(|r| r["relatedSpdxElement"].as_str())
        .ok_or("the SPDX document describes no package")?;
    let purl = |p: &Value| {
        p["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["referenceType"] == "purl")
            .and_then(|r| r["referenceLocator"].as_str())
            .map(str::to_owned)
    };
    let hashes = |v: &Value| -> Vec<Value> {
        v["checksums"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let alg = match c["algorithm"].as_str()? {
                    "SHA1" => "SHA-1",
                    "SHA256" => "SHA-256",
                    _ => return None,
                };
                Some(json!({"alg": alg, "content": c["checksumValue"]}))
            })
            .collect()
    };
    let component = |p: &Value, ty: &str| {
        let mut c = json!({
            "type": ty,
            "bom-ref": p["SPDXID"],
            "name": p["name"],
        });
        if let Some(v) = p["versionInfo"].as_str() {
            c["version"] = json!(v);
        }
        if let Some(u) = purl(p) {
            c["purl"] = json!(u);
        }
        let h = hashes(p);
        if !h.is_empty() {
            c["hashes"] = json!(h);
        }
        let mut props = Vec::new();
        for (field, name) in [("sourceInfo", "kiln:found"), ("comment", "kiln:comment")] {
            if let Some(v) = p[field].as_str() {
                props.push(json!({"name": name, "value": v}));
            }
        }
        if !props.is_empty() {
            c["properties"] = json!(props);
        }
        if let Some(vcs) = p["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["referenceType"] == "vcs")
        {
            c["externalReferences"] = json!([{"type": "vcs", "url": vcs["referenceLocator"]}]);
        }
        c
    };
    let mut metadata_component = None;
    let mut components = Vec::new();
    for p in packages {
        let id = p["SPDXID"].as_str().unwrap_or("");
        if id == root_id {
            let ty = if p["primaryPackagePurpose"] == "CONTAINER" {
                "container"
            } else {
                "file"
            };
            metadata_component = Some(component(p, ty));
        } else {
            let ty = if p["primaryPackagePurpose"] == "CONTAINER" {
                "container"
            } else {
                "library"
            };
            components.push(component(p, ty));
        }
    }
    for f in doc["files"].as_array().into_iter().flatten() {
        components.push(json!({
            "type": "file",
            "bom-ref": f["SPDXID"],
            "name": f["fileName"],
            "hashes": hashes(f),
        }));
    }
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in doc["relationships"].as_array().into_iter().flatten() {
        let (a, t, b) = (
            r["spdxElementId"].as_str().unwrap_or(""),
            r["relationshipType"].as_str().unwrap_or(""),
            r["relatedSpdxElement"].as_str().unwrap_or(""),
        );
        if (t == "CONTAINS" || t == "DEPENDS_ON") && !b.starts_with("SPDXRef-File-") {
            deps.entry(a.to_owned()).or_default().push(b.to_owned());
        }
    }
    let dependencies: Vec<Value> = deps
        .into_iter()
        .map(|(r, mut on)| {
            on.sort();
            on.dedup();
            json!({"ref": r, "dependsOn": on})
        })
        .collect();
    let created = doc["creationInfo"]["created"].clone();
    let tool_version = doc["creationInfo"]["creators"][0]
        .as_str()
        .and_then(|c| c.strip_prefix("Tool: kiln-"))
        .unwrap_or(env!("CARGO_PKG_VERSION"));
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": "kiln", "version": tool_version}]},
            "component": metadata_component.ok_or("the SPDX document lacks its described package")?,
        },
        "components": components,
        "dependencies": dependencies,
    }))
}
