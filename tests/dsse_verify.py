"""An independent check of kiln's DSSE envelopes: securesystemslib's PAE and signature
verification (not kiln's), against the SPKI PEM public key.

usage: dsse_verify.py ENVELOPE_FILE PUBLIC_KEY_PEM KEYID
exit 0: the envelope verifies with the key; 1: it does not.
"""
import json
import sys

from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

envelope_file, pem_file, keyid = sys.argv[1:4]
with open(pem_file, "rb") as f:
    public = serialization.load_pem_public_key(f.read())
key = SSlibKey.from_crypto(public, keyid=keyid)
with open(envelope_file, "rb") as f:
    envelope = Envelope.from_dict(json.load(f))
try:
    accepted = envelope.verify([key], 1)
except VerificationError as e:
    print(f"not verified: {e}")
    sys.exit(1)
print(f"verified: {sorted(accepted)} {key.keytype} {key.scheme}")
