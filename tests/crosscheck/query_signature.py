#!/usr/bin/env python3
"""Independent check of the golden query signature (docs/protocol.md §7, src/crypto.rs
query_tests): the query message built from its definition, signed with Python's `cryptography`
Ed25519 and hashed with `blake3` (pip install blake3 cryptography). Exits non-zero on a mismatch."""
import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 test 1
WANT = ("26e210295696c58dd9737c0e92939bf31d9ac7a90069482dd641d8ee51047bcb"
        "859072a1c590381fce07e6c1285947ddba3e504bc87205907bc3fddb6ab85c0e")

def query_message(method: str, time_ms: int, nonce: bytes, request: bytes) -> bytes:
    return (b"taizhang/v1/query\n" + method.encode() + b"\n" + str(time_ms).encode() + b"\n"
            + nonce.hex().encode() + b"\n" + blake3.blake3(request).digest())

key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SECRET))
# GetEntryRequest{index: 7} serializes to 08 07.
sig = key.sign(query_message("/taizhang.v1.Ledger/GetEntry", 1767225600000, bytes(range(16)),
                             bytes([0x08, 0x07]))).hex()
print(sig)
if sig != WANT:
    raise SystemExit(f"mismatch: want {WANT}")
print("ok: the query signature matches")
