#!/usr/bin/env python3
"""Independent check of tests/data/merkle-blake3-golden.json: RFC 9162 MTH, PATH and PROOF
transcribed from the RFC, over Python's `blake3` (pip install blake3). Exits non-zero on a mismatch."""
import blake3, json
def H(b): return blake3.blake3(b).digest()
def leaf(d): return H(b"\x00"+d)
def node(l,r): return H(b"\x01"+l+r)
def k_of(n):
    k=1
    while k*2<n: k*=2
    return k
def mth(D):
    n=len(D)
    if n==0: return H(b"")
    if n==1: return D[0]
    k=k_of(n); return node(mth(D[:k]),mth(D[k:]))
def path(m,D):
    n=len(D)
    if n==1: return []
    k=k_of(n)
    if m<k: return path(m,D[:k])+[mth(D[k:])]
    return path(m-k,D[k:])+[mth(D[:k])]
def subproof(m,D,b):
    n=len(D)
    if m==n: return [] if b else [mth(D)]
    k=k_of(n)
    if m<=k: return subproof(m,D[:k],b)+[mth(D[k:])]
    return subproof(m-k,D[k:],False)+[mth(D[:k])]
def proof(m,D): return subproof(m,D,True)
L=[leaf(b"leaf-%d"%i) for i in range(1000)]
import os
g=json.load(open(os.path.join(os.path.dirname(__file__), '..', 'data', 'merkle-blake3-golden.json')))
# cross-check existing
for r in g['roots']:
    assert mth(L[:r['size']]).hex()==r['root'], r
for c in g['inclusion']:
    assert [h.hex() for h in path(c['index'],L[:c['size']])]==c['proof'], c
for c in g['consistency']:
    assert [h.hex() for h in proof(c['from'],L[:c['to']])]==c['proof'], c
print("existing golden values match an independent Python RFC 9162 implementation")
