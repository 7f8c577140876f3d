"""`longwatch convert`: DAMO-NLP-SG's remote-code VideoLLaMA3 releases to transformers' native layout.

DAMO publishes VideoLLaMA3-2B/-7B (and the -Image variants) as `videollama3_qwen2` checkpoints
that need their own modeling code; transformers has native classes (`video_llama_3`) but no
converter. The two differ only in names, so conversion renames and never recomputes:

- weights: `model.vision_encoder.*` -> `model.vision_model.*`, `model.mm_projector.*` ->
  `model.projector.*`, the Qwen2 decoder's `model.{embed_tokens,layers,norm}` ->
  `model.language_model.*`, `lm_head` stays (a tied 2B stores none). Every tensor is copied as
  stored (bf16 stays bf16); the output is sharded safetensors with an index.
- config: the Qwen2 fields at the top level become `text_config`, `vision_encoder_config`
  becomes `vision_config` (every field written out: the native class defaults are another model's),
  and the image placeholder becomes the native `<|image_pad|>` / `<|video_pad|>` token ids.
- tokenizer files are copied as they are (the same Qwen2.5 tokenizer), minus DAMO's processor hooks.
- video settings (patch, merge sizes, frame budget, DiffFP compression) go to the native
  `video_preprocessor_config.json` and `preprocessor_config.json`.

Anything the converter does not recognise (a key no rule maps, a key the native model lacks or
has in another shape) is refused before anything is written, listing it. Nothing from the source
folder is executed: its .py files are never imported.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, VideoLlama3Config, VideoLlama3ForConditionalGeneration

REMOTE_MODEL_TYPE = "videollama3_qwen2"
NATIVE_MODEL_TYPE = "video_llama_3"
DEFAULT_SHARD_BYTES = 5 * 1024**3
# source key -> native key; the first matching rule renames it
KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # `vision_encoder.vision_encoder.` is DAMO's training layout of the same tower
    (re.compile(r"^model\.vision_encoder\.(?:vision_encoder\.)?"), "model.vision_model."),
    (re.compile(r"^model\.mm_projector\."), "model.projector."),
    (re.compile(r"^model\.(embed_tokens|layers|norm)\."), r"model.language_model.\1."),
    (re.compile(r"^lm_head\."), "lm_head."),
)
# Buffers some saves carry that the native model recomputes: recognised, and left out.
DROPPED_KEYS = re.compile(r"(rotary_emb|rotary_pos_emb)\.inv_freq$")
# Top-level fields of the remote config that are not the Qwen2 decoder's.
NOT_TEXT_FIELDS = {
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "vision_encoder",
    "vision_encoder_config",
    "mm_projector_type",
    "use_token_compression",
    "image_token_index",
    "mm_hidden_size",
}
# DAMO's vision encoder config leaves these at its class defaults; the native class's differ.
VISION_DEFAULTS = {
    "num_channels": 3,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "patch_size": 14,
}
VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    *VISION_DEFAULTS,
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
)
# Keys of DAMO's tokenizer config that point at its remote processor code.
REMOTE_HOOKS = ("auto_map", "processor_class")


class ConversionError(ValueError):
    """A source folder that is not a DAMO VideoLLaMA3 release this converter understands."""


@dataclass
class ConversionReport:
    out: Path
    tensors: int = 0
    bytes: int = 0
    shards: int = 0
    tied: bool = False
    dropped: list[str] = field(default_factory=list)


def native_key(key: str) -> str | None:
    """The native name of a DAMO weight, or None when no rule knows it."""
    for pattern, replacement in KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not JSON: {e}") from None


def native_config(remote: dict, image_token_id: int, video_token_id: int) -> VideoLlama3Config:
    """The native config of a remote one: the decoder's fields nested, the vision tower's spelled out."""
    if remote.get("model_type") == NATIVE_MODEL_TYPE:
        raise ConversionError("this checkpoint is already in transformers' native layout: serve it as it is")
    if remote.get("model_type") != REMOTE_MODEL_TYPE:
        raise ConversionError(
            f"config.json model_type is {remote.get('model_type')!r}, not DAMO's {REMOTE_MODEL_TYPE!r}"
        )
    vision = remote.get("vision_encoder_config")
    if not isinstance(vision, dict):
        raise ConversionError("config.json has no vision_encoder_config")
    projector = remote.get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_type {projector!r}: the native projector is mlp2x_gelu only")
    text = {k: v for k, v in remote.items() if k not in NOT_TEXT_FIELDS}
    text["model_type"] = "qwen2"
    if text.get("rope_scaling") is None:
        text.pop("rope_scaling", None)
    missing = [
        k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in text
    ]
    if missing:
        raise ConversionError(f"config.json lacks the decoder's {', '.join(missing)}")
    vision_config = {k: vision.get(k, VISION_DEFAULTS.get(k)) for k in VISION_FIELDS}
    if any(v is None for v in vision_config.values()):
        absent = [k for k, v in vision_config.items() if v is None]
        raise ConversionError(f"vision_encoder_config lacks {', '.join(absent)}")
    vision_config["rope_parameters"] = {"rope_type": "axial", "rope_theta": 10000.0}
    return VideoLlama3Config(
        text_config=text,
        vision_config=vision_config,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        tie_word_embeddings=bool(remote.get("tie_word_embeddings", False)),
    )


def _source_keys(src: Path) -> dict[str, Path]:
    """Every stored tensor's name -> the file holding it (single file or shards with an index)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = {name: src / name for name in set(weight_map.values())}
        missing = sorted(name for name, path in files.items() if not path.is_file())
        if missing:
            raise ConversionError(f"the index names shards that are not there: {', '.join(missing)}")
        return {key: files[name] for key, name in weight_map.items()}
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{src} holds no .safetensors weights")
    keys: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            keys.update(dict.fromkeys(f.keys(), path))
    return keys


