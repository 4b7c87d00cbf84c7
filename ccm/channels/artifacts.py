"""What was sent, kept exactly: every rendered output (email MIME, SMS text, PDF, portal HTML) stored under
the data dir, content-addressed by SHA-256, and checked against its hash whenever it is read back."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """Files named by the SHA-256 of their content, fanned out by its first two bytes: <root>/ab/cd/abcd...

    Writing is atomic (a temporary file, fsync, rename), so a crash never leaves half an artifact under a
    valid name; writing the same content twice stores it once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ArtifactMissing(f"'{sha256}' is not an artifact hash")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, content: bytes) -> Artifact:
        digest = hashlib.sha256(content).hexdigest()
        target = self.path_of(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(content)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return Artifact(sha256=digest, size=len(content))

    def get(self, sha256: str) -> bytes:
        """The artifact's bytes, only if they still hash to its name."""
        path = self.path_of(sha256)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {sha256} is not in the store") from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            raise ArtifactCorrupted(
                f"artifact {sha256} was altered on disk: its content now hashes to {actual}"
            )
        return content

    def verify(self, sha256: str) -> None:
        self.get(sha256)
