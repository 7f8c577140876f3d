"""Loading VideoLLaMA3 through transformers' native classes, and the handle the rest of longwatch uses."""

from __future__ import annotations

import dataclasses
import hashlib
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

from longwatch.model.config import ModelConfig
from longwatch.model.summary import SummaryModules, adapter_fingerprint, install_summary_tokens, load_adapter
from longwatch.model.tiny import ensure_default_model

VS_TOKEN = "<vs>"
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


def checkpoint_fingerprint(folder: Path) -> str:
    """A cheap identity of a checkpoint: its config and the size and head of each weight file.

    Hashing whole multi-GB weight files at every start would be slow; config plus sizes plus
    the first MiB (the safetensors header with every tensor's offsets) changes with any real edit.
    """
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        h.update(weights.name.encode())
        h.update(str(weights.stat().st_size).encode())
        with weights.open("rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


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

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

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


def load_model(config: ModelConfig, state_dir: Path | None = None) -> LoadedModel:
    """Load a local HF-format VideoLLaMA3 folder (or the built-in model) for serving."""
    if config.path is None:
        folder, default_adapter = default_checkpoint(state_dir)
        if config.adapter is None and default_adapter is not None:
            config = dataclasses.replace(config, adapter=default_adapter)
    else:
        folder = Path(config.path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not an HF-format checkpoint folder (no config.json)")
    dtype = getattr(torch, config.dtype)
    model = VideoLlama3ForConditionalGeneration.from_pretrained(
        folder, dtype=dtype, attn_implementation=config.attn_implementation
    )
    model.to(config.device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for token in (VS_TOKEN, VIDEO_TOKEN):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ModelLoadError(f"{folder}: tokenizer has no {token} token")

    lm = model.model.language_model
    embeddings = lm.get_input_embeddings().weight
    vs_id = tokenizer.convert_tokens_to_ids(VS_TOKEN)
    summary = install_summary_tokens(lm, embeddings[vs_id])
    base_fp = checkpoint_fingerprint(folder)
    if config.adapter is not None:
        load_adapter(summary, Path(config.adapter), base_fingerprint=base_fp)

    meta_path = folder / "longwatch.json"
    card = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    name = card.get("name", folder.name)
    num_layers = model.config.text_config.num_hidden_layers
    layers = config.retrieval_layers or _default_retrieval_layers(num_layers)
    if any(not 0 <= i < num_layers for i in layers):
        raise ModelLoadError(f"retrieval layers {layers} outside the decoder's {num_layers} layers")
    mode_tag = (
        "raw" if config.mode == "raw" else f"vs{config.alpha}{'t' if config.keep_timestamp_tokens else ''}"
    )
    fingerprint = f"{name}@{base_fp}-{adapter_fingerprint(summary)}-{mode_tag}"

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
    )