def _listing(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" (and {len(names) - most} more)" if len(names) > most else "")


def native_shapes(config: VideoLlama3Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of the native model for `config`, by name (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = VideoLlama3ForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def plan_weights(src_keys: dict[str, Path], config: VideoLlama3Config) -> tuple[dict[str, str], list[str]]:
    """(native key -> source key, dropped source keys); ConversionError listing anything else.

    The native model's own parameters are the reference: a key no rule maps, a parameter no key
    fills, and a tensor of another shape are all refused.
    """
    expected = native_shapes(config)
    plan: dict[str, str] = {}
    unexpected, dropped = [], []
    for key in sorted(src_keys):
        if DROPPED_KEYS.search(key):
            dropped.append(key)
            continue
        target = native_key(key)
        if target is None or target not in expected:
            unexpected.append(key)
        else:
            plan[target] = key
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(plan) - optional)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if problems:
        raise ConversionError("weights do not match a VideoLLaMA3 of this config; " + "; ".join(problems))
    wrong = []
    for target, key in plan.items():
        with safe_open(str(src_keys[key]), framework="pt") as f:
            shape = tuple(f.get_slice(key).get_shape())
        if shape != expected[target]:
            wrong.append(f"{key} is {shape}, the config wants {expected[target]}")
    if wrong:
        raise ConversionError(f"{len(wrong)} weights have the wrong shape: {_listing(wrong, 4)}")
    return plan, dropped


def _write_shards(
    plan: dict[str, str],
    src_keys: dict[str, Path],
    out: Path,
    shard_bytes: int,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Copy every tensor into shards of at most shard_bytes (one tensor may exceed it alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    written: list[tuple[str, list[str]]] = []
    total = 0

    def flush() -> None:
        name = f"model-{len(written) + 1:05d}.partial.safetensors"
        save_file(shards[-1], str(out / name), metadata={"format": "pt"})
        written.append((name, list(shards[-1])))
        shards[-1], sizes[-1] = {}, 0

    # Read file by file, so that each source shard is opened once.
    by_file: dict[Path, list[str]] = {}
    for target in sorted(plan):
        by_file.setdefault(src_keys[plan[target]], []).append(target)
    for path, targets in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for target in targets:
                tensor = f.get_tensor(plan[target])
                n = tensor.numel() * tensor.element_size()
                if shards[-1] and sizes[-1] + n > shard_bytes:
                    flush()
                shards[-1][target] = tensor.contiguous()
                sizes[-1] += n
                total += n
                if progress is not None:
                    progress(n)
    if shards[-1]:
        flush()
    weight_map = {}
    for i, (name, keys) in enumerate(written, 1):
        final = f"model-{i:05d}-of-{len(written):05d}.safetensors"
        (out / name).rename(out / final)
        weight_map.update(dict.fromkeys(keys, final))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(written), total


def _copy_tokenizer(src: Path, out: Path) -> None:
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer.json" not in copied and not {"vocab.json", "merges.txt"} <= set(copied):
        raise ConversionError(f"{src} has no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    for name in copied:
        shutil.copy2(src / name, out / name)
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = {k: v for k, v in _read_json(config_path).items() if k not in REMOTE_HOOKS}
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def _token_ids(out: Path) -> tuple[int, int]:
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = []
    for token in ("<|image_pad|>", "<|video_pad|>"):
        i = tokenizer.convert_tokens_to_ids(token)
        if i is None or i == tokenizer.unk_token_id:
            raise ConversionError(f"the tokenizer has no {token} token (not a Qwen2.5 tokenizer?)")
        ids.append(int(i))
    return ids[0], ids[1]


def _write_processor_configs(src: Path, out: Path, remote: dict) -> None:
    """The native video and image processors' settings, from DAMO's processor configs."""
    processor = _read_json(src / "processor_config.json")
    pre = _read_json(src / "preprocessor_config.json")
    patch = int(pre.get("patch_size", 14))
    min_tokens, max_tokens = int(pre.get("min_tokens", 16)), int(pre.get("max_tokens", 16384))
    mean, std = pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3)
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": mean,
        "image_std": std,
        "patch_size": patch,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "temporal_patch_size": 1,
    }
    video_merge = int(processor.get("video_merge_size", 2))
    image_merge = int(processor.get("image_merge_size", 1))
    video = common | {
        "video_processor_type": "VideoLlama3VideoProcessor",
        "merge_size": video_merge,
        "max_frames": int(processor.get("max_frames", 180)),
        "fps": float(processor.get("fps", 1)),
        "size": {
            "shortest_edge": min_tokens * (patch * video_merge) ** 2,
            "longest_edge": max_tokens * (patch * video_merge) ** 2,
        },
        "use_token_compression": bool(remote.get("use_token_compression", True)),
    }
    image = common | {
        "image_processor_type": "VideoLlama3ImageProcessor",
        "merge_size": image_merge,
        "size": {
            "shortest_edge": min_tokens * (patch * image_merge) ** 2,
            "longest_edge": max_tokens * (patch * image_merge) ** 2,
        },
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _source_dtype(plan: dict[str, str], src_keys: dict[str, Path]) -> torch.dtype:
    """The dtype the weights are stored in (the decoder's embeddings'), read from a header."""
    key = plan.get("model.language_model.embed_tokens.weight") or next(iter(plan.values()))
    with safe_open(str(src_keys[key]), framework="pt") as f:
        name = f.get_slice(key).get_dtype()
    if name not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"weights stored as {name}: expected bf16, fp16 or fp32")
    return _SAFETENSORS_DTYPES[name]


def convert(
    src: Path,
    out: Path,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int], None] | None = None,
) -> ConversionReport:
    """Convert the DAMO release in `src` into a new folder `out`; nothing is left at `out` on failure."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (not a checkpoint folder)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty folder: give a new one")
    remote = _read_json(src / "config.json")
    if remote.get("model_type") == NATIVE_MODEL_TYPE:
        raise ConversionError("this checkpoint is already in transformers' native layout: serve it as it is")
    src_keys = _source_keys(src)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        _copy_tokenizer(src, partial)
        config = native_config(remote, *_token_ids(partial))
        plan, dropped = plan_weights(src_keys, config)
        config.dtype = _source_dtype(plan, src_keys)
        config.architectures = ["VideoLlama3ForConditionalGeneration"]
        shards, total = _write_shards(plan, src_keys, partial, shard_bytes, progress)
        config.save_pretrained(partial)
        if (src / "generation_config.json").is_file():
            shutil.copy2(src / "generation_config.json", partial / "generation_config.json")
        _write_processor_configs(src, partial, remote)
        source = {"path": str(src.resolve()), "model_type": REMOTE_MODEL_TYPE}
        card = {"name": src.resolve().name, "converted_from": source}
        (partial / "longwatch.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ConversionReport(out, len(plan), total, shards, config.tie_word_embeddings, dropped)


# --- the command ----------------------------------------------------------------------------------


def add_convert(sub: argparse.ArgumentParser) -> None:
    sub.set_defaults(handler=_convert)
    sub.add_argument(
        "src", type=Path, metavar="SRC", help="a DAMO-NLP-SG VideoLLaMA3 release (remote-code layout)"
    )
    sub.add_argument("out", type=Path, metavar="OUT", help="new folder for the native checkpoint")
    sub.add_argument(
        "--max-shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 1024**3, help="largest output shard (GiB)"
    )


def _convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.max_shard_gb <= 0:
        print(f"error: --max-shard-gb must be > 0, got {args.max_shard_gb:g}", file=sys.stderr)
        return 2
    with tqdm(unit="B", unit_scale=True, desc=f"converting {args.src.name}", disable=None) as bar:
        try:
            report = convert(args.src, args.out, int(args.max_shard_gb * 1024**3), progress=bar.update)
        except ConversionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    tied = ", lm_head tied to the embeddings" if report.tied else ""
    dropped = f", {len(report.dropped)} recomputed buffers left out" if report.dropped else ""
    print(
        f"{report.out}: {report.tensors} tensors, {report.bytes / 1024**3:.2f} GiB in {report.shards} "
        f"shard(s){tied}{dropped}; serve it with `longwatch serve --model {report.out}`"
    )
    return 0
