"""outputs.write_outputs: 8-bit sRGB PNG with its parameters, JSON sidecar, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core import outputs
from spherediff_core.options import GenerationOptions
from spherediff_core.pipeline import GenerationResult

PROMPT = "zebra lighthouse mango"


def make_result(tmp_path, prompt: str = PROMPT, seed: int = 7) -> GenerationResult:
    h, w = 16, 32
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=gen)
    image[:, 0, 0] = torch.tensor([0.0, 0.5, 1.0])
    image[:, 0, 1] = torch.tensor([0.2, 0.998, 0.001])
    image[:, 0, 2] = torch.tensor([-0.5, 1.5, float("nan")])  # clamped, NaN -> 0
    options = GenerationOptions(
        prompt=prompt,
        sky_prompt="deep blue sky",
        output=str(tmp_path / "unused.png"),
        model="owner/model",
        steps=20,
        guidance=4.5,
        seed=seed,
        width=w,
    )
    model = {
        "family": "sd",
        "pipeline_class": "StableDiffusionPipeline",
        "latent_channels": 4,
        "vae_scale_factor": 8,
        "dtype": "float32",
        "device": "cpu",
        "source": "owner/model",
        "revision": "abc123",
    }
    timings = {"denoiser": 1.5, "vae": 0.25, "denoise": 1.75, "decode": 0.3, "total": 2.5}
    return GenerationResult(image, options, 599, (9, 9), 89, timings, model)


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_png_is_8bit_rgb_with_rounded_values_and_text_chunk(tmp_path):
    result = make_result(tmp_path)
    paths = outputs.write_outputs(result, tmp_path / "out" / "pano.png")
    assert paths.image == (tmp_path / "out" / "pano.png").absolute()
    with Image.open(paths.image) as im:
        im.load()
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 16))
        assert im.info.get("srgb") == 0  # sRGB chunk, perceptual intent
        pixels = [im.getpixel((x, 0)) for x in range(3)]
        doc = json.loads(im.text["spherediff"])
    assert pixels[0] == (0, 128, 255)  # 0.5 * 255 = 127.5 -> 128
    assert pixels[1] == (51, 254, 0)  # 0.2 * 255 = 51, 0.998 * 255 = 254.49 -> 254
    assert pixels[2] == (0, 255, 0)
    expected = (result.image.clamp(0, 1).nan_to_num(0) * 255).round().to(torch.uint8)
    with Image.open(paths.image) as im:
        got = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    assert torch.equal(got, expected)

    # Every parameter, but nothing that changes from run to run, nor the output path.
    assert doc["options"]["prompt"] == PROMPT
    assert doc["options"]["steps"] == 20 and doc["options"]["guidance"] == 4.5
    assert "output" not in doc["options"]
    assert "timings" not in doc and "created" not in doc
    assert doc["seed"] == 7 and doc["width"] == 32 and doc["height"] == 16
    assert doc["model"]["id"] == "owner/model" and doc["model"]["revision"] == "abc123"
    assert doc["n_points"] == 599 and doc["grid"] == [9, 9] and doc["views"] == 89


def test_sidecar_holds_every_field(tmp_path):
    result = make_result(tmp_path)
    paths = outputs.write_outputs(
        result, tmp_path / "pano.png", timings={"load": 3.0, **result.timings}
    )
    assert paths.sidecar == (tmp_path / "pano.json").absolute()
    doc = json.loads(paths.sidecar.read_text(encoding="utf-8"))
    assert set(doc["options"]) == set(GenerationOptions.__dataclass_fields__)
    assert doc["options"]["output"] == str(tmp_path / "pano.png")
    assert doc["options"]["steps"] == 20 and doc["options"]["guidance"] == 4.5
    assert doc["options"]["sky_prompt"] == "deep blue sky"
    model = doc["model"]
    assert model["id"] == "owner/model" and model["revision"] == "abc123"
    assert (model["family"], model["dtype"], model["device"]) == ("sd", "float32", "cpu")
    assert doc["seed"] == 7
    assert (doc["n_points"], doc["grid"], doc["views"]) == (599, [9, 9], 89)
    assert (doc["width"], doc["height"]) == (32, 16)
    for name in ("spherediff", "torch", "diffusers", "transformers", "python"):
        assert doc["versions"][name], name
    assert doc["timings"]["load"] == 3.0
    assert doc["timings"]["denoiser"] == 1.5 and doc["timings"]["vae"] == 0.25
    assert doc["image"] == "pano.png"
    assert doc["created"].endswith("+00:00")
    # The PNG's chunk is the sidecar less the per-run fields.
    with Image.open(paths.image) as im:
        chunk = json.loads(im.text["spherediff"])
    per_run = {"image", "created", "timings", "options"}
    assert {k: v for k, v in doc.items() if k not in per_run} == {
        k: v for k, v in chunk.items() if k != "options"
    }


def test_non_ascii_prompt_round_trips(tmp_path):
    prompt = "Nebelwald im Morgengrauen, 霧の森 🌲"
    paths = outputs.write_outputs(make_result(tmp_path, prompt), tmp_path / "pano.png")
    with Image.open(paths.image) as im:
        assert json.loads(im.text["spherediff"])["options"]["prompt"] == prompt
    assert json.loads(paths.sidecar.read_text(encoding="utf-8"))["options"]["prompt"] == prompt


def test_same_result_gives_identical_png_bytes_at_any_path(tmp_path):
    a = outputs.write_outputs(make_result(tmp_path), tmp_path / "a" / "first.png")
    b = outputs.write_outputs(make_result(tmp_path), tmp_path / "b" / "second.png")
    assert a.image.read_bytes() == b.image.read_bytes()
    c = outputs.write_outputs(make_result(tmp_path, seed=8), tmp_path / "c" / "first.png")
    assert a.image.read_bytes() != c.image.read_bytes()


def test_folder_is_created_and_existing_files_replaced(tmp_path):
    target = tmp_path / "deep" / "er" / "pano.png"
    outputs.write_outputs(make_result(tmp_path), target)
    first = target.read_bytes()
    outputs.write_outputs(make_result(tmp_path, seed=9), target)
    assert target.read_bytes() != first
    assert names(target.parent) == ["pano.json", "pano.png"]


def test_failed_png_save_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(array, path, text):
        path.write_bytes(b"\x89PNG half")  # a partial temporary, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "_save_png", broken_save)
    with pytest.raises(OSError, match="disk full"):
        outputs.write_outputs(make_result(tmp_path), tmp_path / "out" / "pano.png")
    assert names(tmp_path / "out") == []


def test_failed_sidecar_save_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(text, path):
        raise KeyboardInterrupt  # a second Ctrl-C in the middle of writing

    monkeypatch.setattr(outputs, "_save_text", broken_save)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_outputs(make_result(tmp_path), tmp_path / "pano.png")
    assert names(tmp_path) == []


def test_failed_sidecar_rename_removes_the_image_too(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise PermissionError("locked")
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(PermissionError):
        outputs.write_outputs(make_result(tmp_path), tmp_path / "pano.png")
    assert names(tmp_path) == []


def test_prompt_never_appears_in_file_names(tmp_path, monkeypatch):
    seen = []
    real_save_png, real_save_text = outputs._save_png, outputs._save_text

    def save_png(array, path, text):
        seen.append(path.name)
        real_save_png(array, path, text)

    def save_text(text, path):
        seen.append(path.name)
        real_save_text(text, path)

    monkeypatch.setattr(outputs, "_save_png", save_png)
    monkeypatch.setattr(outputs, "_save_text", save_text)
    outputs.write_outputs(make_result(tmp_path), tmp_path / "pano.png")
    seen += names(tmp_path)
    assert len(seen) == 4
    assert all(path.startswith(".pano.") and path.endswith(".tmp") for path in seen[:2])
    for word in PROMPT.split():
        assert not any(word in path for path in seen), (word, seen)


def test_refuses_a_non_png_name(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.png"):
        outputs.write_outputs(make_result(tmp_path), tmp_path / "pano.jpg")
    assert names(tmp_path) == []
