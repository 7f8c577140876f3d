"""Fake DAMO-NLP-SG VideoLLaMA3 releases, written the way the real ones are laid out, at any width.

No real weights can be downloaded here, so tests build checkpoints with the layout of DAMO's
remote-code releases (VideoLLaMA3-2B/-7B and the -Image variants): the `videollama3_qwen2` config
with the Qwen2 fields at its top level and a `vision_encoder_config`, `image_token_index` 151665
(their added `<image>` token), a Qwen2.5 tokenizer's special tokens at their real ids plus DAMO's
three, the processor and preprocessor configs, remote-code .py files (never run), and the weights
under DAMO's module names: `model.vision_encoder.*`, `model.mm_projector.readout.*`, the Qwen2
decoder at `model.*`, `lm_head` only when untied. The key names are spelled out here from DAMO's
module tree, not derived from longwatch's converter, so a converter bug cannot hide in both.

Widths are the caller's: REAL_2B has the real 2B widths and vocabulary; depth is the caller's too.
Weights are random (std 0.02, norms at 1): the point is the layout, shapes and ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Qwen2.5's added tokens in id order from 151643, then DAMO's own three (151665-151667).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
DAMO_TOKENS = ["<image>", "<|stream_start|>", "<|stream_end|>"]
QWEN_BASE_VOCAB = 151643  # ids below the special tokens
IMAGE_PAD_ID, VIDEO_PAD_ID, DAMO_IMAGE_ID = 151655, 151656, 151665


@dataclass(frozen=True)
class Widths:
    """A checkpoint's shape: vision tower, decoder and vocabulary (embedding rows)."""

    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int
    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    text_layers: int
    vocab_size: int
    tie_word_embeddings: bool


def real_2b(vision_layers: int = 1, text_layers: int = 1) -> Widths:
    """VideoLLaMA3-2B's widths, heads and vocabulary at a reduced depth."""
    return Widths(1152, 4304, 16, vision_layers, 1536, 8960, 12, 2, text_layers, 151936, True)


def small(vision_layers: int = 1, text_layers: int = 2, tie: bool = True) -> Widths:
    """Narrow layers but the real vocabulary: fast, with every id where the real one has it."""
    return Widths(32, 64, 2, vision_layers, 64, 128, 4, 2, text_layers, 151936, tie)


def qwen_tokenizer(with_damo_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Qwen2.5's special tokens at their real ids (and DAMO's three).

    Ordinary text is spelled byte by byte (no merges); ids up to 151642 are filled with entries no
    text produces, so that every special token lands on its real id.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for i in range(len(vocab), QWEN_BASE_VOCAB):
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS + (DAMO_TOKENS if with_damo_tokens else []))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    assert fast.convert_tokens_to_ids("<|video_pad|>") == VIDEO_PAD_ID
    return fast


