"""Vector stores side by side: the embedded store (FAISS + SQLite) and a real Milvus server, exact and approximate.

For each collection size (clustered synthetic 512-d unit vectors: super-clusters of clusters of images, as
embeddings of photo collections are; i.i.d. noise has no neighbours worth finding), one run measures each
store and index type through the product's own `open_store`:

- insert: vectors/s through ``upsert`` in chunks of 10 000 (durable when it returns), then the time until the
  store is ready to answer from its index (embedded: ``flush``, which writes the FAISS file; Milvus: ``flush``
  and the wait until every row is indexed);
- single-query latency p50/p99 over held-out queries, one at a time, and batched queries/s (100 at a time);
- recall@10 against exact search (FAISS ``IndexFlatIP`` over the same vectors);
- resident memory (embedded: this process's growth; Milvus: the whole server's, this collection loaded and
  the earlier ones released) and disk;
- the recall and latency of the IVF index at other ``nprobe`` (a search parameter), at the largest size;
- with ``--flow``: the search Flow (ViT-B/32-shaped CLIP, random weights, 512-d) answering one image or one
  text per request over the largest collection, end to end from a client, and the encoder's forward alone.

    pip install -r requirements-test.txt      # the milvus server package
    python benchmarks/vector_stores.py --sizes 100000 1000000 --flow --out benchmarks/VECTOR_STORES.md  # ~40 min
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent)]  # this checkout before an installed one
from milvus_server import milvus_server  # noqa: E402

from clip_image_encoder.search.stores import IndexSpec, VectorStore, open_store  # noqa: E402

DIMENSION = 512
K = 10
CHUNK = 10_000
SWEEP = (8, 16, 32, 64, 128)


def clustered(count: int, seed: int, spread: float) -> np.ndarray:
    """Unit vectors: 1 per 1000 super-centres, 1 per 100 cluster centres around them, images around those at
    ``spread`` (the noise's scale against a centre's: the larger, the fewer neighbours stand out)."""
    rng = np.random.default_rng(seed)
    supers = rng.standard_normal((max(count // 1000, 1), DIMENSION), dtype=np.float32)
    clusters = supers[rng.integers(0, len(supers), max(count // 100, 1))]
    clusters += 0.7 * rng.standard_normal(clusters.shape, dtype=np.float32)
    vectors = np.empty((count, DIMENSION), np.float32)
    for start in range(0, count, 100_000):  # in parts: memory stays near the output's
        part = clusters[rng.integers(0, len(clusters), min(100_000, count - start))]
        vectors[start : start + len(part)] = part + spread * rng.standard_normal(part.shape, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_neighbours(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatIP(DIMENSION)
    flat.add(base)
    return flat.search(queries, K)[1]


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and its children (Milvus runs as the wrapper's child)."""
    pids = [pid or os.getpid()]
    children = Path(f"/proc/{pids[0]}/task/{pids[0]}/children")
    if pid and children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total = 0.0
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def percentile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


def measure(store: VectorStore, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, singles: int) -> dict:
    keys = [f"/photos/{i:07d}.jpg" for i in range(len(base))]
    started = time.perf_counter()
    for start in range(0, len(base), CHUNK):
        store.upsert(keys[start : start + CHUNK], base[start : start + CHUNK])
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    wait_until_indexed(store, len(base))
    ready = time.perf_counter() - started
    return {"insert_per_s": len(base) / inserted, "ready_s": ready, **queried(store, queries, truth, singles)}


def queried(store: VectorStore, queries: np.ndarray, truth: np.ndarray, singles: int) -> dict:
    """Single-query latency over the first ``singles`` queries, batched throughput and recall@10 over all."""
    store.search(queries[0], K)  # warm
    latencies = []
    for query in queries[:singles]:
        began = time.perf_counter()
        store.search(query, K)
        latencies.append(time.perf_counter() - began)
    began = time.perf_counter()
    batched = [m for start in range(0, len(queries), 100) for m in store.search_many(queries[start : start + 100], K)]
    batched_qps = len(queries) / (time.perf_counter() - began)
    recall = statistics.mean(
        len({int(key[8:15]) for key, _ in matches} & set(truth[q].tolist())) / K for q, matches in enumerate(batched)
    )
    return {
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "batched_qps": batched_qps,
        "recall": recall,
        "singles": singles,
    }


