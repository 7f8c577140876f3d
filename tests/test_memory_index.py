"""StreamIndex against numpy brute force, and IndexRegistry built from a real store."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from longwatch.memory.index import IndexRegistry, StreamIndex
from longwatch.proto.streams import StreamRecord


def brute_force(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int, allowed=None):
    """Top-k by inner product with numpy: the oracle for FAISS."""
    mask = np.ones(len(ids), dtype=bool) if allowed is None else np.isin(ids, list(allowed))
    cand_ids, cand = ids[mask], vectors[mask]
    scores = cand.astype(np.float64) @ query.astype(np.float64)  # (n_candidates,)
    order = np.argsort(-scores, kind="stable")[:k]
    return cand_ids[order].tolist(), scores[order]


@pytest.fixture
def random_index():
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000)[:300].astype(np.int64)  # sparse, unordered chunk ids
    vectors = rng.standard_normal((300, 48)).astype(np.float32)  # (n, dim)
    index = StreamIndex(48)
    index.add(ids[:100], vectors[:100])  # in two batches, like commits arriving over time
    index.add(ids[100:], vectors[100:])
    return index, ids, vectors, rng


def check_against_oracle(index, ids, vectors, query, k, allowed=None) -> None:
    got = index.search(query, k, allowed)
    want_ids, want_scores = brute_force(ids, vectors, query, k, allowed)
    assert [i for i, _ in got] == want_ids
    np.testing.assert_allclose([s for _, s in got], want_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_search_matches_brute_force(random_index, k) -> None:
    index, ids, vectors, rng = random_index
    assert len(index) == 300 and index.dim == 48
    for _ in range(5):
        check_against_oracle(index, ids, vectors, rng.standard_normal(48).astype(np.float32), k)


@pytest.mark.parametrize("k", [1, 4, 50])
def test_search_with_allowed_ids_matches_brute_force(random_index, k) -> None:
    index, ids, vectors, rng = random_index
    for _ in range(5):
        query = rng.standard_normal(48).astype(np.float32)
        allowed = set(rng.choice(ids, size=20, replace=False).tolist()) | {5000, 5001}  # plus unknown ids
        got = index.search(query, k, allowed)
        assert {i for i, _ in got} <= allowed
        assert len(got) == min(k, 20)
        check_against_oracle(index, ids, vectors, query, k, allowed)
    # the filter really constrains: the global best is excluded when not allowed
    query = vectors[7]
    best = index.search(query, 1)[0][0]
    assert best not in {i for i, _ in index.search(query, 5, set(ids.tolist()) - {best})}


def test_edge_cases() -> None:
    empty = StreamIndex()
    assert empty.search(np.ones(4, np.float32), 3) == [] and empty.dim is None and len(empty) == 0
    index = StreamIndex(4)
    index.add([3, 9], np.eye(4, dtype=np.float32)[:2])
    assert [i for i, _ in index.search(np.ones(4, np.float32), 10)] in ([3, 9], [9, 3])  # k > n
    assert index.search(np.ones(4, np.float32), 3, allowed_ids=set()) == []
    assert index.search(np.ones(4, np.float32), 3, allowed_ids={77}) == []
    assert index.search(np.ones(4, np.float32), 0) == []
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones(5, np.float32), 1)
    with pytest.raises(ValueError, match="dim"):
        index.add([4], np.ones((1, 5), np.float32))
    with pytest.raises(ValueError):
        index.add([1, 2], np.ones((3, 4), np.float32))


def test_add_is_an_upsert() -> None:
    index = StreamIndex(3)
    index.add([0, 1], np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    index.add([0], np.array([[0, 0, 5]], np.float32))  # replaces chunk 0's vector
    assert len(index) == 2
    got = index.search(np.array([0, 0, 1], np.float32), 5)
    assert got[0] == (0, pytest.approx(5.0)) and len(got) == 2
    index.remove([0, 42])
    assert [i for i, _ in index.search(np.array([0, 0, 1], np.float32), 5)] == [1]


def test_registry_builds_from_store_and_follows_commits(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="cam"))
    chunks = [make_chunk("cam", i, retrieval_dim=16) for i in range(6)]
    for c in chunks[:4]:
        store.commit_chunk(c)
    registry = IndexRegistry(store)
    assert registry.loaded() == []
    index = registry.get("cam")  # built lazily from the store
    assert len(index) == 4 and registry.get("cam") is index and registry.loaded() == ["cam"]
    for c in chunks[4:]:  # commit, then add: the order the service follows
        store.commit_chunk(c)
        registry.add("cam", c.index, c.retrieval.numpy())
    registry.add("cam", 5, chunks[5].retrieval.numpy())  # a replayed add does not duplicate
    assert len(index) == 6

    vectors = torch.stack([c.retrieval for c in chunks]).numpy()  # (6, 16)
    query = vectors[2] + 0.01
    want_ids, _ = brute_force(np.arange(6), vectors, query, 3)
    assert [i for i, _ in registry.search("cam", query, 3)] == want_ids

    registry.drop("cam")
    assert registry.loaded() == []
    store.delete_stream("cam")
    assert len(registry.get("cam")) == 0  # rebuilt from the store, which is empty now


def test_registry_first_add_on_a_new_stream(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="new"))
    registry = IndexRegistry(store)
    assert len(registry.get("new")) == 0 and registry.get("new").dim is None
    c = make_chunk("new", 0, retrieval_dim=8)
    store.commit_chunk(c)
    registry.add("new", 0, c.retrieval.numpy())
    assert registry.get("new").dim == 8 and registry.search("new", c.retrieval.numpy(), 1)[0][0] == 0


def test_registry_concurrent_gets_build_one_index(store, make_chunk) -> None:
    store.create_stream(StreamRecord(stream_id="s"))
    for i in range(5):
        store.commit_chunk(make_chunk("s", i))
    registry = IndexRegistry(store)
    got: list[StreamIndex] = []
    barrier = threading.Barrier(8)

    def get() -> None:
        barrier.wait()
        got.append(registry.get("s"))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g is got[0] for g in got) and len(got[0]) == 5
