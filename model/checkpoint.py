"""What a VideoLLaMA3 checkpoint folder holds besides its weights: its identity, video settings and card.

- `checkpoint_fingerprint`: a hash of every file that decides what the model computes (config,
  every weight file whole, tokenizer), so any fine-tune or edit changes it and caches made by
  another model are refused. Hashing multi-GB files at every start would be slow, so each file's
  hash is cached by its path, size and modification time (a JSON file in the state folder).
- `video_settings`: the frame budget the checkpoint was trained with, from its native video
  processor config (`video_preprocessor_config.json`): the most tokens one frame may take is the
  video's pixel budget over its frame count.
- `read_card`: longwatch.json, longwatch's own notes on a checkpoint (name, ingest settings it was
  trained for, Ask's score margin, where it was converted from).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

# The files whose bytes decide what a checkpoint computes, besides its *.safetensors.
IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "added_tokens.json")
_HASH_BLOCK = 8 << 20
_cache_lock = threading.Lock()


def file_sha256(path: Path, cache: Path | None = None) -> str:
    """sha256 of a whole file, taken from `cache` while the file's size and mtime are unchanged."""
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns]
    entries = _read_cache(cache)
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    digest = h.hexdigest()
    if cache is not None:
        _write_cache(cache, key, {"stamp": stamp, "sha256": digest})
    return digest


def checkpoint_fingerprint(folder: Path, cache: Path | None = None) -> str:
    """12 hex digits naming a checkpoint's exact contents (any weight change changes them)."""
    folder = Path(folder)
    files = [folder / n for n in IDENTITY_FILES if (folder / n).is_file()]
    files += sorted(folder.glob("*.safetensors"))
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(file_sha256(path, cache).encode())
    return h.hexdigest()[:12]


def video_settings(folder: Path) -> dict[str, int | float]:
    """Ingest settings a checkpoint's own video processor implies: {} when it has none.

    max_tokens_per_frame: the processor's pixel budget for a whole video (longest_edge) shared by
    its most frames, in merged tokens (patch x merge pixels a side).
    """
    path = Path(folder) / "video_preprocessor_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    patch, merge = int(config.get("patch_size", 14)), int(config.get("merge_size", 2))
    longest = (config.get("size") or {}).get("longest_edge") or config.get("max_pixels")
    frames = int(config.get("max_frames", 180))
    if not longest or frames < 1:
        return {}
    return {"max_tokens_per_frame": max(1, int(longest) // (frames * (patch * merge) ** 2))}


def read_card(folder: Path) -> dict:
    """longwatch.json of a checkpoint, or {} when it has none."""
    path = Path(folder) / "longwatch.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_cache(cache: Path | None) -> dict:
    if cache is None or not cache.is_file():
        return {}
    try:
        entries = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a re-hash
    return entries if isinstance(entries, dict) else {}


def _write_cache(cache: Path, key: str, entry: dict) -> None:
    with _cache_lock:
        entries = _read_cache(cache)
        entries[key] = entry
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            tmp.replace(cache)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only state folder: hashing again next time is fine
