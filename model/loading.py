"""Loading VideoLLaMA3 through transformers' native classes, and the handle the rest of longwatch uses."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerBase,
    VideoLlama3ForConditionalGeneration,
)

from longwatch.model.answer_format import AnswerFormat
from longwatch.model.checkpoint import checkpoint_fingerprint, read_card, video_settings
from longwatch.model.config import ATTENTION, ModelConfig
from longwatch.model.summary import SummaryModules, adapter_fingerprint, install_summary_tokens, load_adapter
from longwatch.model.tiny import ensure_default_model

VS_TOKEN = "<vs>"
FINGERPRINT_CACHE = "fingerprints.json"  # in the state folder: per-file hashes by size and mtime
VIDEO_TOKEN = "<|video_pad|>"


class ModelLoadError(RuntimeError):
    """A checkpoint folder that cannot serve: missing files, wrong architecture, adapter mismatch."""


# The prompt layout of VideoLLaMA3's chat format. The video sits inside the user turn; the
# native processor writes each frame as `Time {t:.1f}s:` followed by its visual tokens and
# joins frames with ",".
def system_prefix(system_prompt: str) -> str:
    return f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n"


def frame_label(t: float, first_in_stream: bool) -> str:
    return ("" if first_in_stream else ",") + f"Time {t:.1f}s:"


def question_text(question: str) -> str:
    """The question as it follows the video inside the user turn."""
    return f"\n{question}"


def question_suffix(question: str) -> str:
    """Everything after the video: the question, the end of the user turn, the assistant's start."""
    return f"{question_text(question)}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class LoadedModel:
    """A VideoLLaMA3 ready to compress chunks and answer: model, tokenizer, summary tokens, prefix cache."""

    model: VideoLlama3ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    config: ModelConfig
    summary: SummaryModules
    name: str
    fingerprint: str  # name@base-adapter-mode: caches made under another fingerprint do not fit this model
    prefix_ids: list[int]
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (1, kv_heads, prefix_len, head_dim)
    retrieval_layers: list[int]
    eos_token_ids: frozenset[int]
    card: dict  # longwatch.json of the checkpoint: name, and the ingest settings it was trained for
    base_fingerprint: str = ""  # the checkpoint's files (an adapter records the base it fits)
    answer_format: AnswerFormat | None = None  # the card's: answers held to its templates
    added_tokens: list[str] = dataclasses.field(default_factory=list)  # tokens longwatch added (<vs>)

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def verdict_last(self) -> bool:
        """Whether its yes/no answers say what was seen before the verdict ("a red circle, yes"): a
        card's `"yes_no_answers": "described"` (a demo model trained with --yes-no-described)."""
        return self.card.get("yes_no_answers") == "described"

    @property
    def text_config(self):  # noqa: ANN201 - a transformers config object
        return self.model.config.text_config

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_ids)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    @property
    def vs_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(VS_TOKEN))

    @property
    def retrieval_dim(self) -> int:
        tc = self.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return len(self.retrieval_layers) * tc.num_key_value_heads * head_dim

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings (n, hidden) of token ids."""
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.language_model.get_input_embeddings()(ids_t)

    def prefix_cache(self) -> DynamicCache:
        """A fresh cache holding the system prefix; callers append to it freely."""
        return DynamicCache(ddp_cache_data=[(k, v) for k, v in self.prefix_kv], config=self.text_config)


def _default_retrieval_layers(num_layers: int) -> list[int]:
    """The middle third of the decoder (ReKV found middle layers retrieve best; a guess until tuned)."""
    lo, hi = num_layers // 3, max(num_layers // 3 + 1, (2 * num_layers) // 3)
    return list(range(lo, hi))


def prefill_prefix(
    model: VideoLlama3ForConditionalGeneration, ids: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer K/V of the system prefix; with gradients when enabled (the trainer's base stage)."""
    lm = model.model.language_model
    cache = DynamicCache(config=model.config.text_config)
    ids_t = torch.tensor([ids], device=model.lm_head.weight.device)
    lm(input_ids=ids_t, cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


# The demo model shipped with the package (trained by `longwatch train`: docs/demo-model.md).
DEMO_MODEL_DIR = Path(__file__).parent / "demo"
DEMO_MODEL_NAME = "longwatch-demo"  # its card's name


def default_checkpoint(state_dir: Path | None) -> tuple[Path, Path | None]:
    """The built-in model: the shipped demo model and its adapter, else a tiny random one built once."""
    if (DEMO_MODEL_DIR / "base" / "config.json").is_file():
        adapter = DEMO_MODEL_DIR / "adapter"
        return DEMO_MODEL_DIR / "base", adapter if (adapter / "adapter_config.json").is_file() else None
    if state_dir is None:
        raise ModelLoadError("no model path given and no state directory to build the default model in")
    return ensure_default_model(Path(state_dir)), None


@torch.no_grad()
def _frozen_prefix(
    model: VideoLlama3ForConditionalGeneration, ids: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return prefill_prefix(model, ids)


def attention_for(requested: str, device: str) -> str:
    """The attention kernel to load with: flash-attn on CUDA where it is installed, else sdpa."""
    if requested not in ATTENTION:
        raise ModelLoadError(f"attention must be one of {', '.join(ATTENTION)}, got {requested!r}")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        return "flash_attention_2" if on_cuda and has_flash else "sdpa"
    if requested == "flash_attention_2" and not (on_cuda and has_flash):
        why = "it runs on CUDA only" if not on_cuda else "flash-attn is not installed (the gpu extra)"
        raise ModelLoadError(f"cannot use flash_attention_2: {why}")
    return requested


def add_summary_token(
    model: VideoLlama3ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    """Add `<vs>` to a tokenizer that lacks it, and embedding rows for it if the model has too few.

    A released checkpoint knows nothing of summary tokens; their id only marks where the learned
    summary embedding goes, so a free row is all they need (Qwen2's embeddings have spare rows;
    otherwise they grow, the new row the mean of the others). Returns the tokens added.
    """
    if tokenizer.convert_tokens_to_ids(VS_TOKEN) not in (None, tokenizer.unk_token_id):
        return []
    tokenizer.add_tokens([VS_TOKEN], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return [VS_TOKEN]


def _load_weights(folder: Path, config: ModelConfig, attention: str) -> VideoLlama3ForConditionalGeneration:
    """The checkpoint's weights, refused in one line if any is missing, unexpected or misshapen."""
    try:
        model, info = VideoLlama3ForConditionalGeneration.from_pretrained(
            folder,
            dtype=getattr(torch, config.dtype),
            attn_implementation=attention,
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder}: cannot load it as a VideoLLaMA3 ({_one_line(e)})") from None
    problems = [
        f"{what} {len(keys)}: {', '.join(sorted(map(str, keys))[:4])}{' ...' if len(keys) > 4 else ''}"
        for what, keys in (
            ("missing", info.get("missing_keys") or ()),
            ("unexpected", info.get("unexpected_keys") or ()),
            ("mismatched", info.get("mismatched_keys") or ()),
        )
        if keys
    ]
    if problems:
        hint = (
            " (a DAMO release? run `longwatch convert` first)"
            if (folder / "modeling_videollama3.py").exists()
            else ""
        )
        raise ModelLoadError(f"{folder}: weights do not fit its config: {'; '.join(problems)}{hint}")
    return model


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def resolve_mode(config: ModelConfig) -> ModelConfig:
    """mode "auto": summary tokens where there is an adapter, else keep-raw, each chunk on its own.

    Untrained summary tokens compress nothing useful; keep-raw with chunk-local context is the
    training-free path (as ReKV: every token's K/V kept, top-k whole chunks retrieved).
    """
    if config.mode != "auto":
        return config
    if config.adapter is not None:
        return dataclasses.replace(config, mode="summary")
    return dataclasses.replace(config, mode="raw", raw_context="chunk")


def load_model(config: ModelConfig, state_dir: Path | None = None) -> LoadedModel:
    """Load a local VideoLLaMA3 folder in transformers' native layout (or the built-in model) to serve.

    state_dir: where the per-file hashes of the fingerprint are cached (None: hash every time).
    """
    if config.path is None:
        folder, default_adapter = default_checkpoint(state_dir)
        if config.adapter is None and default_adapter is not None:
            config = dataclasses.replace(config, adapter=default_adapter)
    else:
        folder = Path(config.path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a checkpoint folder (no config.json)")
    if json.loads((folder / "config.json").read_text()).get("model_type") != "video_llama_3":
        raise ModelLoadError(
            f"{folder}: not a native VideoLLaMA3 checkpoint (convert a DAMO release with `longwatch convert`)"
        )
    config = resolve_mode(config)
    attention = attention_for(config.attn_implementation, config.device)
    config = dataclasses.replace(config, attn_implementation=attention)
    model = _load_weights(folder, config, attention)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) != model.config.video_token_id:
        raise ModelLoadError(f"{folder}: the tokenizer's {VIDEO_TOKEN} is not the config's video_token_id")
    added = add_summary_token(model, tokenizer)
    model.to(config.device).eval()
    model.requires_grad_(False)

    lm = model.model.language_model
    vs_id = tokenizer.convert_tokens_to_ids(VS_TOKEN)
    summary = install_summary_tokens(lm, lm.get_input_embeddings().weight[vs_id])
    base_fp = checkpoint_fingerprint(
        folder, None if state_dir is None else Path(state_dir) / FINGERPRINT_CACHE
    )
    if config.adapter is not None:
        load_adapter(summary, Path(config.adapter), base_fingerprint=base_fp)

    card = read_card(folder)
    # The ingest the model was trained for: its card's, else what its video processor implies.
    card["ingest"] = {**video_settings(folder), **card.get("ingest", {})}
    name = card.get("name", folder.name)
    num_layers = model.config.text_config.num_hidden_layers
    layers = config.retrieval_layers or _default_retrieval_layers(num_layers)
    if any(not 0 <= i < num_layers for i in layers):
        raise ModelLoadError(f"retrieval layers {layers} outside the decoder's {num_layers} layers")
    fingerprint = f"{name}@{base_fp}-{adapter_fingerprint(summary)}-{mode_tag(config)}"

    tokenizer_eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    prefix_ids = list(tokenizer(system_prefix(config.system_prompt), add_special_tokens=False)["input_ids"])
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        summary=summary,
        name=name,
        fingerprint=fingerprint,
        prefix_ids=prefix_ids,
        prefix_kv=_frozen_prefix(model, prefix_ids),
        retrieval_layers=list(layers),
        eos_token_ids=frozenset(i for i in tokenizer_eos if i is not None),
        card=card,
        base_fingerprint=base_fp,
        added_tokens=added,
        answer_format=AnswerFormat.from_card(card),
    )


def mode_tag(config: ModelConfig) -> str:
    """How chunks are made, as part of the fingerprint: caches made another way do not fit."""
    if config.mode == "raw":
        return "raw" if config.raw_context == "stream" else "rawc"
    return f"vs{config.alpha}{'t' if config.keep_timestamp_tokens else ''}"
