"""GenerationOptions: every bad value refused with a message naming the field and value."""

from __future__ import annotations

import json
import math
import os

import pytest
from spherediff_core.options import GenerationOptions, OptionsError


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return folder


def good(tmp_path, model_dir, **overrides) -> GenerationOptions:
    values = {"prompt": "a misty pine forest at dawn", "output": str(tmp_path / "pano.png")}
    values["model"] = str(model_dir)
    values.update(overrides)
    return GenerationOptions(**values)


# (id, overrides: dict or callable(tmp_path) -> dict, field, text the message must contain)
BAD = [
    ("negative steps", {"steps": -1}, "steps", "-1"),
    ("zero steps", {"steps": 0}, "steps", "0 is out of range"),
    ("too many steps", {"steps": 1001}, "steps", "1001"),
    ("steps as text", {"steps": "20"}, "steps", "'20'"),
    ("odd width", {"width": 1001}, "width", "1001 is odd"),
    ("huge width", {"width": 100_000}, "width", "100000"),
    ("tiny width", {"width": 32}, "width", "32"),
    ("nan guidance", {"guidance": math.nan}, "guidance", "nan"),
    ("inf guidance", {"guidance": math.inf}, "guidance", "inf"),
    ("negative guidance", {"guidance": -1.0}, "guidance", "-1"),
    ("empty prompt", {"prompt": ""}, "prompt", "'' is empty"),
    ("whitespace prompt", {"prompt": "   \t"}, "prompt", "'   \\t' is empty"),
    ("prompt not text", {"prompt": 42}, "prompt", "42"),
    ("overlong prompt", {"prompt": "x" * 5000}, "prompt", "5000 characters"),
    ("prompt with NUL", {"prompt": "a\x00b"}, "prompt", "NUL"),
    ("empty sky prompt", {"sky_prompt": ""}, "sky_prompt", "''"),
    ("blank ground prompt", {"ground_prompt": "  "}, "ground_prompt", "'  '"),
    ("negative prompt None", {"negative_prompt": None}, "negative_prompt", "None"),
    ("unknown device", {"device": "tpu"}, "device", "'tpu'"),
    ("bad cuda index", {"device": "cuda:x"}, "device", "'cuda:x'"),
    ("unknown precision", {"precision": "fp8"}, "precision", "'fp8'"),
    ("unknown size preset", {"size": "3K"}, "size", "'3K'"),
    ("size as a list", {"size": ["1K"]}, "size", "['1K']"),
    ("unknown sampling", {"sampling": "random"}, "sampling", "'random'"),
    ("seed as text", {"seed": "7"}, "seed", "'7'"),
    ("seed as float", {"seed": 1.5}, "seed", "1.5"),
    ("seed as bool", {"seed": True}, "seed", "True"),
    ("negative seed", {"seed": -3}, "seed", "-3"),
    ("n_points too small", {"n_points": 10}, "n_points", "10"),
    ("fov too small", {"fov_deg": 10.0}, "fov_deg", "10"),
    ("fov too large", {"fov_deg": 170.0}, "fov_deg", "170"),
    ("overlap too large", {"overlap": 0.95}, "overlap", "0.95"),
    ("temperature zero", {"temperature": 0.0}, "temperature", "0"),
    ("view batch zero", {"view_batch_size": 0}, "view_batch_size", "0"),
    ("offload not bool", {"cpu_offload": "yes"}, "cpu_offload", "'yes'"),
    ("offline not bool", {"offline": 1}, "offline", "1"),
    ("output not png", lambda t: {"output": str(t / "pano.jpg")}, "output", "pano.jpg"),
    ("output empty", {"output": ""}, "output", "''"),
    ("output is a folder", lambda t: {"output": str(t / "dir.png")}, "output", "dir.png"),
    (
        "output under a file",
        lambda t: {"output": str(t / "afile" / "pano.png")},
        "output",
        "afile",
    ),
    ("missing model folder", lambda t: {"model": str(t / "nope")}, "model", "nope"),
    ("model folder without index", lambda t: {"model": str(t / "empty")}, "model", "empty"),
    ("model is a file", lambda t: {"model": str(t / "afile")}, "model", "afile"),
    ("model not a hub id", {"model": "just a name"}, "model", "'just a name'"),
    ("empty model", {"model": ""}, "model", "''"),
    ("empty revision", {"revision": ""}, "revision", "''"),
    ("cache dir is a file", lambda t: {"cache_dir": str(t / "afile")}, "cache_dir", "afile"),
    # Invalid Unicode: a JSON job's lone surrogate, a command line's byte that is not UTF-8
    # (Python carries it as U+DC80..U+DCFF); both failed in the tokenizer after loading.
    ("lone surrogate prompt", {"prompt": "sea \ud83d"}, "prompt", "U+D83D at position 4"),
    ("surrogate negative", {"negative_prompt": "\udfff"}, "negative_prompt", "lone surrogate"),
    ("non-UTF-8 sky prompt", {"sky_prompt": "a\udcffb"}, "sky_prompt", "byte 0xff at position 1"),
    ("non-UTF-8 output", lambda t: {"output": str(t / "p\udce9.png")}, "output", "byte 0xe9"),
    ("non-UTF-8 model", {"model": "own\udc80er/name"}, "model", "byte 0x80"),
    ("surrogate revision", {"revision": "main\ud800"}, "revision", "U+D800"),
    (
        "output name too long",
        lambda t: {"output": str(t / ("p" * 250 + ".png"))},
        "output",
        "too long for the file system",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "field", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_values_are_refused_naming_field_and_value(
    tmp_path, model_dir, overrides, field, needle
):
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    if callable(overrides):
        overrides = overrides(tmp_path)
    with pytest.raises(OptionsError) as info:
        good(tmp_path, model_dir, **overrides).validate()
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert needle in message, message


def test_every_bad_value_has_its_own_message(tmp_path, model_dir):
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    messages = []
    for _, overrides, _, _ in BAD:
        values = overrides(tmp_path) if callable(overrides) else overrides
        with pytest.raises(OptionsError) as info:
            good(tmp_path, model_dir, **values).validate()
        messages.append(str(info.value))
    assert len(BAD) >= 20
    assert len(set(messages)) == len(messages)


@pytest.mark.skipif(
    os.name == "nt" or (hasattr(os, "geteuid") and os.geteuid() == 0),
    reason="file permissions do not bind root (or work differently on Windows)",
)
def test_unreadable_model_folder_is_refused(tmp_path, model_dir):
    index = model_dir / "model_index.json"
    index.chmod(0)
    try:
        with pytest.raises(OptionsError, match=r"model: .* not readable"):
            good(tmp_path, model_dir).validate()
    finally:
        index.chmod(0o644)


def test_unknown_json_key_is_refused():
    with pytest.raises(OptionsError) as info:
        GenerationOptions.from_dict({"prompt": "a sea", "stpes": 20})
    assert info.value.field == "stpes"
    assert "unknown option" in str(info.value)


def test_missing_prompt_and_non_object_are_refused():
    with pytest.raises(OptionsError, match="prompt: missing"):
        GenerationOptions.from_dict({"steps": 20})
    with pytest.raises(OptionsError, match="options: expected a JSON object, got list"):
        GenerationOptions.from_dict(["a sea"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"steps": 1},
        {"steps": 1000},
        {"guidance": 0.0},
        {"guidance": 50},
        {"seed": 0},
        {"seed": 2**63 - 1},
        {"size": "8K"},
        {"width": 64},
        {"width": 16384},
        {"n_points": 100},
        {"fov_deg": 30},
        {"fov_deg": 120.0},
        {"overlap": 0.0},
        {"sampling": "nearest"},
        {"view_batch_size": 256},
        {"device": "cpu"},
        {"device": "cuda:1"},
        {"precision": "bf16"},
        {"negative_prompt": ""},
        {"sky_prompt": "clear blue sky", "ground_prompt": "wet sand"},
        {"prompt": "Nebelwald im Morgengrauen, 霧の森 🌲"},
        {"model": "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers"},
        {"revision": "main"},
        {"cpu_offload": True, "vae_tiling": True, "vae_slicing": True, "offline": True},
    ],
)
def test_good_values_are_accepted(tmp_path, model_dir, overrides):
    options = good(tmp_path, model_dir, **overrides)
    assert options.validate() is options


def test_output_in_a_folder_still_to_create_is_accepted(tmp_path, model_dir):
    good(tmp_path, model_dir, output=str(tmp_path / "a" / "b" / "pano.PNG")).validate()
    assert not (tmp_path / "a").exists()  # validation creates nothing


def test_size_preset_sets_the_width(tmp_path, model_dir):
    options = good(tmp_path, model_dir, size="4K", width=512)
    assert (options.resolved_width, options.height) == (4096, 2048)


def test_to_dict_from_dict_round_trip_through_json(tmp_path, model_dir):
    options = good(
        tmp_path,
        model_dir,
        sky_prompt="stars",
        steps=12,
        guidance=4.5,
        seed=123,
        size="1K",
        n_points=5000,
        precision="fp16",
        cache_dir=str(tmp_path),
        vae_tiling=True,
    )
    data = json.loads(json.dumps(options.to_dict()))
    again = GenerationOptions.from_dict(data)
    assert again == options
    assert again.validate().to_dict() == options.to_dict()
