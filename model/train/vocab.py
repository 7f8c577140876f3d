"""A word-level tokenizer for small trained models, built with `tokenizers` from the texts it must spell.

Words carry a leading "▁" (the space before them), digits and punctuation are single tokens, so
"Time 12.0s:" and "at 123 s" spell out digit by digit and decode back to the same text.
Words outside the vocabulary become <unk>: a demo model only knows the words it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable

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