def damo_state_dict(w: Widths, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random weights under DAMO's key names (the hub release's, not their training layout's)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype)

    sd: dict[str, torch.Tensor] = {}
    v, vi = w.vision_hidden, w.vision_intermediate
    enc = "model.vision_encoder."
    sd[enc + "embeddings.patch_embedding.weight"] = rand(v, 3, 14, 14)
    sd[enc + "embeddings.patch_embedding.bias"] = rand(v)
    for i in range(w.vision_layers):
        p = f"{enc}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            sd[p + norm + ".weight"], sd[p + norm + ".bias"] = ones(v), rand(v)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = rand(v, v), rand(v)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(vi, v), rand(vi)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rand(v, vi), rand(v)
    sd[enc + "post_layernorm.weight"], sd[enc + "post_layernorm.bias"] = ones(v), rand(v)

    t, ti = w.text_hidden, w.text_intermediate
    sd["model.mm_projector.readout.0.weight"], sd["model.mm_projector.readout.0.bias"] = rand(t, v), rand(t)
    sd["model.mm_projector.readout.2.weight"], sd["model.mm_projector.readout.2.bias"] = rand(t, t), rand(t)

    kv = t // w.text_heads * w.text_kv_heads
    sd["model.embed_tokens.weight"] = rand(w.vocab_size, t)
    for i in range(w.text_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"] = rand(t, t), rand(t)
        sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"] = rand(kv, t), rand(kv)
        sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"] = rand(kv, t), rand(kv)
        sd[p + "self_attn.o_proj.weight"] = rand(t, t)
        sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"] = rand(ti, t), rand(ti, t)
        sd[p + "mlp.down_proj.weight"] = rand(t, ti)
        sd[p + "input_layernorm.weight"], sd[p + "post_attention_layernorm.weight"] = ones(t), ones(t)
    sd["model.norm.weight"] = ones(t)
    if not w.tie_word_embeddings:  # the 2B ties lm_head to the embeddings and stores no lm_head
        sd["lm_head.weight"] = rand(w.vocab_size, t)
    return sd


def damo_config(w: Widths, dtype: torch.dtype = torch.bfloat16) -> dict:
    """config.json of a DAMO release: Qwen2's fields at the top level, the vision encoder's nested."""
    return {
        "architectures": ["Videollama3Qwen2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_videollama3.Videollama3Qwen2Config",
            "AutoModelForCausalLM": "modeling_videollama3.Videollama3Qwen2ForCausalLM",
        },
        "model_type": "videollama3_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": w.text_hidden,
        "image_token_index": DAMO_IMAGE_ID,
        "initializer_range": 0.02,
        "intermediate_size": w.text_intermediate,
        "max_position_embeddings": 32768,
        "max_window_layers": w.text_layers,
        "mm_projector_type": "mlp2x_gelu",
        "num_attention_heads": w.text_heads,
        "num_hidden_layers": w.text_layers,
        "num_key_value_heads": w.text_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": w.tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.46.3",
        "use_cache": True,
        "use_sliding_window": False,
        "use_token_compression": True,
        "vision_encoder": None,
        "vision_encoder_config": {
            "hidden_size": w.vision_hidden,
            "intermediate_size": w.vision_intermediate,
            "model_type": "videollama3_vision_encoder",
            "num_attention_heads": w.vision_heads,
            "num_hidden_layers": w.vision_layers,
            "patch_size": 14,
        },
        "vocab_size": w.vocab_size,
    }


def write_damo_checkpoint(
    folder: Path,
    w: Widths,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    config: dict | None = None,
) -> Path:
    """Write a DAMO-layout release to `folder`; sharded (with an index) past `shard_bytes`.

    state_dict / config: written instead of the random ones (tests that break the layout).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = damo_state_dict(w, seed, dtype) if state_dict is None else state_dict
    _write_weights(folder, sd, shard_bytes)
    (folder / "config.json").write_text(json.dumps(config or damo_config(w, dtype), indent=2))
    qwen_tokenizer().save_pretrained(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config |= {"tokenizer_class": "Qwen2Tokenizer", "processor_class": "Videollama3Qwen2Processor"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    added = {tok: QWEN_BASE_VOCAB + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS + DAMO_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": False})
    )
    (folder / "processor_config.json").write_text(
        json.dumps(
            {
                "auto_map": {"AutoProcessor": "processing_videollama3.Videollama3Qwen2Processor"},
                "fps": 1,
                "image_merge_size": 1,
                "max_frames": 128,
                "processor_class": "Videollama3Qwen2Processor",
                "video_merge_size": 2,
            }
        )
    )
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "auto_map": {
                    "AutoImageProcessor": "image_processing_videollama3.Videollama3ImageProcessor",
                    "AutoProcessor": "processing_videollama3.Videollama3Qwen2Processor",
                },
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "Videollama3ImageProcessor",
                "image_std": [0.5, 0.5, 0.5],
                "max_tokens": 16384,
                "min_tokens": 16,
                "patch_size": 14,
                "processor_class": "Videollama3Qwen2Processor",
                "resample": 3,
                "rescale_factor": 1 / 255,
            }
        )
    )
    for name in ("configuration_videollama3.py", "modeling_videollama3.py", "processing_videollama3.py"):
        (folder / name).write_text("raise RuntimeError('remote code of a fake DAMO release: never run')\n")
    return folder


def _write_weights(folder: Path, sd: dict[str, torch.Tensor], shard_bytes: int | None) -> None:
    keys = list(sd)
    if shard_bytes is None:
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[list[str]] = [[]]
    size = 0
    for k in keys:
        n = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: sd[k] for k in shard}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
