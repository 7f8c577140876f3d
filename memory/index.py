"""Per-stream FAISS indexes over chunk retrieval vectors, rebuilt from the store after a restart.

Flat inner-product search (exact) is the default: at 1 fps and 8 frames per chunk an hour of video is
450 chunks, and a flat scan of 100k vectors of a few thousand dims still takes milliseconds. Past
roughly 100k chunks per stream an approximate index (IVF or HNSW over the same inner product) would
replace IndexFlatIP inside StreamIndex; nothing outside this module would change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from longwatch.memory.store import ChunkStore


class StreamIndex:
    """Exact inner-product search over one stream's chunk vectors, ids = chunk indices.

    add() is an upsert (re-adding an id replaces its vector), so replaying commits after a rebuild
    cannot create duplicates. A lock serialises writers with readers: FAISS does not allow a search
    concurrent with an add on the same index.
    """

    def __init__(self, dim: int | None = None) -> None:
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._lock = threading.Lock()
        self._dim = dim
        self._index: faiss.IndexIDMap2 | None = None if dim is None else _new_index(dim)
        self._ids: set[int] = set()
        self.version = ""  # the store's index_version this index reflects (IndexRegistry.current)

    @classmethod
    def from_vectors(cls, ids: Sequence[int], vectors: np.ndarray) -> StreamIndex:
        """An index holding ``vectors`` (n, dim) under ``ids``; an empty input gives a dim-less index."""
        index = cls(int(vectors.shape[1]) if len(ids) else None)
        if len(ids):
            index.add(ids, vectors)
        return index

    @property
    def dim(self) -> int | None:
        """Vector size, or None until the first add of an index created without one."""
        return self._dim

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, chunk_index: object) -> bool:
        return chunk_index in self._ids

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._ids)

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Insert or replace vectors (n, dim) under chunk ids (n,)."""
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)  # (n,)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim == 1:
            vecs = vecs[None, :]  # (1, dim)
        if vecs.ndim != 2 or vecs.shape[0] != ids_arr.shape[0]:
            raise ValueError(f"expected vectors (n={ids_arr.shape[0]}, dim), got {vecs.shape}")
        if len(set(ids_arr.tolist())) != len(ids_arr):
            raise ValueError("ids passed to one add() must be distinct")
        with self._lock:
            if self._index is None:
                self._dim = int(vecs.shape[1])
                self._index = _new_index(self._dim)
            if vecs.shape[1] != self._dim:
                raise ValueError(f"vectors have dim {vecs.shape[1]}, index has dim {self._dim}")
            present = [i for i in ids_arr.tolist() if i in self._ids]
            if present:
                self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(present, dtype=np.int64)))
            self._index.add_with_ids(vecs, ids_arr)
            self._ids.update(ids_arr.tolist())

    def remove(self, ids: Iterable[int]) -> None:
        """Drop vectors by chunk id; unknown ids are ignored."""
        with self._lock:
            gone = [i for i in ids if i in self._ids]
            if gone and self._index is not None:
                self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, dtype=np.int64)))
                self._ids.difference_update(gone)

    def search(
        self, query: np.ndarray, k: int, allowed_ids: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, inner product), best first; with allowed_ids only those are candidates."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)  # (1, dim)
        with self._lock:
            if self._index is None or k < 1:
                return []
            if q.shape[1] != self._dim:
                raise ValueError(f"query has dim {q.shape[1]}, index has dim {self._dim}")
            params = None
            candidates = len(self._ids)
            if allowed_ids is not None:
                allowed = np.asarray(sorted(self._ids.intersection(allowed_ids)), dtype=np.int64)
                if allowed.size == 0:
                    return []
                # The selector filters by external id inside the scan: no over-fetch and re-filter.
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
                candidates = int(allowed.size)
            k = min(k, candidates)
            if k == 0:
                return []
            scores, labels = self._index.search(q, k, params=params)  # (1, k), (1, k)
        return [(int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True) if i >= 0]


class IndexRegistry:
    """stream id -> StreamIndex, loaded lazily from the store so a restarted service rebuilds them,
    and brought up to date before each search (`current`) so replicas see each other's commits.

    Call add() after the store committed the chunk: the first touch of a stream builds its index
    from the store (which then already holds that chunk) and the add is an idempotent upsert.
    Builds happen under a per-stream lock, so one slow build does not block other streams and an
    add racing a build waits for it instead of being lost.
    """

    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        self._lock = threading.Lock()  # guards the two dicts, never held across I/O
        self._indexes: dict[str, StreamIndex] = {}
        self._build_locks: dict[str, threading.Lock] = {}

    def get(self, stream_id: str) -> StreamIndex:
        """The stream's index, built from store.retrieval_vectors on first use."""
        while True:
            with self._lock:
                index = self._indexes.get(stream_id)
                if index is not None:
                    return index
                build_lock = self._build_locks.setdefault(stream_id, threading.Lock())
            with build_lock:
                with self._lock:
                    if self._build_locks.get(stream_id) is not build_lock:
                        continue  # dropped while we waited: start over with the current lock
                    index = self._indexes.get(stream_id)
                if index is None:
                    version = self._store.index_version(stream_id)  # first: the vectors are as new
                    ids, vectors = self._store.retrieval_vectors(stream_id)  # (n, dim)
                    index = StreamIndex.from_vectors(ids, vectors)
                    index.version = version
                    with self._lock:
                        self._indexes[stream_id] = index
                return index

    def current(self, stream_id: str, version: str | None = None) -> StreamIndex:
        """The stream's index brought up to date with the store: chunks committed or dropped since
        it was read, by this process or another replica on the same Redis. One HMGET when nothing
        changed (none when the caller read `version` already, as store.index_versions does for
        many streams at once); else the chunk ids, and the vectors of the new ones only. A stream
        made again under the same id is rebuilt whole."""
        if version is None:
            version = self._store.index_version(stream_id)
        index = self.get(stream_id)
        if index.version == version:
            return index
        if index.version.partition(":")[0] != version.partition(":")[0]:  # another stream now
            self.drop(stream_id)
            return self.get(stream_id)
        stored = set(self._store.vector_ids(stream_id))
        held = index.ids()
        new = sorted(stored - held)
        if new:
            index.add(new, self._store.vectors_of(stream_id, new))
        index.remove(held - stored)
        index.version = version  # read before the ids: at worst the next call looks again
        return index

    def add(self, stream_id: str, index: int, vector: np.ndarray) -> None:
        """Record a committed chunk's vector (dim,) in the stream's index."""
        self.get(stream_id).add([index], np.asarray(vector, dtype=np.float32).reshape(1, -1))

    def search(
        self, stream_id: str, query: np.ndarray, k: int, allowed_ids: set[int] | None = None
    ) -> list[tuple[int, float]]:
        return self.get(stream_id).search(query, k, allowed_ids)

    def drop(self, stream_id: str) -> None:
        """Forget a stream's index (after delete_stream); the next get() rebuilds from the store."""
        with self._lock:
            build_lock = self._build_locks.get(stream_id)
        if build_lock is None:
            return
        with build_lock, self._lock:  # wait out a build in flight so it cannot re-insert afterwards
            self._indexes.pop(stream_id, None)
            self._build_locks.pop(stream_id, None)

    def loaded(self) -> list[str]:
        """Ids of the streams whose index is in memory."""
        with self._lock:
            return sorted(self._indexes)


def _new_index(dim: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