def nprobe_sweep(store: VectorStore, queries: np.ndarray, truth: np.ndarray) -> dict[int, dict]:
    """The same IVF index read with other ``nprobe`` (a search parameter: no rebuild)."""
    spec, found = store.index_spec, {}
    for nprobe in SWEEP:
        store.index_spec = IndexSpec(spec.type, spec.build, {"nprobe": nprobe})
        found[nprobe] = queried(store, queries, truth, min(len(queries), 300))
    store.index_spec = spec
    return found


def wait_until_indexed(store: VectorStore, count: int, timeout_s: float = 1800) -> None:
    """Embedded: write the FAISS file. Milvus: seal the segments and wait until the index covers every row."""
    store.flush()
    client = getattr(store, "_client", None)
    if client is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = client.describe_index(store.collection, "vector")
        if int(described.get("indexed_rows", 0)) >= count and int(described.get("pending_index_rows", 0)) == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"Milvus indexed {described} of {count} rows in {timeout_s} s")


def run_embedded(spec: str, base, queries, truth, singles: int, folder: Path, sweep: bool) -> tuple[dict, dict]:
    before = rss_mb()
    with open_store(folder, index=spec) as store:
        row = measure(store, base, queries, truth, singles)
        row["rss_mb"] = rss_mb() - before
        swept = nprobe_sweep(store, queries, truth) if sweep else {}
    row["disk_mb"] = folder_mb(folder)
    began = time.perf_counter()
    open_store(folder).close()
    row["reopen_s"] = time.perf_counter() - began
    return row, swept


def run_milvus(spec: str, base, queries, truth, singles: int, db: str, pid: int, data: Path, sweep: bool):
    disk_before = folder_mb(data)
    with open_store(db, index=spec) as store:
        row = measure(store, base, queries, truth, singles)
        row["rss_mb"] = rss_mb(pid)  # the whole server, this collection loaded (the others released or dropped)
        row["disk_mb"] = folder_mb(data) - disk_before
        swept = nprobe_sweep(store, queries, truth) if sweep else {}
        if spec == "FLAT":
            store._client.release_collection(store.collection)  # frees the server's memory for the next one
    row["reopen_s"] = float("nan")
    return row, swept


def flow_latency(db: str, model_dir: Path, photo: bytes, requests: int) -> dict:
    """One image or one text per request through the search Flow over ``db``; the encoders' forward apart."""
    from docarray import DocList
    from helpers import free_port
    from jina import Client

    from clip_image_encoder.config.options import EncoderOptions
    from clip_image_encoder.encoding.images import ImageEncoder, ImageItem
    from clip_image_encoder.encoding.texts import TextEncoder
    from clip_image_encoder.service.documents import ImageDocument
    from clip_image_encoder.service.flow import build_flow

    options = EncoderOptions(pretrained_model_name_or_path=str(model_dir), batch_wait_ms=0)
    port = free_port()
    result: dict = {}
    with build_flow(options, port=port, search=True, db=db):
        client = Client(host="127.0.0.1", port=port)
        for kind, make in (
            ("image", lambda: ImageDocument(bytes_=photo)),
            ("text", lambda: ImageDocument(text="a photo of a cat")),
        ):
            times = []
            for number in range(requests + 3):
                began = time.perf_counter()
                (answer,) = client.post(
                    "/search",
                    inputs=DocList[ImageDocument]([make()]),
                    parameters={"k": K},
                    return_type=DocList[ImageDocument],
                )
                if number >= 3:  # warm-up
                    times.append(time.perf_counter() - began)
                assert answer.error is None and len(answer.matches) == K, answer.error
            result[kind] = (1000 * percentile(times, 0.5), 1000 * percentile(times, 0.99))
    with ImageEncoder.from_options(options) as encoder:
        result["image_forward"] = 1000 * forward_s(lambda: list(encoder.encode([ImageItem(photo)], options)), requests)
    text = TextEncoder.from_pretrained(str(model_dir), "cpu")
    result["text_forward"] = 1000 * forward_s(lambda: text.encode(["a photo of a cat"]), requests)
    return result


