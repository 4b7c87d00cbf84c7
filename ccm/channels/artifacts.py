"""What was sent, kept exactly: every rendered output (email MIME, SMS text, PDF, portal HTML) stored under
the data dir, content-addressed by SHA-256, and checked against its hash whenever it is read back."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_SYNC_THREADS = 8
_syncing: ThreadPoolExecutor | None = None
_syncing_lock = threading.Lock()


def _fsync_all(handles: Sequence[int]) -> None:
    """fsync each file, side by side when there are several (fsync waits on the disk, not on the GIL)."""
    global _syncing
    if len(handles) <= 1:
        for handle in handles:
            os.fsync(handle)
        return
    with _syncing_lock:
        if _syncing is None:
            _syncing = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="ccm-fsync")
    # Every one finished before returning, even when one fails: the caller closes the files next.
    pending = [_syncing.submit(os.fsync, handle) for handle in handles]
    futures.wait(pending)
    for done in pending:
        done.result()


def _sync_directories(directories: set[Path]) -> None:
    """fsync each directory, so that the names just made in it survive a crash as well as the files'
    contents (a rename is only durable once its directory is: without a journal, not even in order)."""
    handles: list[int] = []
    try:
        for directory in directories:
            handles.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        _fsync_all(handles)
    finally:
        for handle in handles:
            os.close(handle)


class ArtifactError(Exception):
    """An artifact cannot be read as stored."""


class ArtifactMissing(ArtifactError):
    pass


class ArtifactCorrupted(ArtifactError):
    """The bytes on disk no longer hash to the artifact's name: they were changed after they were written."""


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


class ArtifactStore:
    """Files named by the SHA-256 of their content, fanned out by its first byte: <root>/ab/abcd...

    Writing is atomic (a temporary file, fsync, rename), so a crash never leaves half an artifact under a
    valid name; writing the same content twice stores it once.

    Earlier versions fanned out by two bytes (<root>/ab/cd/abcd...): what they stored there is still found,
    checked and not written again. One level of 256 directories instead of up to 65,536, because with two
    nearly every artifact of a store made a directory as well as its file, and making an inode is most of
    what storing costs (on a filesystem without a journal, far more: each new inode is looked for past every
    one freed in the last minute).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        """Where the artifact is written."""
        if not _SHA256.match(sha256):
            raise ArtifactMissing(f"'{sha256}' is not an artifact hash")
        return self.root / sha256[:2] / sha256

    def _paths(self, sha256: str) -> tuple[Path, Path]:
        """Where it may be: where it is written now, then where earlier versions wrote it."""
        path = self.path_of(sha256)
        return path, self.root / sha256[:2] / sha256[2:4] / sha256

    def _has(self, sha256: str) -> bool:
        return any(path.exists() for path in self._paths(sha256))

    def put(self, content: bytes) -> Artifact:
        return self.put_many([content])[0]

    def put_many(self, contents: Sequence[bytes]) -> list[Artifact]:
        """Store several at once, answering their artifacts in order: each written to a temporary file, all
        made durable together, then each renamed into place. The fsyncs run side by side, which the
        filesystem commits in a few journal writes where one after another costs one each (a chunk of
        emails spent a quarter of its time waiting on them). An exception leaves no temporary file behind;
        what was renamed before it is stored, whole. Last, the directories that gained a name are fsynced:
        when this returns, a crash loses neither the bytes nor their names."""
        artifacts = [
            Artifact(sha256=hashlib.sha256(content).hexdigest(), size=len(content)) for content in contents
        ]
        new = {}
        for artifact, content in zip(artifacts, contents, strict=True):
            if artifact.sha256 not in new and not self._has(artifact.sha256):
                new[artifact.sha256] = content
        handles: list[int] = []  # still open
        temporaries: list[tuple[str, Path]] = []  # each with its final name
        directories: set[Path] = set()  # whose new entries must reach the disk too
        try:
            for digest, content in new.items():
                target = self.path_of(digest)
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    directories.add(self.root)
                directories.add(target.parent)
                handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
                handles.append(handle)
                temporaries.append((temporary, target))
                view = memoryview(content)
                while view:
                    view = view[os.write(handle, view) :]
            _fsync_all(handles)
            while handles:
                os.close(handles.pop())
            for temporary, target in temporaries:
                os.replace(temporary, target)
            _sync_directories(directories)
        except BaseException:
            for handle in handles:
                with contextlib.suppress(OSError):
                    os.close(handle)
            for temporary, _ in temporaries:
                Path(temporary).unlink(missing_ok=True)
            raise
        return artifacts

    def get(self, sha256: str) -> bytes:
        """The artifact's bytes, only if they still hash to its name."""
        for path in self._paths(sha256):
            try:
                content = path.read_bytes()
                break
            except FileNotFoundError:
                continue
        else:
            raise ArtifactMissing(f"artifact {sha256} is not in the store")
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            raise ArtifactCorrupted(
                f"artifact {sha256} was altered on disk: its content now hashes to {actual}"
            )
        return content

    def verify(self, sha256: str) -> None:
        self.get(sha256)
