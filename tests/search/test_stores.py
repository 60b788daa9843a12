"""One contract for every vector store, run on the embedded store and on a real Milvus server.

`store_db` (conftest) gives each test a new folder and a new collection of the session's Milvus
standalone server (PyPI's ``milvus``, on 127.0.0.1).
"""

from __future__ import annotations

import numpy as np
import pytest

from clip_image_encoder.errors import IndexMismatchError, OptionError
from clip_image_encoder.search.duplicates import find_duplicates
from clip_image_encoder.search.stores import IndexSpec, is_server_uri, open_store


def clustered(count: int, dimension: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, as real embeddings are (i.i.d. noise has no neighbours to find)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension))
    vectors = centres[rng.integers(0, clusters, count)] + 0.4 * rng.normal(size=(count, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def keys_of(count: int, prefix: str = "img") -> list[str]:
    return [f"/photos/{prefix}-{i}.jpg" for i in range(count)]


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


def test_scores_are_cosines_best_first(store_db):
    vectors = clustered(200)
    keys = keys_of(200)
    with open_store(store_db, "model-a", index="FLAT") as store:
        store.upsert(keys, vectors * 3.0)  # any length: the store normalises
        assert len(store) == 200
        found = store.search(vectors[7], k=5)
    expected = exact_top(vectors, vectors[7], 5)
    assert [key for key, _ in found] == [keys[i] for i in expected]
    assert np.allclose([score for _, score in found], vectors[expected] @ vectors[7], atol=1e-5)
    assert found[0] == (keys[7], pytest.approx(1.0, abs=1e-5))


def test_many_queries_at_once_answer_as_one_at_a_time(store_db):
    vectors = clustered(300, seed=1)
    with open_store(store_db, index="FLAT") as store:
        store.upsert(keys_of(300), vectors)
        together = store.search_many(vectors[:6], k=4)
        alone = [store.search(vector, k=4) for vector in vectors[:6]]
    assert [[key for key, _ in matches] for matches in together] == [[key for key, _ in m] for m in alone]


def test_indexing_a_key_again_replaces_it_and_deleting_forgets_it(store_db):
    vectors = clustered(50, seed=2)
    keys = keys_of(50)
    with open_store(store_db) as store:
        store.upsert(keys, vectors)
        store.upsert([keys[0]], vectors[49:50])  # key 0 now looks like key 49
        assert len(store) == 50
        assert {key for key, _ in store.search(vectors[49], k=2)} == {keys[0], keys[49]}
        assert np.allclose(store.vectors([keys[0]])[0], vectors[49], atol=1e-6)
        store.delete([keys[49], "/never/indexed.jpg"])
        assert len(store) == 49
        assert keys[49] not in {key for key, _ in store.search(vectors[49], k=5)}
        assert store.contains([keys[0], keys[49]]) == {keys[0]}


def test_the_model_and_the_dimension_are_the_stores_own_after_reopening(store_db):
    with open_store(store_db, "model-a") as store:
        store.upsert(keys_of(10), clustered(10))
    with open_store(store_db) as store:
        assert store.model_name == "model-a"
        assert len(store) == 10
        with pytest.raises(IndexMismatchError, match=r"holds embeddings of model 'model-a'.*'model-b'"):
            store.check_model("model-b")
        with pytest.raises(IndexMismatchError, match="32-d embeddings, these are 16-d"):
            store.upsert(["/other.jpg"], clustered(1, dimension=16))
        with pytest.raises(IndexMismatchError, match="the query is 8-d"):
            store.search(np.ones(8, np.float32))
    with pytest.raises(IndexMismatchError):
        open_store(store_db, "model-b")


def test_the_index_spec_is_recorded_and_only_its_search_parameters_change(store_db):
    with open_store(store_db, index="IVF_FLAT:nlist=8,nprobe=2") as store:
        store.upsert(keys_of(20), clustered(20))
    with open_store(store_db, index="IVF_FLAT:nlist=8,nprobe=8") as store:
        assert store.index_spec == IndexSpec("IVF_FLAT", {"nlist": 8}, {"nprobe": 8})
        assert "IVF_FLAT:nlist=8,nprobe=8" in store.describe()
    with open_store(store_db) as store:
        assert store.index_spec.search == {"nprobe": 2}
    with pytest.raises(OptionError, match="is indexed as IVF_FLAT:nlist=8,nprobe=2, not FLAT"):
        open_store(store_db, index="FLAT")


def test_an_approximate_index_finds_the_exact_neighbours_of_most_queries(store_db):
    """IVF with few clusters over a clustered collection large enough to train it (embedded: 39 per cluster)."""
    vectors = clustered(3000, dimension=64, clusters=40, seed=3)
    keys = keys_of(3000)
    with open_store(store_db, index="IVF_FLAT:nlist=16,nprobe=4") as store:
        for start in range(0, 3000, 500):
            store.upsert(keys[start : start + 500], vectors[start : start + 500])
        store.flush()
        found = store.search_many(vectors[:100], k=10)
    recall = np.mean(
        [
            len({key for key, _ in matches} & {keys[i] for i in exact_top(vectors, vectors[q], 10)}) / 10
            for q, matches in enumerate(found)
        ]
    )
    assert recall >= 0.9


def test_similar_pairs_are_the_pairs_at_or_above_the_threshold_found_in_the_store(store_db):
    rng = np.random.default_rng(4)
    originals = rng.normal(size=(60, 32)).astype(np.float32)
    originals /= np.linalg.norm(originals, axis=1, keepdims=True)
    scales = np.linspace(0.01, 0.1, 20)[:, None]  # copies at varied distances, some beyond the threshold
    copies = originals[:20] + scales * rng.normal(size=(20, 32)).astype(np.float32)
    vectors = np.concatenate([originals, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    keys = keys_of(60) + keys_of(20, "copy")
    threshold = 0.9
    similarity = vectors @ vectors.T
    upper = np.triu(np.ones_like(similarity, dtype=bool), 1)
    pairs_where = lambda mask: {(keys[i], keys[j]) for i, j in zip(*np.nonzero(mask & upper), strict=True)}  # noqa: E731
    expected = pairs_where(similarity >= threshold)
    ambiguous = pairs_where(np.abs(similarity - threshold) < 1e-4)  # float32 rounding may fall either side
    with open_store(store_db, index="FLAT") as store:
        store.upsert(keys, vectors)
        found = {tuple(sorted(pair, key=keys.index)) for pair in store.similar_pairs(threshold)}
        groups = find_duplicates(store, threshold)
    assert 10 <= len(expected) < 20  # some copies in, some out
    assert found - ambiguous == expected - ambiguous
    grouped = {member.key for group in groups for member in group.members}
    in_ambiguous = {key for pair in ambiguous for key in pair}
    assert grouped - in_ambiguous == {key for pair in expected - ambiguous for key in pair} - in_ambiguous


def test_an_empty_store_answers_nothing(store_db):
    with open_store(store_db) as store:
        assert len(store) == 0
        assert store.search(np.ones(4, np.float32)) == []
        assert list(store.similar_pairs(0.5)) == []
        assert store.contains(["/x.jpg"]) == set()


def test_the_embedded_store_refuses_hnsw_and_names_the_server_that_builds_it(tmp_path):
    with pytest.raises(OptionError, match="HNSW is built by a Milvus server"):
        open_store(tmp_path / "db", index="HNSW")


@pytest.mark.parametrize(
    ("text", "message"),
    [("KD_TREE", "must be one of FLAT, IVF_FLAT"), ("IVF_FLAT:nlist=0", "name=positive integer"), ("FLAT:ef=4", "")],
)
def test_a_bad_index_spec_says_what_it_takes(text, message):
    with pytest.raises(OptionError, match=message):
        IndexSpec.parse(text)


def test_a_server_store_is_chosen_by_its_uri():
    assert is_server_uri("http://milvus:19530") and is_server_uri("https://in03.zillizcloud.com")
    assert not is_server_uri("index") and not is_server_uri("/data/index")


def test_an_index_of_the_earlier_layout_opens_with_its_vectors_moved_into_the_catalogue(tmp_path):
    """Before the stores, a folder held the vectors only in FAISS (``IndexIDMap2`` over a flat index) and the
    catalogue only keys: it opens as an exact store, answers as before, and takes new images."""
    import sqlite3

    import faiss

    vectors = clustered(30, seed=5)
    folder = tmp_path / "old-index"
    folder.mkdir()
    catalogue = sqlite3.connect(folder / "catalog.sqlite")
    catalogue.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('model', 'model-a');"
    )
    catalogue.executemany(
        "INSERT INTO items (id, key) VALUES (?, ?)", [(i + 1, key) for i, key in enumerate(keys_of(30))]
    )
    catalogue.commit()
    catalogue.close()
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
    old.add_with_ids(vectors, np.arange(1, 31, dtype=np.int64))
    faiss.write_index(old, str(folder / "vectors.faiss"))

    with open_store(folder, "model-a") as store:
        assert store.index_spec.type == "FLAT" and len(store) == 30
        assert [key for key, _ in store.search(vectors[3], 3)] == [
            keys_of(30)[i] for i in exact_top(vectors, vectors[3], 3)
        ]
        store.upsert(["/photos/new.jpg"], vectors[:1])
    with open_store(folder) as store:
        assert len(store) == 31 and store.model_name == "model-a"
        np.testing.assert_allclose(store.vectors([keys_of(30)[7]])[0], vectors[7], atol=1e-6)
