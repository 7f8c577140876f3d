"""Files sent to the service in pieces (IngestUpload), kept on disk while they are ingested.

A container's index may sit at its end (an MP4 without faststart), so an upload is read whole
before decoding starts: it goes to a spool file under the state folder, counted against the
tenant's upload limit as it comes, and removed when its ingest ends, however it ends. Files left
by a killed process are removed at the next start.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from longwatch.stream.errors import BadRequest, DiskFull, QuotaExceeded

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".upload"
MAX_NAME_CHARS = 255


def upload_name(name: str) -> str:
    """The name an upload is shown under: the file's own name, without folders (else "upload")."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if len(name) > MAX_NAME_CHARS or any(c < " " or c == "\x7f" for c in name):
        raise BadRequest(f"an upload's name must be at most {MAX_NAME_CHARS} printable characters")
    return name or "upload"


class UploadSpool:
    """The folder uploads wait in while they are ingested."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for left in folder.glob(f"*{SPOOL_SUFFIX}"):  # from a process that was killed
            left.unlink(missing_ok=True)
            log.info("removed %s, an upload a stopped service left behind", left.name)

    @contextmanager
    def receive(self, pieces: Iterable[bytes], limit_bytes: int, what: str) -> Iterator[Path]:
        """Write `pieces` to a spool file and yield its path; the file goes when the block ends.

        limit_bytes: the most the upload may hold (0: no limit); past it, QuotaExceeded naming
        the limit. A full disk is DiskFull; nothing is left behind either way.
        """
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=SPOOL_SUFFIX)
        path = Path(name)
        try:
            received = 0
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    received += len(piece)
                    if limit_bytes and received > limit_bytes:
                        raise QuotaExceeded(
                            f"{what} is larger than this tenant's upload limit of {limit_bytes / 1e9:g} GB "
                            "(max_upload_gb)"
                        )
                    try:
                        f.write(piece)
                    except OSError as e:
                        if e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise DiskFull(f"no room for {what} under {self.folder}: disk full") from None
                        raise
            if received == 0:
                raise BadRequest(f"{what} is empty: no file was sent")
            yield path
        finally:
            path.unlink(missing_ok=True)
