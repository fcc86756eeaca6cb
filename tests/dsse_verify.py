"""An independent check of kiln's DSSE envelopes: securesystemslib's PAE and signature
verification (not kiln's), against the SPKI PEM public key.

usage: dsse_verify.py ENVELOPE_FILE PUBLIC_KEY_PEM KEYID KEY_OWN_ID
The key is presented to the verifier under KEYID. KEY_OWN_ID is what kiln says the key's id
is: it must be "sha256:" + the hex SHA-256 of the key's SPKI DER (exit 2 otherwise).
exit 0: the envelope verifies with the key; 1: it does not; 3: the verifier itself failed.
"""
import hashlib
import json
import sys

from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey


def main():
    envelope_file, pem_file, keyid, own_id = sys.argv[1:5]
    with open(pem_file, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    computed = "sha256:" + hashlib.sha256(der).hexdigest()
    if computed != own_id:
        print(f"the key id {own_id} is not the SPKI DER's digest {computed}")
        return 2
    key = SSlibKey.from_crypto(public, keyid=keyid)
    with open(envelope_file, "rb") as f:
        envelope = Envelope.from_dict(json.load(f))
    try:
        accepted = envelope.verify([key], 1)
    except VerificationError as e:
        print(f"not verified: {e}")
        return 1
    print(f"verified: {sorted(accepted)} {key.keytype} {key.scheme}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # anything but a verdict: not a "no"
        print(f"the verifier failed: {e!r}")
        sys.exit(3)