def forward_s(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


Row = tuple[float, int, str, str, dict, dict]
"""spread, size, store, index type, figures, nprobe sweep (IVF at the largest size)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.6, 1.0], help="image noise around clusters")
    parser.add_argument("--types", nargs="+", default=["FLAT", "IVF_FLAT"], choices=["FLAT", "IVF_FLAT"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--flow", action="store_true", help="also the search Flow over the largest collection")
    parser.add_argument("--flow-requests", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="vector-stores-"))
    rows: list[Row] = []
    flow: dict[str, dict] = {}
    model_dir, photo = flow_model(scratch) if args.flow else (None, b"")
    try:
        # The embedded store first, with no Milvus server running (it takes CPU even when idle), then Milvus: a new
        # server per spread, its folder removed after (Milvus frees a dropped collection's disk only much later).
        for kind, spread in [(kind, spread) for kind in ("embedded", "milvus") for spread in args.spreads]:
            with milvus_server(scratch / "milvus") if kind == "milvus" else _no_server() as uri:
                for size in args.sizes:
                    rows += run_size(kind, spread, size, args, scratch, uri)
                    if model_dir and spread == args.spreads[0] and size == max(args.sizes):
                        db = str(scratch / f"embedded-{size}-IVF_FLAT") if kind == "embedded" else _name(uri, size)
                        print(f"flow over {kind} ...", flush=True)
                        flow[kind] = flow_latency(db, model_dir, photo, args.flow_requests)
                        print(f"  {flow[kind]}", flush=True)
                    _drop(kind, scratch, uri, size)
            shutil.rmtree(scratch / "milvus", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = render(args, rows, flow)
    print("\n".join(report))
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


def run_size(kind: str, spread: float, size: int, args: argparse.Namespace, scratch: Path, uri: str) -> list[Row]:
    """Both index types of one store over one collection (the same vectors, seeded, for each store)."""
    data = clustered(size + args.queries, seed=size, spread=spread)
    base, queries = data[:size], data[size:]
    truth = exact_neighbours(base, queries)
    rows = []
    for spec in args.types:
        singles = min(args.queries, 200) if spec == "FLAT" else args.queries
        print(f"spread {spread} {size} {kind} {spec} ...", flush=True)
        sweep = size == max(args.sizes) and spec != "FLAT"
        if kind == "embedded":
            row, swept = run_embedded(spec, base, queries, truth, singles, scratch / f"embedded-{size}-{spec}", sweep)
        else:
            server = _server_pid(uri)
            name = _name(uri, size) if spec == "IVF_FLAT" else f"{uri}/bench_{size}_flat"
            row, swept = run_milvus(spec, base, queries, truth, singles, name, server, scratch / "milvus", sweep)
        rows.append((spread, size, kind, spec, row, swept))
        print(f"  {row}", flush=True)
    return rows


def _name(uri: str, size: int) -> str:
    return f"{uri}/bench_{size}_ivf_flat"


@contextlib.contextmanager
def _no_server() -> Iterator[str]:
    yield ""


def _drop(kind: str, scratch: Path, uri: str, size: int) -> None:
    """Free the disk and memory of one size's stores before the next."""
    if kind == "embedded":
        for folder in scratch.glob(f"embedded-{size}-*"):
            shutil.rmtree(folder)
        return
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    for name in (f"bench_{size}_flat", f"bench_{size}_ivf_flat"):
        client.drop_collection(name)
    client.close()


def flow_model(scratch: Path) -> tuple[Path, bytes]:
    from throughput import jpeg_set, source_photos
    from traffic import make_clip_b32

    return make_clip_b32(scratch / "clip-b32"), jpeg_set(source_photos()[0], (640, 480), 1)[0]


def _server_pid(uri: str) -> int:
    """The Milvus process listening on the uri's port (the wrapper's child)."""
    port = uri.rsplit(":", 1)[1]
    import subprocess

    listing = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(listing.split("pid=")[1].split(",")[0])


def render(args: argparse.Namespace, rows: list[Row], flow: dict) -> list[str]:
    command = (
        f"python benchmarks/vector_stores.py --sizes {' '.join(map(str, args.sizes))} --spreads "
        f"{' '.join(map(str, args.spreads))} --types {' '.join(args.types)}{' --flow' if flow else ''} --out {args.out}"
    )
    lines = [
        "# Vector stores: embedded (FAISS + SQLite) and a Milvus server, exact and approximate",
        "",
        f"`{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"faiss {faiss.__version__}; Milvus 2.3.5 standalone (PyPI `milvus`) on 127.0.0.1, sharing the cores with "
        "the client; the embedded store was measured with no Milvus server running. "
        f"Vectors: clustered synthetic 512-d unit vectors (`clustered`: images around cluster centres at `spread`, "
        f"the noise's scale against a centre's; the larger, the closer unrelated images come); {args.queries} "
        f"held-out queries; k = {K}; recall@10 against exact search. IVF_FLAT is the default "
        "(nlist 1024, nprobe 32); FLAT is exact. Insert: `upsert` in chunks of 10 000, each durable when it "
        "returns, IVF training included; ready: until the store answers from its index (embedded: the FAISS file "
        "written; Milvus: flushed and every row indexed). Latency: one query at a time, client side (FLAT: 200 "
        "queries). RSS: embedded, this process's growth; Milvus, the whole server with the collection loaded.",
        "",
        "| spread | vectors | store | index | insert /s | ready s | p50 ms | p99 ms | batched q/s | recall@10 "
        "| RSS MB | disk MB | reopen s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spread, size, kind, spec, row, _ in rows:
        lines.append(
            f"| {spread} | {size:,} | {kind} | {spec} | {row['insert_per_s']:,.0f} | {row['ready_s']:.1f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['batched_qps']:,.0f} | {row['recall']:.3f} | "
            f"{row['rss_mb']:,.0f} | {row['disk_mb']:,.0f} | {row['reopen_s']:.1f} |"
        )
    lines += sweep_table(rows) + flow_table(args, flow)
    return lines


def sweep_table(rows: list[Row]) -> list[str]:
    lines = [
        "",
        "## nprobe: recall against latency (IVF_FLAT, nlist 1024, the largest collection)",
        "",
        "A search parameter: `search --index IVF_FLAT:nprobe=N` or the indexer's `index`; 300 single queries.",
        "",
        "| spread | store | nprobe | p50 ms | p99 ms | batched q/s | recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for spread, _, kind, _, _, swept in rows:
        for nprobe, row in swept.items():
            lines.append(
                f"| {spread} | {kind} | {nprobe} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['batched_qps']:,.0f} | {row['recall']:.3f} |"
            )
    return lines


def flow_table(args: argparse.Namespace, flow: dict) -> list[str]:
    if not flow:
        return []
    lines = [
        "",
        f"## The search Flow over {max(args.sizes):,} vectors (spread {args.spreads[0]}), one query per request",
        "",
        "ViT-B/32-shaped CLIP (random weights, 512-d), a 640x480 JPEG or a short text, k = 10, one client, "
        f"{args.flow_requests} requests each after 3 of warm-up, end to end from the client. The encoder's forward "
        "alone (in process, median) is given apart, and subtracted: the rest is the gateway, the indexer and the "
        "store.",
        "",
        "| store | image p50 / p99 ms | text p50 / p99 ms | image forward ms | text forward ms "
        "| image minus forward | text minus forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, found in flow.items():
        (ip50, ip99), (tp50, tp99) = found["image"], found["text"]
        lines.append(
            f"| {label} IVF_FLAT | {ip50:.0f} / {ip99:.0f} | {tp50:.0f} / {tp99:.0f} | {found['image_forward']:.0f} | "
            f"{found['text_forward']:.0f} | {ip50 - found['image_forward']:.0f} | "
            f"{tp50 - found['text_forward']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    main()
