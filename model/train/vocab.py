"""A word-level tokenizer for small trained models, built with `tokenizers` from the texts it must spell.

Words carry a leading "▁" (the space before them), digits and punctuation are single tokens, so
"Time 12.0s:" and "at 123 s" spell out digit by digit and decode back to the same text.
Words outside the vocabulary become <unk>: a demo model only knows the words it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from longwatch.model.tiny import SPECIAL_TOKENS

UNK = "<unk>"


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Every word, digit and punctuation mark of `texts`, plus the chat and video special tokens."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.WordLevelTrainer(special_tokens=[UNK, *SPECIAL_TOKENS], min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK,
    )


def missing_words(tokenizer_json: dict, texts: Iterable[str]) -> list[str]:
    """The tokens a word tokenizer built from `texts` has and this one (tokenizer.json's dict) lacks,
    in the order the new one numbers them."""
    have = tokenizer_json["model"]["vocab"]
    built = build_word_tokenizer(texts).get_vocab()
    return [t for t, _ in sorted(built.items(), key=lambda kv: kv[1]) if t not in have]


def extend_vocabulary(base: Path, texts: Iterable[str], adapter: Path | None = None) -> list[str]:
    """Give a word-level demo base every word of `texts` it lacks, in place; returns the words added.

    New tokens take the next ids and new rows of the (tied) embedding, set to the mean of the
    existing rows: every old token keeps its id and weights, so the model says what it said
    before until it is trained on the new words. `adapter` (summary tokens for this base) is
    told its base's new fingerprint and width of embedding.
    """
    from safetensors.torch import load_file, save_file

    from longwatch.model.checkpoint import checkpoint_fingerprint

    tok_path = base / "tokenizer.json"
    tok = json.loads(tok_path.read_text())
    words = missing_words(tok, texts)
    if not words:
        return []
    vocab = tok["model"]["vocab"]
    for word in words:
        vocab[word] = len(vocab)
    tok_path.write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n")
    weights_path = base / "model.safetensors"
    weights = load_file(str(weights_path))
    key = "model.language_model.embed_tokens.weight"
    embed = weights[key]  # (vocab, hidden)
    if embed.shape[0] != len(vocab) - len(words):
        raise ValueError(f"{base}: {embed.shape[0]} embedding rows for {len(vocab) - len(words)} tokens")
    rows = embed.mean(0, keepdim=True).expand(len(words), -1)
    weights[key] = torch.cat([embed, rows]).contiguous()
    save_file(weights, str(weights_path), metadata={"format": "pt"})
    config_path = base / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["vocab_size"] = len(vocab)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if adapter is not None:
        adapter_path = adapter / "adapter_config.json"
        card = json.loads(adapter_path.read_text())
        card["embedding_rows"] = len(vocab)
        card["base_fingerprint"] = checkpoint_fingerprint(base)
        adapter_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return words
