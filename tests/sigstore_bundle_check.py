"""An independent check of a Sigstore bundle kiln wrote: Sigstore's own protobuf-specs models
(the `sigstore-protobuf-specs` package) must parse it, and writing it back must give the same
document (so no field is misnamed or mistyped: one the models do not know would be dropped).
An empty `tlogEntries` is proto3's default, which the models leave out.

usage: sigstore_bundle_check.py BUNDLE_FILE
exit 0: it parses and round-trips; 1: it does not; 3: the checker itself failed.
"""
import json
import sys

from sigstore_protobuf_specs.dev.sigstore.bundle.v1 import Bundle


def main():
    with open(sys.argv[1]) as f:
        text = f.read()
    original = json.loads(text)
    try:
        parsed = Bundle.__new__(Bundle).from_json(text)
    except Exception as e:
        print(f"not a bundle: {e!r}")
        return 1
    back = json.loads(parsed.to_json())
    if original.get("verificationMaterial", {}).get("tlogEntries") == []:
        del original["verificationMaterial"]["tlogEntries"]
    if back != original:
        print(f"the bundle does not round-trip:\n{json.dumps(original)}\n{json.dumps(back)}")
        return 1
    material = parsed.verification_material
    print(
        f"bundle {parsed.media_type}: hint {material.public_key.hint}, "
        f"{len(parsed.dsse_envelope.signatures)} signature(s)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"the checker failed: {e!r}")
        sys.exit(3)
