"""The cold tier on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...), for those who
have one: `serve --cold-s3 s3://BUCKET/PREFIX [--s3-endpoint URL]` (the `s3` extra: boto3).

Objects are <prefix>/stream-<stream id>/<index>.safetensors (and <index>.pictures.safetensors). A PUT stores an object whole or not at all;
what Redis points at is checked against its SHA-256 when read back (memory/tier.py). Credentials
come the way boto3 finds them (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, a role).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from longwatch.memory.records import StoreUnavailable
from longwatch.memory.tier import KINDS, BlobTier, blob_name, stream_folder

_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys


class S3BlobTier(BlobTier):
    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"the cold tier's S3 location must look like s3://BUCKET/PREFIX, got {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ValueError("an S3 cold tier needs boto3: pip install 'longwatch[s3]'") from None
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self._s3 = client
        self._errors = self._s3.exceptions

    def _key(self, stream_id: str, index: int | None = None, kind: str = "chunk") -> str:
        folder = (
            f"{self.prefix}/{stream_folder(stream_id)}/" if self.prefix else f"{stream_folder(stream_id)}/"
        )
        return folder if index is None else folder + blob_name(index, kind)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One S3 call; a store that cannot be reached or refuses is StoreUnavailable, one line."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except self._errors.NoSuchKey:
            raise
        except (BotoCoreError, ClientError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreUnavailable(
                f"the S3 cold tier s3://{self.bucket}/{self.prefix} failed to {what}: {text}"
            ) from e

    def put(self, stream_id: str, index: int, blob: bytes, kind: str = "chunk") -> None:
        self._call(
            "store a chunk",
            self._s3.put_object,
            Bucket=self.bucket,
            Key=self._key(stream_id, index, kind),
            Body=blob,
        )

    def get(self, stream_id: str, index: int, kind: str = "chunk") -> bytes | None:
        try:
            reply = self._call(
                "read a chunk", self._s3.get_object, Bucket=self.bucket, Key=self._key(stream_id, index, kind)
            )
        except self._errors.NoSuchKey:
            return None
        return bytes(reply["Body"].read())

    def delete(self, stream_id: str, indices: list[int], kinds: tuple[str, ...] = tuple(KINDS)) -> None:
        self._delete_keys([self._key(stream_id, i, kind) for i in indices for kind in kinds])

    def delete_stream(self, stream_id: str) -> None:
        self._delete_keys([key for key, _ in self._list(self._key(stream_id))])

    def bytes_used(self) -> int:
        return sum(size for _, size in self._list(f"{self.prefix}/" if self.prefix else ""))

    def _list(self, prefix: str) -> list[tuple[str, int]]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return self._call(
            "list chunks",
            lambda: [(o["Key"], int(o["Size"])) for page in pages for o in page.get("Contents", [])],
        )

    def _delete_keys(self, keys: list[str]) -> None:
        for at in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[at : at + _DELETE_BATCH]]
            self._call(
                "delete chunks",
                self._s3.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
