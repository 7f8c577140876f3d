"""A user's training data: videos with questions and answers, from our JSONL or LLaVA-Video-178K's JSON.

JSONL, one example per line:
    {"video": "clips/door.mp4", "question": "When did the door open?", "answer": "at 12 s",
     "start_s": 11.0, "end_s": 14.0}
`video` is resolved relative to the JSONL file. `start_s`/`end_s` (optional) mark the evidence:
those chunks are always in the answer's context and are the retrieval target. Without an
`answer`, the example trains by self-distillation only (the teacher's own answer is the target).

LLaVA-Video-178K style JSON: a list of {"video": path, "conversations": [{"from": "human",
"value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}; each human turn and the
answer after it is one example (the `<image>` placeholder dropped), `video` relative to
`video_root` (default: the JSON file's folder). They carry no evidence spans.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longwatch.model.frames import grid_for, resize_frames
from longwatch.model.train.clips import TrainingClip
from longwatch.stream.decode import VideoFileReader

DEFAULT_QUESTION = "What happens in the video?"


@dataclass
class JsonlExample:
    video: Path
    question: str
    answer: str
    start_s: float | None = None
    end_s: float | None = None


def read_examples(path: Path, video_root: Path | None = None) -> list[JsonlExample]:
    """A training file's examples: LLaVA-Video-178K style JSON (.json) or our JSONL (anything else)."""
    if Path(path).suffix == ".json":
        return read_llava_video(path, video_root)
    return read_jsonl(path)


def read_llava_video(path: Path, video_root: Path | None = None) -> list[JsonlExample]:
    """Examples of a LLaVA-Video-178K style JSON file: each human turn and the answer that follows."""
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of records with video and conversations")
    examples = []
    for n, rec in enumerate(records):
        try:
            video = (root / rec["video"]).resolve()
            turns = rec["conversations"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}[{n}]: expected video and conversations ({exc})") from None
        if not video.is_file():
            raise ValueError(f"{path}[{n}]: no such video {video}")
        for ask, reply in zip(turns[0::2], turns[1::2], strict=False):
            if ask.get("from") != "human" or reply.get("from") != "gpt":
                raise ValueError(f"{path}[{n}]: turns must alternate human, gpt")
            question = ask["value"].replace("<image>", "").replace("<video>", "").strip()
            examples.append(JsonlExample(video, question or DEFAULT_QUESTION, reply["value"].strip()))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def read_jsonl(path: Path) -> list[JsonlExample]:
    """Parse and check a JSONL training file; errors name the line."""
    examples = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            video = (Path(path).parent / rec["video"]).resolve()
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f'{path}:{n}: expected a JSON object with at least "video" ({exc})') from exc
        if not video.is_file():
            raise ValueError(f"{path}:{n}: no such video {video}")
        examples.append(
            JsonlExample(
                video,
                rec.get("question", DEFAULT_QUESTION),
                rec.get("answer", ""),
                rec.get("start_s"),
                rec.get("end_s"),
            )
        )
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


@dataclass
class JsonlClips:
    """Clips from a user's videos: the evidence chunks plus random others, in time order."""

    examples: list[JsonlExample]
    n_chunks: int = 6
    frames_per_chunk: int = 8
    fps: float = 1.0
    max_tokens_per_frame: int = 4
    # Videos whose sampled frames stay in memory at the model's size, the least recently used
    # dropped first: a large data set (LLaVA-Video-178K's) cannot be held whole.
    cached_videos: int = 64
    _frames: OrderedDict[Path, tuple[np.ndarray, list[float]]] = field(default_factory=OrderedDict)

    def _video(self, path: Path) -> tuple[np.ndarray, list[float]]:
        """Sampled frames of a video, resized once to the model's grid."""
        if path in self._frames:
            self._frames.move_to_end(path)
            return self._frames[path]
        sampled = list(VideoFileReader(str(path), fps=self.fps))
        grid = grid_for(*sampled[0].image.shape[:2], self.max_tokens_per_frame)
        frames = resize_frames(np.stack([f.image for f in sampled]), grid)
        self._frames[path] = (frames, [f.pts_s for f in sampled])
        while len(self._frames) > self.cached_videos:
            self._frames.popitem(last=False)
        return self._frames[path]

    def clip(self, rng: np.random.Generator) -> TrainingClip:
        ex = self.examples[int(rng.integers(len(self.examples)))]
        frames, times = self._video(ex.video)
        f = self.frames_per_chunk
        n_avail = max(1, len(times) // f)
        spans = [
            (times[c * f], times[min(len(times), (c + 1) * f) - 1] + 1 / self.fps) for c in range(n_avail)
        ]
        evidence = []
        if ex.start_s is not None and ex.end_s is not None:
            evidence = [c for c, (s, e) in enumerate(spans) if e > ex.start_s and s < ex.end_s]
        others = [c for c in rng.permutation(n_avail).tolist() if c not in evidence]
        chosen = sorted(evidence + others[: max(0, self.n_chunks - len(evidence))])
        rows = [i for c in chosen for i in range(c * f, min((c + 1) * f, len(times)))]
        rows += [rows[-1]] * (len(chosen) * f - len(rows))  # pad a short last chunk by repeating its frame
        return TrainingClip(
            frames[rows],
            [times[i] for i in rows],
            ex.question,
            ex.answer,
            [chosen.index(c) for c in evidence],
            f,
            opens_stream=chosen[0] == 0,
        )
