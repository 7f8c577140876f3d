"""Tiny VideoLLaMA3 checkpoints built in code: for tests, and the default model until a trained one ships.

They are real `VideoLlama3ForConditionalGeneration` models, saved as an HF-format folder and
loaded back through `from_pretrained`, so they take the same code path a real checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, VideoLlama3Config, VideoLlama3ForConditionalGeneration

# The chat markers of the Qwen2 family that VideoLLaMA3 is built on, the video placeholder
# the native processor uses, and the summary token of Video-XL.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<vs>"]
TINY_MODEL_NAME = "longwatch-tiny-random"


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens plus the special tokens.

    It can spell any text, which is all a random model needs; a trained demo model brings its own.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )


def tiny_config(
    vocab_size: int,
    video_token_id: int,
    image_token_id: int,
    vision_overrides: dict | None = None,
    **text_overrides: object,
) -> VideoLlama3Config:
    """A VideoLLaMA3 config small enough to run anywhere: 2-layer vision tower, 2-layer Qwen2 decoder."""
    text = {
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 65536,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
        "eos_token_id": None,
        "pad_token_id": None,
        "bos_token_id": None,
    }
    text.update(text_overrides)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 14,
        "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
    }
    vision.update(vision_overrides or {})
    return VideoLlama3Config(
        text_config=text,
        vision_config=vision,
        video_token_id=video_token_id,
        image_token_id=image_token_id,
        tie_word_embeddings=True,
    )


def build_tiny_model(
    folder: Path,
    seed: int = 0,
    init_scale: float = 1.0,
    projector_scale: float = 1.0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    name: str = TINY_MODEL_NAME,
    card: dict | None = None,
    vision_overrides: dict | None = None,
    **text_overrides: object,
) -> Path:
    """Write a randomly initialised tiny VideoLLaMA3 (weights, config, tokenizer) to `folder`.

    init_scale multiplies every weight after init: tests use a large scale so that a wrong
    position or a wrong mask shows up as a large logit difference instead of hiding in noise.
    projector_scale: multiplies the projector's output layer at init. Visual tokens then enter the
    decoder near unit RMS per channel rather than at the word embeddings' init scale (std 0.02);
    a decoder trained from scratch learned to read them several times faster (docs/demo-model.md).
    card: extra fields for longwatch.json (e.g. the ingest settings the model was trained for).
    """
    tokenizer = tokenizer or build_byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = tiny_config(
        len(tokenizer), ids("<|video_pad|>"), ids("<|image_pad|>"), vision_overrides, **text_overrides
    )
    config.text_config.eos_token_id = ids("<|im_end|>")
    torch.manual_seed(seed)
    model = VideoLlama3ForConditionalGeneration(config)
    if init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)
    if projector_scale != 1.0:
        with torch.no_grad():
            for p in model.model.projector.readout[-1].parameters():
                p.mul_(projector_scale)
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("tiny model: lm_head is not tied to the embeddings")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    card = {"name": name, "seed": seed, **(card or {})}
    (folder / "longwatch.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return folder


def ensure_default_model(state_dir: Path) -> Path:
    """The built-in model's folder under the state directory, built on first use (seed 0)."""
    folder = Path(state_dir) / "models" / TINY_MODEL_NAME
    if not (folder / "config.json").exists():
        # Built aside and renamed into place, so a crash mid-build never leaves a half model.
        tmp = folder.with_name(folder.name + ".partial")
        build_tiny_model(tmp, seed=0)
        tmp.replace(folder)
    return folder
