"""RFC 6962 hashing against the published Certificate Transparency vectors, and proofs that
verify for every leaf and every pair of sizes, and fail when anything is changed."""

from __future__ import annotations

import pytest

from jupyter_qguard.audit import merkle

LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASHED = [merkle.leaf_hash(x) for x in LEAVES]


def test_roots_match_the_published_vectors_for_every_size():
    tree = merkle.CompactTree()
    assert tree.root().hex() == ROOTS[0] == merkle.root([]).hex()
    for n in range(1, 9):
        tree.append(HASHED[n - 1])
        assert merkle.root(HASHED[:n]).hex() == ROOTS[n]
        assert tree.root().hex() == ROOTS[n]


def test_inclusion_proofs_match_the_published_vectors():
    assert [p.hex() for p in merkle.inclusion_proof(HASHED, 0)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [p.hex() for p in merkle.inclusion_proof(HASHED, 5)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


MANY = [merkle.leaf_hash(bytes([i, i * 7 % 256])) for i in range(40)]


@pytest.mark.parametrize("size", range(1, 41))
def test_every_inclusion_proof_verifies_and_tampering_fails(size):
    leaves = MANY[:size]
    head = merkle.root(leaves)
    for i in range(size):
        proof = merkle.inclusion_proof(leaves, i)
        assert merkle.verify_inclusion(leaves[i], i, size, proof, head)
        other = (i + 1) % size
        if other != i:
            assert not merkle.verify_inclusion(leaves[other], i, size, proof, head)
        if proof:
            bad = [bytes(32)] + proof[1:]
            assert not merkle.verify_inclusion(leaves[i], i, size, bad, head)
        # the root of another size (a checkpoint signs size and root together) does not verify
        if size < len(MANY):
            bigger = merkle.root(MANY[: size + 1])
            assert not merkle.verify_inclusion(leaves[i], i, size + 1, proof, bigger)


@pytest.mark.parametrize("new", range(1, 25))
def test_every_consistency_proof_verifies_and_a_rewritten_history_fails(new):
    leaves = MANY[:new]
    new_root = merkle.root(leaves)
    for old in range(1, new + 1):
        old_root = merkle.root(leaves[:old])
        proof = merkle.consistency_proof(leaves, old)
        assert merkle.verify_consistency(old, new, old_root, new_root, proof)
        # a different past (one old entry edited) is not consistent with the new tree
        edited = list(leaves[:old])
        edited[0] = merkle.leaf_hash(b"edited")
        assert not merkle.verify_consistency(old, new, merkle.root(edited), new_root, proof)
        if old < new:
            assert not merkle.verify_consistency(old, new, old_root, bytes(32), proof)


def test_the_compact_tree_agrees_with_the_full_tree_on_65536_leaves():
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(1 << 16)]
    tree = merkle.CompactTree()
    for leaf in leaves:
        tree.append(leaf)
    assert tree.root() == merkle.root(leaves)
    assert tree.size == 1 << 16
