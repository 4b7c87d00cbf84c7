"""The artifact store keeps exactly what was sent and notices when it is changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ccm.channels.artifacts import ArtifactCorrupted, ArtifactMissing, ArtifactStore


def test_put_and_get_by_content_hash(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    content = b"%PDF-1.7 a letter for Amelia"
    artifact = store.put(content)
    assert artifact.sha256 == hashlib.sha256(content).hexdigest()
    assert artifact.size == len(content)
    assert store.get(artifact.sha256) == content
    path = store.path_of(artifact.sha256)
    assert path.parent.parent.name == artifact.sha256[:2]
    assert store.put(content) == artifact  # stored once
    assert [p.name for p in path.parent.iterdir()] == [artifact.sha256]  # no temporary files left behind


def test_a_flipped_byte_is_named(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    artifact = store.put(b"Dear customer, your claim is approved.")
    path = store.path_of(artifact.sha256)
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupted, match=f"artifact {artifact.sha256} was altered"):
        store.get(artifact.sha256)


def test_missing_and_malformed_hashes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactMissing, match="not in the store"):
        store.get("0" * 64)
    with pytest.raises(ArtifactMissing, match="not an artifact hash"):
        store.get("../../etc/passwd")
