"""`longwatch convert`: DAMO-layout releases (built by the tests, tests/damo_checkpoint.py) to native.

The oracle is transformers itself: the converted folder must load into its native
`VideoLlama3ForConditionalGeneration` with no missing, unexpected or mismatched key, and every
tensor must equal the source's under the name DAMO's module tree gives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from damo_checkpoint import (
    DAMO_IMAGE_ID,
    IMAGE_PAD_ID,
    VIDEO_PAD_ID,
    damo_config,
    damo_state_dict,
    small,
    write_damo_checkpoint,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, VideoLlama3ForConditionalGeneration

from longwatch.clients import main
from longwatch.model.convert import ConversionError, convert


def expected_name(damo_key: str) -> str:
    """Where each DAMO weight belongs in the native model, written out by module (not by the converter)."""
    if damo_key.startswith("model.vision_encoder."):
        return "model.vision_model." + damo_key.removeprefix("model.vision_encoder.")
    if damo_key.startswith("model.mm_projector."):
        return "model.projector." + damo_key.removeprefix("model.mm_projector.")
    if damo_key.startswith("model."):
        return "model.language_model." + damo_key.removeprefix("model.")
    return damo_key


def native_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.mark.parametrize("tie", [True, False], ids=["2B-like, tied", "7B-like, untied"])
def test_a_converted_release_loads_natively_with_every_tensor_equal(tmp_path: Path, tie: bool) -> None:
    widths = small(vision_layers=2, text_layers=2, tie=tie)
    src = write_damo_checkpoint(tmp_path / "VideoLLaMA3-2B", widths, shard_bytes=6_000_000)
    assert (src / "model.safetensors.index.json").is_file()  # a sharded source, as the 7B is
    report = convert(src, tmp_path / "native", shard_bytes=10_000_000)
    out = report.out
    assert report.shards > 1 and (out / "model.safetensors.index.json").is_file()

    model, info = VideoLlama3ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    source = damo_state_dict(widths)
    converted = native_tensors(out)
    assert set(converted) == {expected_name(k) for k in source}
    for key, tensor in source.items():
        assert converted[expected_name(key)].dtype == torch.bfloat16
        assert torch.equal(converted[expected_name(key)], tensor), key
    loaded = model.state_dict()
    for key, tensor in source.items():
        assert torch.equal(loaded[expected_name(key)].to(tensor.dtype), tensor), key
    if tie:  # the 2B stores no lm_head: the native model ties it to the embeddings
        assert "lm_head.weight" not in converted
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "video_llama_3" and "auto_map" not in config
    assert (config["image_token_id"], config["video_token_id"]) == (IMAGE_PAD_ID, VIDEO_PAD_ID)
    assert config["text_config"]["hidden_size"] == widths.text_hidden
    assert config["text_config"]["vocab_size"] == 151936
    assert config["vision_config"]["hidden_size"] == widths.vision_hidden
    assert config["vision_config"]["patch_size"] == 14 and config["tie_word_embeddings"] is tie
    assert model.config.text_config.rope_parameters["rope_theta"] == 1e6


def test_the_tokenizer_and_video_settings_come_across(tmp_path: Path) -> None:
    src = write_damo_checkpoint(tmp_path / "src", small())
    out = convert(src, tmp_path / "native").out
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == VIDEO_PAD_ID
    assert tokenizer.convert_tokens_to_ids("<image>") == DAMO_IMAGE_ID  # DAMO's own tokens keep their ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645 and len(tokenizer) == 151668
    assert "processor_class" not in json.loads((out / "tokenizer_config.json").read_text())
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert (video["patch_size"], video["merge_size"], video["temporal_patch_size"]) == (14, 2, 1)
    assert video["max_frames"] == 128 and video["use_token_compression"] is True
    assert video["size"] == {"shortest_edge": 16 * 28 * 28, "longest_edge": 16384 * 28 * 28}
    image = json.loads((out / "preprocessor_config.json").read_text())
    assert image["merge_size"] == 1 and image["size"]["longest_edge"] == 16384 * 14 * 14
    assert not list(out.glob("*.py"))  # DAMO's remote code does not come across
    card = json.loads((out / "longwatch.json").read_text())
    assert card["name"] == "src" and card["converted_from"]["model_type"] == "videollama3_qwen2"


def _broken(tmp_path: Path, change: str) -> Path:
    widths = small()
    sd = damo_state_dict(widths)
    config = damo_config(widths)
    if change == "unexpected":
        sd["model.vision_encoder.head.weight"] = torch.zeros(2)
    elif change == "missing":
        del sd["model.layers.1.mlp.down_proj.weight"]
    elif change == "shape":
        sd["model.mm_projector.readout.2.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    elif change == "native":
        config["model_type"] = "video_llama_3"
    elif change == "projector":
        config["mm_projector_type"] = "linear"
    return write_damo_checkpoint(tmp_path / change, widths, state_dict=sd, config=config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unexpected", "unexpected 1: model.vision_encoder.head.weight"),
        ("missing", "missing 1: model.language_model.layers.1.mlp.down_proj.weight"),
        ("shape", "model.mm_projector.readout.2.weight is (3, 3)"),
        ("native", "already in transformers' native layout"),
        ("projector", "mm_projector_type 'linear'"),
    ],
)
def test_what_it_does_not_recognise_is_refused_and_nothing_is_written(
    tmp_path: Path, change: str, message: str
) -> None:
    src = _broken(tmp_path, change)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert(src, out)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_the_command_converts_and_says_what_it_refuses_in_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = write_damo_checkpoint(tmp_path / "src", small())
    assert main.main(["convert", str(src), str(tmp_path / "native")]) == 0
    assert "longwatch serve --model" in capsys.readouterr().out
    assert main.main(["convert", str(src), str(tmp_path / "native")]) == 1  # never over an existing folder
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not an empty folder" in err and "\n" not in err
    assert main.main(["convert", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1
    assert "no config.json" in capsys.readouterr().err
