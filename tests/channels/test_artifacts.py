"""The artifact store keeps exactly what was sent and notices when it is changed."""

from __future__ import annotations

import hashlib
import os
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
    assert path.parent.name == artifact.sha256[:2]
    assert path.parent.parent == store.root
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


def test_several_stored_at_once_answer_in_order_and_store_each_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    contents = [f"letter {n}".encode() for n in range(20)] + [b"letter 3", b""]
    artifacts = store.put_many(contents)
    assert [a.sha256 for a in artifacts] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert [a.size for a in artifacts] == [len(c) for c in contents]
    assert all(store.get(a.sha256) == c for a, c in zip(artifacts, contents, strict=True))
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted({a.sha256 for a in artifacts})  # no temporary files, the repeated one once


def test_a_failure_while_storing_several_leaves_no_partial_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    good, bad = b"the first letter", b"the second letter"
    blocked = hashlib.sha256(bad).hexdigest()[:2]
    assert blocked != hashlib.sha256(good).hexdigest()[:2]
    (tmp_path / blocked).write_bytes(b"")  # a file where the second one's directory must go
    with pytest.raises(FileExistsError):
        store.put_many([good, bad])
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [blocked]
    with pytest.raises(ArtifactMissing):
        store.get(hashlib.sha256(good).hexdigest())


def test_an_artifact_stored_by_an_earlier_version_is_found_checked_and_not_stored_again(
    tmp_path: Path,
) -> None:
    """Earlier versions wrote <root>/ab/cd/abcd...: a store they filled keeps working."""
    store = ArtifactStore(tmp_path)
    content = b"a letter sent last year"
    digest = hashlib.sha256(content).hexdigest()
    legacy = tmp_path / digest[:2] / digest[2:4] / digest
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(content)

    assert store.get(digest) == content
    assert store.put(content).sha256 == digest
    assert not store.path_of(digest).exists()  # not written a second time
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [legacy]

    legacy.write_bytes(b"a letter sent last yeaR")
    with pytest.raises(ArtifactCorrupted, match=f"artifact {digest} was altered"):
        store.get(digest)
    legacy.unlink()
    with pytest.raises(ArtifactMissing, match="not in the store"):
        store.get(digest)


def test_storing_makes_the_new_names_durable_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename reaches the disk only when its directory is fsynced: the files' directories are, and the
    store's root when a directory was made in it. (os.fsync is watched, not replaced: nothing here can
    cut the power.)"""
    store = ArtifactStore(tmp_path)
    first = store.put(b"the first letter")
    synced: list[int] = []
    real_fsync = os.fsync

    def watched(handle: int) -> None:
        synced.append(os.fstat(handle).st_ino)
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", watched)
    contents = [b"the first letter", *(f"letter {n}".encode() for n in range(30))]
    artifacts = store.put_many(contents)
    files = {store.path_of(a.sha256).stat().st_ino for a in artifacts if a != first}
    directories = {store.path_of(a.sha256).parent.stat().st_ino for a in artifacts if a != first}
    assert files <= set(synced)
    assert directories <= set(synced)
    assert tmp_path.stat().st_ino in synced  # new directories were made in it
    assert store.path_of(first.sha256).stat().st_ino not in synced  # stored before: not written again
