"""The cold tier: chunk blobs that left Redis, in a blob store behind a narrow interface.

Redis keeps every stream's record, spans, retrieval vectors and, for a cold chunk, a pointer (its
size and SHA-256); the blob itself lives here. A blob is written whole or not at all (a temporary
file, fsynced, renamed, the folder fsynced) and checked against its SHA-256 when read back, so a
damaged file is DATA_LOSS, never a wrong answer. `BlobTier` is what another backend (an
S3-compatible store) would implement.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from longwatch.memory.records import CorruptData, StoreFull

SUFFIX = ".safetensors"
# What a tier holds of a chunk: its K/V blob, and the pictures kept with it (memory/serialization.py).
KINDS = {"chunk": SUFFIX, "pictures": ".pictures" + SUFFIX}


def blob_name(index: int, kind: str) -> str:
    """The file (or object) name of chunk `index`'s blob of this kind."""
    return f"{int(index)}{KINDS[kind]}"


class BlobTier(ABC):
    """Blobs by (stream id, chunk index, kind): kind is one of KINDS."""

    @abstractmethod
    def put(self, stream_id: str, index: int, blob: bytes, kind: str = "chunk") -> None:
        """Store a blob durably (it survives a crash once this returns); StoreFull when out of room."""

    @abstractmethod
    def get(self, stream_id: str, index: int, kind: str = "chunk") -> bytes | None:
        """The blob, or None if there is none."""

    @abstractmethod
    def delete(self, stream_id: str, indices: list[int], kinds: tuple[str, ...] = tuple(KINDS)) -> None:
        """Remove these chunks' blobs of these kinds; absent ones are skipped."""

    @abstractmethod
    def delete_stream(self, stream_id: str) -> None:
        """Remove every blob of the stream."""

    @abstractmethod
    def bytes_used(self) -> int:
        """Bytes the tier's blobs take."""


def checked(blob: bytes | None, sha256: str, where: str) -> bytes:
    """`blob` if it is there and matches its recorded SHA-256; else CorruptData naming it."""
    if blob is None:
        raise CorruptData(f"{where}: the cold tier has no blob for it")
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise CorruptData(f"{where}: the cold tier's blob does not match its SHA-256 (damaged on disk)")
    return blob


def stream_folder(stream_id: str) -> str:
    """A stream's folder (or object prefix) in a tier: never "." or "..", whatever the id."""
    return f"stream-{stream_id}"


class LocalBlobTier(BlobTier):
    """A folder: <root>/stream-<stream id>/<index>.safetensors (and <index>.pictures.safetensors)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _folder(self, stream_id: str) -> Path:
        # Stored ids are [A-Za-z0-9._~-]: with the prefix, always a plain name inside the root (an
        # id ".." once made rmtree of the stream's folder remove the whole state folder).
        return self.root / stream_folder(stream_id)

    def put(self, stream_id: str, index: int, blob: bytes, kind: str = "chunk") -> None:
        folder = self._folder(stream_id)
        folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{index}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / blob_name(index, kind))
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"the cold tier at {self.root} is full: chunks stay in Redis") from None
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, stream_id: str, index: int, kind: str = "chunk") -> bytes | None:
        try:
            return (self._folder(stream_id) / blob_name(index, kind)).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, stream_id: str, indices: list[int], kinds: tuple[str, ...] = tuple(KINDS)) -> None:
        for index in indices:
            for kind in kinds:
                (self._folder(stream_id) / blob_name(index, kind)).unlink(missing_ok=True)

    def delete_stream(self, stream_id: str) -> None:
        shutil.rmtree(self._folder(stream_id), ignore_errors=True)

    def bytes_used(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob(f"*/*{SUFFIX}"))
