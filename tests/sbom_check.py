"""An independent check of kiln's SBOMs, with the formats' own tools.

    sbom_check.py spdx FILE.spdx.json       SPDX's spdx-tools: parse, then validate (SPDX 2.3)
    sbom_check.py cyclonedx FILE.cdx.json   CycloneDX's library: strict JSON schema 1.5

Prints "ok" and a count on success; prints every validation message and exits 1 otherwise.
"""
import sys


def spdx(path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    doc = parse_file(path)
    messages = validate_full_spdx_document(doc)
    for m in messages:
        print(f"invalid: {m.validation_message} ({m.context})")
    if messages:
        sys.exit(1)
    print(f"ok: SPDX {doc.creation_info.spdx_version}, {len(doc.packages)} packages, "
          f"{len(doc.files)} files, {len(doc.relationships)} relationships")


def cyclonedx(path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    with open(path, encoding="utf-8") as f:
        text = f.read()
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if error is not None:
        print(f"invalid: {error}")
        sys.exit(1)
    print("ok: CycloneDX 1.5")


if __name__ == "__main__":
    {"spdx": spdx, "cyclonedx": cyclonedx}[sys.argv[1]](sys.argv[2])
