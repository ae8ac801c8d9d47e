#!/usr/bin/env python3
"""A Taizhang client in Python, written from docs/protocol.md alone (no Rust code).

It generates gRPC stubs from ../../proto with grpcio-tools, then, against a running ledger:
  1. reads the checkpoint (public) and its key's chain head (a signed query, protocol §13);
  2. builds and signs a record (protocol §2, §3, §5): a root regulator registering a new
     regulator key (RegisterAuthority);
  3. submits it, and verifies the receipt offline: rebuilds the leaf bytes (§6.1), checks the
     leaf hash, the RFC 9162 inclusion proof (§10) and the ledger's signature on the checkpoint
     note (§8);
  4. reads the entry back with a signed GetEntry and compares it with the leaf it rebuilt.

    pip install -r requirements.txt
    python3 taizhang_client.py --server 127.0.0.1:50051 --key SECRET.key --ledger-key LEDGER.pub
"""
import argparse, base64, hashlib, os, struct, subprocess, sys, tempfile, time

import blake3
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")


def stubs():
    """Compiles proto/ into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="taizhang-pb-")
    files = [os.path.join(PROTO, "taizhang", "v1", f) for f in ("records.proto", "ledger.proto")]
    subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
                           f"--python_out={out}", f"--grpc_python_out={out}", *files])
    sys.path.insert(0, out)
    from taizhang.v1 import records_pb2, ledger_pb2, ledger_pb2_grpc  # noqa: E402
    return records_pb2, ledger_pb2, ledger_pb2_grpc


def read_key_line(path: str, tag: str) -> bytes:
    words = open(path).read().split()
    if not words or words[0] != tag:
        raise SystemExit(f"{path}: not a `{tag}` file")
    return bytes.fromhex(words[1])


def public_bytes(pk: Ed25519PublicKey) -> bytes:
    return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(pk: bytes) -> bytes:  # §4
    return blake3.blake3(b"taizhang/v1/key\n" + pk).digest()[:16]


def body_hash(body: bytes) -> bytes:  # §5: the next record's signer_prev
    return blake3.blake3(b"taizhang/v1/body\n" + body).digest()


def query_metadata(key: Ed25519PrivateKey, method: str, request) -> list:  # §13.1
    t, nonce = str(int(time.time() * 1000)), os.urandom(16).hex()
    msg = (b"taizhang/v1/query\n" + method.encode() + b"\n" + t.encode() + b"\n" + nonce.encode()
           + b"\n" + blake3.blake3(request.SerializeToString()).digest())
    return [("tz-key", key_id(public_bytes(key.public_key())).hex()), ("tz-time", t),
            ("tz-nonce", nonce), ("tz-signature", key.sign(msg).hex())]


def leaf_bytes(index, time_ms, prev, body, signature, cosignatures=()) -> bytes:  # §6.1
    out = b"\x01" + struct.pack(">QQ", index, time_ms) + prev
    out += struct.pack(">I", len(body)) + body + struct.pack(">I", 64) + signature
    out += struct.pack(">I", len(cosignatures))
    for kid, sig in cosignatures:
        out += struct.pack(">I", 16) + kid + struct.pack(">I", 64) + sig
    return out


def node(l, r):
    return blake3.blake3(b"\x01" + l + r).digest()


def root_from_inclusion(index, size, leaf_hash, proof):  # RFC 9162 §2.1.3.2
    if index >= size:
        raise ValueError("index beyond size")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ValueError("proof too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof too short")
    return r


def open_checkpoint(note: str, ledger_pk: bytes):  # §8: C2SP signed note, Ed25519
    text, _, sigs = note.partition("\n\n")
    text += "\n"
    origin, size, root = text.split("\n")[:3]
    key_hash = hashlib.sha256(origin.encode() + b"\n\x01" + ledger_pk).digest()[:4]
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        name, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64)
        if name == origin and raw[:4] == key_hash:
            Ed25519PublicKey.from_public_bytes(ledger_pk).verify(raw[4:], text.encode())
            return origin, int(size), base64.b64decode(root)
    raise ValueError("no signature by the ledger key on the checkpoint")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--key", required=True, help="secret key file of a root regulator")
    ap.add_argument("--ledger-key", required=True, help="the ledger's public key file")
    a = ap.parse_args()
    records_pb2, ledger_pb2, ledger_pb2_grpc = stubs()
    key = Ed25519PrivateKey.from_private_bytes(read_key_line(a.key, "taizhang-ed25519-secret"))
    ledger_pk = read_key_line(a.ledger_key, "taizhang-ed25519-public")
    me = key_id(public_bytes(key.public_key()))
    stub = ledger_pb2_grpc.LedgerStub(grpc.insecure_channel(a.server.removeprefix("http://")))

    cp = stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
    req = ledger_pb2.GetSignerHeadRequest(key_id=me)
    head = stub.GetSignerHead(req, metadata=query_metadata(key, "/taizhang.v1.Ledger/GetSignerHead", req))

    newcomer = Ed25519PrivateKey.generate()
    body = records_pb2.RecordBody(
        ledger_origin=cp.origin, signer=me, signer_seq=head.next_seq,
        signer_prev=head.prev_body_hash, client_time_ms=int(time.time() * 1000),
        register_authority=records_pb2.RegisterAuthority(authority=records_pb2.AuthorityKey(
            public_key=public_bytes(newcomer.public_key()), name="python-client regulator",
            agency=records_pb2.AGENCY_DRUG_REGULATION, jurisdiction="44")),
    ).SerializeToString()
    signature = key.sign(b"taizhang/v1/record\n" + body)  # §3
    receipt = stub.Submit(ledger_pb2.SubmitRequest(
        record=records_pb2.SignedRecord(body=body, signature=signature)))

    leaf = leaf_bytes(receipt.index, receipt.integrated_time_ms, receipt.prev_leaf_hash, body, signature)
    lh = blake3.blake3(b"\x00" + leaf).digest()
    assert lh == receipt.leaf_hash, "the receipt's leaf hash is not the leaf this record makes"
    origin, size, root = open_checkpoint(receipt.checkpoint, ledger_pk)
    assert origin == cp.origin and size == receipt.tree_size
    got = root_from_inclusion(receipt.index, size, lh, list(receipt.inclusion_proof))
    assert got == root, "the inclusion proof does not lead to the checkpoint's root"

    req = ledger_pb2.GetEntryRequest(index=receipt.index)
    entry = stub.GetEntry(req, metadata=query_metadata(key, "/taizhang.v1.Ledger/GetEntry", req))
    assert entry.leaf == leaf, "the stored leaf differs from the one rebuilt from the record"
    assert body_hash(body) != head.prev_body_hash
    print(f"ok: entry {receipt.index} verified offline against the checkpoint of size {size} "
          f"(leaf {lh.hex()[:16]}…), and read back with a signed query")


if __name__ == "__main__":
    main()
