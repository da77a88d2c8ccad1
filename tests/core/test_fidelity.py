"""Issue 9's fixes beyond the parity suite (tests/core/test_parity.py): per-family sizes and
their warnings, the options' backward compatibility, SANA's bf16 weight files, Wan's
float32 VAE, SANA's prompt encoding, FLUX's true CFG switch and seeded stochastic
schedulers over the whole sphere."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler
from spherediff_core.adapters import (
    ADAPTERS,
    FluxAdapter,
    SanaAdapter,
    StableDiffusion3Adapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
)
from spherediff_core.options import GenerationOptions
from spherediff_core.pipeline import (
    SphereDiffPipeline,
    resolve_request,
    resolve_size,
    size_advice,
)


@pytest.fixture(scope="module")
def folders(tiny_folders):
    return tiny_folders  # shared with the adapter and parity tests (tests/conftest.py)


def load(folder, tmp_path, **kw) -> SphereDiffPipeline:
    return SphereDiffPipeline.from_pretrained(
        str(folder), device="cpu", offline=True, plan_cache_dir=tmp_path / "plans", **kw
    )


# --- sizes --------------------------------------------------------------------------------


def test_unset_size_is_the_family_default_and_explicit_sizes_are_kept():
    unset = GenerationOptions(prompt="x")
    assert unset.width is None and unset.size is None
    assert resolve_size(unset, FluxAdapter).resolved_width == 4096
    assert resolve_size(unset, StableDiffusionXLAdapter).resolved_width == 4096
    assert resolve_size(unset, StableDiffusion3Adapter).resolved_width == 4096
    assert resolve_size(unset, SanaAdapter).resolved_width == 2048
    assert resolve_size(unset, StableDiffusionAdapter).resolved_width == 2048
    for adapter in ADAPTERS:
        assert (
            resolve_size(GenerationOptions(prompt="x", width=1024), adapter).resolved_width == 1024
        )
        assert (
            resolve_size(GenerationOptions(prompt="x", size="8K"), adapter).resolved_width == 8192
        )


@pytest.mark.parametrize(
    ("adapter", "view_px"),
    [
        (SanaAdapter, 576),  # the paper's 2K SANA panorama
        (FluxAdapter, 1104),
        (StableDiffusionXLAdapter, 1096),
        (StableDiffusion3Adapter, 1104),
        (StableDiffusionAdapter, 552),
    ],
)
def test_default_views_are_near_the_native_size_without_a_warning(adapter, view_px):
    advice = size_advice(GenerationOptions(prompt="x"), adapter)
    assert advice.view_px == view_px
    assert advice.note is None
    assert 0.5 * adapter.native_view_px <= advice.view_px <= 1.1 * adapter.native_view_px


def test_far_below_native_says_so_and_names_a_preset_that_fits():
    advice = size_advice(GenerationOptions(prompt="x", size="2K"), FluxAdapter)
    assert advice.view_px == 560
    assert advice.note is not None
    assert "560 px" in advice.note and "1024 px" in advice.note and "4K" in advice.note
    # SD 1.5 at 4K: views twice its training size.
    assert (
        "over twice"
        in size_advice(GenerationOptions(prompt="x", size="4K"), StableDiffusionAdapter).note
    )


def test_the_warning_reaches_the_result(folders, tmp_path):
    pipe = load(folders["flux"], tmp_path)
    options = GenerationOptions(
        prompt="a city",
        model=str(folders["flux"]),
        width=256,
        steps=1,
        output=str(tmp_path / "a.png"),
    )
    result = pipe(options)
    assert result.view_px == result.grid[1] * 8
    assert len(result.warnings) == 1 and "far below" in result.warnings[0]
    # ...and the sidecar the add-on and scripts read.
    from spherediff_core.outputs import write_outputs

    paths = write_outputs(result, tmp_path / "pano.png")
    sidecar = json.loads(paths.sidecar.read_text(encoding="utf-8"))
    assert sidecar["warnings"] == result.warnings
    # The family default (no size given) is used and reported in the options.
    assert result.options.width == 256


def test_options_json_stays_backward_compatible():
    old_job = {"prompt": "x", "width": 2048, "size": None, "steps": 4}
    options = GenerationOptions.from_dict(old_job).validate()
    assert options.resolved_width == 2048 and options.size_given
    new = GenerationOptions.from_dict({"prompt": "x"}).validate()
    assert new.width is None and not new.size_given
    assert GenerationOptions.from_dict(new.to_dict()) == new


# --- FLUX true CFG ------------------------------------------------------------------------


def test_flux_true_cfg_runs_only_with_a_negative_prompt_and_a_scale_above_one(folders, tmp_path):
    adapter = load(folders["flux"], tmp_path).adapter
    base = {"prompt": "x", "model": str(folders["flux"])}
    off = resolve_request(GenerationOptions(**base, negative_prompt="blur"), adapter)
    assert not off.do_cfg and off.cfg_scale == 1.0
    no_negative = resolve_request(GenerationOptions(**base, true_cfg_scale=4.0), adapter)
    assert not no_negative.do_cfg
    on = resolve_request(
        GenerationOptions(**base, negative_prompt="blur", true_cfg_scale=4.0), adapter
    )
    assert on.do_cfg and on.cfg_scale == 4.0 and on.guidance == adapter.default_guidance


# --- SANA -------------------------------------------------------------------------------


def test_sana_prompt_has_the_instruction_and_the_negative_prompt_has_none(folders, tmp_path):
    adapter = load(folders["sana"], tmp_path).adapter
    pipe = adapter.pipe
    instruction = adapter.complex_human_instruction()
    assert instruction and instruction[0].startswith("Given a user prompt")
    positive = adapter.encode_prompt("a city").tensors["encoder_hidden_states"]
    plain, _, _, _ = pipe.encode_prompt(
        "a city", do_classifier_free_guidance=False, device="cpu", complex_human_instruction=None
    )
    with_instruction, _, _, _ = pipe.encode_prompt(
        "a city",
        do_classifier_free_guidance=False,
        device="cpu",
        complex_human_instruction=instruction,
    )
    # token 0 plus the last 299: 300 tokens either way, but the instruction changes them.
    assert positive.shape[1] == plain.shape[1] == 300
    assert torch.equal(positive, with_instruction)
    assert not torch.allclose(positive, plain)
    negative = adapter.encode_negative_prompt("a city").tensors["encoder_hidden_states"]
    assert torch.equal(negative, plain)
    assert adapter.describe()["complex_human_instruction"] is True


def test_sana_loads_its_bf16_weight_files_when_the_model_has_them(folders, tmp_path):
    from diffusers import SanaPipeline

    folder = tmp_path / "sana-with-variant"
    pipe = SanaPipeline.from_pretrained(folders["sana"])
    pipe.save_pretrained(folder, safe_serialization=True)
    # The bf16 files hold other weights, so which files were loaded shows.
    for p in pipe.transformer.parameters():
        p.data.add_(1.0)
    pipe.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True, variant="bf16")
    assert list(folder.glob("transformer/*.bf16.safetensors"))
    want = next(pipe.transformer.parameters()).detach().float()

    loaded = load(folder, tmp_path, precision="fp32").adapter.pipe
    got = next(loaded.transformer.parameters()).detach()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    # A folder without bf16 files loads its plain ones.
    plain = load(folders["sana"], tmp_path, precision="fp32").adapter.pipe
    assert not torch.equal(next(plain.transformer.parameters()).detach(), got)


# --- Wan ----------------------------------------------------------------------------------


def test_wan_vae_stays_in_float32_when_the_transformer_is_bf16(folders, tmp_path):
    pipe = load(folders["wan"], tmp_path, precision="bf16")
    assert pipe.adapter.pipe.transformer.dtype == torch.bfloat16
    assert pipe.adapter.pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.adapter.pipe.vae.dtype == torch.float32
    f, h = 2, 4
    latents = torch.randn(1, 16, f, h, h, dtype=torch.bfloat16)
    video = pipe.adapter.decode(latents)
    assert video.dtype == torch.float32 and video.shape == (1, 3, 5, 32, 32)


# --- stochastic schedulers over the whole sphere ------------------------------------------


def test_ancestral_sampler_same_seed_same_panorama_other_seed_other(folders, tmp_path):
    pipe = load(folders["sd15"], tmp_path)
    pipe.adapter.pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
        pipe.adapter.pipe.scheduler.config
    )

    def run(seed: int) -> torch.Tensor:
        options = GenerationOptions(
            prompt="a city",
            model=str(folders["sd15"]),
            width=128,
            steps=3,
            seed=seed,
            output=str(tmp_path / "a.png"),
        )
        return pipe(options).image

    first = run(0)
    torch.manual_seed(123)  # the global RNG must not matter
    again = run(0)
    other = run(1)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 1e-3
