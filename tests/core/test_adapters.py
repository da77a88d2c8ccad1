"""Every image family end to end through SphereDiffPipeline, on tiny random-weight models.

The tiny pipelines (tests/support/tiny_pipelines.py) are built once per session and loaded
through the real ``SphereDiffPipeline.from_pretrained(folder, offline=True)``. Each family
is checked for: a finite ERP image in [0, 1]; determinism per seed; directional prompts
reaching the right views (down to the embeddings the denoiser receives); no seam and no
pole pinch; and its adapter's denoiser call matching the diffusers pipeline's own call.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from spherediff_core.adapters import ADAPTERS, supported_families_text
from spherediff_core.denoise import DenoiserInput
from spherediff_core.errors import BadInputError, CancelledError, UnsupportedModelError
from spherediff_core.options import GenerationOptions
from spherediff_core.pipeline import SphereDiffPipeline, check_grid_limit, plan_config_for
from spherediff_core.plan import load_or_build_plan

from tests.core.panoramas import row_variation, seam_ratio

FAMILIES = ("sd15", "sdxl", "sana", "flux", "sd3")
WIDTH = 256
# Default (steps, guidance) of each tiny model's family (per model for FLUX dev / schnell).
DEFAULTS = {
    "sd15": (30, 7.5),
    "sdxl": (30, 5.0),
    "sana": (20, 4.5),
    "flux": (28, 3.5),
    "flux-schnell": (4, 0.0),
    "sd3": (28, 7.0),
}
STEPS = 2


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plans")


_LOADED: dict[str, SphereDiffPipeline] = {}
_IMAGES: dict[tuple[str, int], torch.Tensor] = {}


def load(folder, plan_dir) -> SphereDiffPipeline:
    return SphereDiffPipeline.from_pretrained(str(folder), offline=True, plan_cache_dir=plan_dir)


@pytest.fixture
def loaded(tiny_folders, plan_dir):
    """family -> SphereDiffPipeline, loaded once per session."""

    def get(family: str) -> SphereDiffPipeline:
        if family not in _LOADED:
            _LOADED[family] = load(tiny_folders[family], plan_dir)
        return _LOADED[family]

    return get


def options(folder, tmp_path, **kw) -> GenerationOptions:
    base = {"width": WIDTH, "steps": STEPS, "output": str(tmp_path / "pano.png")}
    return GenerationOptions(prompt="a city by the sea", model=str(folder), **(base | kw))


@pytest.fixture
def generate(loaded, tiny_folders, tmp_path):
    """(family, seed) -> ERP image, generated once per session."""

    def get(family: str, seed: int) -> torch.Tensor:
        key = (family, seed)
        if key not in _IMAGES:
            pipe = loaded(family)
            _IMAGES[key] = pipe(options(tiny_folders[family], tmp_path, seed=seed)).image
        return _IMAGES[key]

    return get


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", (*FAMILIES, "flux-schnell"))
def test_generates_an_erp_panorama(family, loaded, tiny_folders, tmp_path):
    pipe = loaded(family)
    result = pipe(options(tiny_folders[family], tmp_path, seed=0))
    _IMAGES[(family, 0)] = result.image
    image = result.image
    assert image.shape == (3, WIDTH // 2, WIDTH)
    assert image.dtype == torch.float32
    assert torch.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1
    assert image.std() > 0.01  # not a constant canvas
    # The family's adapter ran with the steps asked for and its own default guidance.
    adapter = pipe.adapter
    assert result.model["family"] == adapter.family
    assert (adapter.default_steps, adapter.default_guidance) == DEFAULTS[family]
    assert result.options.steps == STEPS
    assert result.options.guidance == adapter.default_guidance
    h, w = result.grid
    assert h % adapter.grid_multiple == 0 and w % adapter.grid_multiple == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_image_other_seed_other_image(
    family, generate, loaded, tiny_folders, tmp_path
):
    first = generate(family, 0)
    again = loaded(family)(options(tiny_folders[family], tmp_path, seed=0)).image
    other = generate(family, 1)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 1e-3


# --- directional prompts ------------------------------------------------------------------


def _denoiser_module(adapter):
    return getattr(adapter.pipe, "unet", None) or adapter.pipe.transformer


PROMPT_CASES = {
    "all set": {"sky_prompt": "blue sky", "horizon_prompt": "a forest", "ground_prompt": "grass"},
    "fallbacks": {"sky_prompt": "blue sky"},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", PROMPT_CASES)
def test_directional_prompts_reach_their_views(
    family, case, loaded, tiny_folders, tmp_path, monkeypatch
):
    pipe = loaded(family)
    adapter = pipe.adapter
    prompts = PROMPT_CASES[case]
    opts = options(tiny_folders[family], tmp_path, steps=1, negative_prompt="", **prompts)
    plan = load_or_build_plan(
        plan_config_for(opts, adapter.vae_scale_factor, adapter.grid_multiple), pipe.plan_cache_dir
    )

    calls: list[tuple[list[int], list[str], list[bool]]] = []
    model_inputs: list[torch.Tensor] = []
    real_denoise = adapter.denoise

    def recording_denoise(inp, guidance):
        texts = [c.text for c in inp.conditioning]
        calls.append((inp.view_index.tolist(), texts, inp.unconditional.tolist()))
        return real_denoise(inp, guidance)

    def pre_hook(module, args, kwargs):
        model_inputs.append(kwargs["encoder_hidden_states"].detach().clone())

    seen: set[int] = set()

    def stop_before_decoding() -> bool:  # one step is enough: skip the VAE
        seen.update(v for views, _, _ in calls for v in views)
        return len(seen) == plan.n_views

    monkeypatch.setattr(adapter, "denoise", recording_denoise)
    handle = _denoiser_module(adapter).register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with contextlib.suppress(CancelledError):
            pipe(opts, should_cancel=stop_before_decoding)
    finally:
        handle.remove()
    assert len(calls) == len(model_inputs) > 0

    main = opts.prompt
    expected_by_ring = {
        "sky": prompts.get("sky_prompt") or main,
        "horizon": prompts.get("horizon_prompt") or main,
        "ground": prompts.get("ground_prompt") or main,
    }
    encoded = {t: adapter.encode_prompt(t) for t in expected_by_ring.values()}
    negative = adapter.encode_negative_prompt("")  # SANA: without the instruction
    lat = plan.lat_rad
    rings_seen = set()
    for (views, texts, uncond), ehs in zip(calls, model_inputs, strict=True):
        assert ehs.shape[0] == len(views)
        for i, (v, text, u) in enumerate(zip(views, texts, uncond, strict=True)):
            if u:
                want = ""  # the negative prompt
            else:
                ring = "sky" if lat[v] > 1e-6 else "ground" if lat[v] < -1e-6 else "horizon"
                rings_seen.add(ring)
                want = expected_by_ring[ring]
            assert text == want, f"view {v} (lat {float(lat[v]):.3f}) got {text!r}"
            # ...and the model received exactly that prompt's embedding.
            emb = (negative if u else encoded[want]).tensors["encoder_hidden_states"][0]
            emb = emb.to(ehs.dtype)
            assert torch.equal(ehs[i], emb), f"view {v}: embedding of another prompt"
    assert rings_seen == {"sky", "horizon", "ground"}
    # Distinct prompts really are encoded differently.
    sky, ground = expected_by_ring["sky"], expected_by_ring["ground"]
    assert sky != ground
    assert not torch.equal(
        encoded[sky].tensors["encoder_hidden_states"],
        encoded[ground].tensors["encoder_hidden_states"],
    )


# --- seams and poles ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_no_seam_and_no_pole_pinch(family, generate):
    image = generate(family, 0)
    assert seam_ratio(image) <= 1.5
    # The check can fail: a crop whose ends are 90 degrees apart has a seam.
    assert seam_ratio(image[:, :, : 3 * WIDTH // 4]) > 1.5
    # A pole is one point: the top (bottom) row, a smaller circle than the next one, must
    # vary no faster than it; a pinched or smeared pole varies faster.
    h = image.shape[1]
    assert row_variation(image, 0) <= row_variation(image, 1)
    assert row_variation(image, h - 1) <= row_variation(image, h - 2)


# --- adapter == the diffusers pipeline's own denoiser call --------------------------------

# case -> (tiny model, pipeline call keyword arguments, pixel size: an 8x8 or 4x4 grid)
PARITY = {
    "sd15": ("sd15", {"negative_prompt": None, "guidance_scale": 7.5}, 64),
    # negative_prompt None: SDXL zeroes the unset negative prompt, as the adapter does for "".
    # SDXL's micro-conditioning sizes are the model's native size (128 px for the tiny one).
    "sdxl": (
        "sdxl",
        {
            "negative_prompt": None,
            "guidance_scale": 5.0,
            "original_size": (128, 128),
            "target_size": (128, 128),
        },
        64,
    ),
    "sana": (
        "sana",
        {
            "negative_prompt": "",
            "guidance_scale": 4.5,
            "use_resolution_binning": False,
        },
        128,
    ),
    "flux": ("flux", {"guidance_scale": 3.5}, 64),
    # schnell: no guidance embedding; the adapter encodes 256 T5 tokens like BFL's reference.
    "flux-schnell": ("flux-schnell", {"guidance_scale": 0.0, "max_sequence_length": 256}, 64),
    "sd3": ("sd3", {"negative_prompt": "", "guidance_scale": 7.0}, 64),
    "sd3-dynamic-shift": ("sd3", {"negative_prompt": "", "guidance_scale": 7.0}, 64),
}


@pytest.mark.parametrize("case", PARITY)
def test_adapter_denoise_matches_the_diffusers_pipeline(case, tiny_folders, plan_dir):
    model, call_kwargs, size = PARITY[case]
    sphere = load(tiny_folders[model], plan_dir)  # a fresh one: the call below steps its scheduler
    adapter, pipe = sphere.adapter, sphere.adapter.pipe
    if case == "sd3-dynamic-shift":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=True
        )
    prompt = "a city by the sea"
    steps = 3
    captured = {}

    def hook(module, args, kwargs, output):
        captured.setdefault("first", (args, kwargs, output))

    handle = _denoiser_module(adapter).register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(
            prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **call_kwargs,
        )
    finally:
        handle.remove()
    args, kwargs, output = captured["first"]
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    ref = output[0]
    grid = size // adapter.vae_scale_factor
    if model.startswith("flux"):  # packed sequences -> latent grids
        x = pipe._unpack_latents(x, size, size, adapter.vae_scale_factor)
        ref = pipe._unpack_latents(ref, size, size, adapter.vae_scale_factor)
    assert x.shape[-2:] == (grid, grid)

    # The adapter's schedule for this grid (resolution shift included) is the pipeline's.
    scheduler = adapter.make_scheduler(steps, (grid, grid))
    torch.testing.assert_close(scheduler.timesteps, pipe.scheduler.timesteps)
    if getattr(scheduler, "sigmas", None) is not None:
        torch.testing.assert_close(scheduler.sigmas, pipe.scheduler.sigmas)

    guidance = call_kwargs["guidance_scale"]
    positive = adapter.encode_prompt(prompt)
    if adapter.uses_cfg(guidance):
        conds = [adapter.encode_negative_prompt(""), positive]
        uncond = torch.tensor([True, False])
    else:
        conds, uncond = [positive], torch.tensor([False])
    assert x.shape[0] == len(conds)
    n = len(conds)
    inp = DenoiserInput(
        latents=x,
        timestep=torch.as_tensor(scheduler.timesteps[0]),
        conditioning=conds,
        unconditional=uncond,
        view_index=torch.zeros(n, dtype=torch.long),
        view_dirs=torch.zeros(n, 3),
        rays=torch.zeros(n, grid, grid, 3),
        step_index=0,
    )
    out = adapter.denoise(inp, guidance)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)


# --- defaults and limits ------------------------------------------------------------------


def test_family_traits():
    by_family = {a.family: a for a in ADAPTERS}
    assert set(by_family) == {"sd", "sdxl", "sana", "flux", "sd3", "ltx", "wan"}
    assert {f for f, a in by_family.items() if a.is_video} == {"ltx", "wan"}
    assert by_family["sana"].preferred_half == torch.bfloat16
    assert by_family["flux"].preferred_half == torch.bfloat16
    assert by_family["flux"].grid_multiple == by_family["sd3"].grid_multiple == 2
    assert by_family["sd"].grid_multiple == by_family["sdxl"].grid_multiple == 1
    # Guidance-distilled FLUX never batches a negative prompt.
    assert not by_family["flux"].uses_cfg(by_family["flux"], 3.5)


def test_family_facts_match_the_adapters():
    """The facts requests are checked against before torch is imported (families.py) are
    the adapters' own class attributes."""
    from spherediff_core.families import FAMILIES

    assert [f.family for f in FAMILIES] == [a.family for a in ADAPTERS]
    for facts, adapter in zip(FAMILIES, ADAPTERS, strict=True):
        for name in (
            "pipeline_classes",
            "display_name",
            "min_steps",
            "is_video",
            "temporal_compression",
            "default_frames",
            "default_fps",
        ):
            assert getattr(facts, name) == getattr(adapter, name), (adapter.family, name)
        skipped = tuple(k for k, v in adapter.load_kwargs.items() if v is None)
        assert facts.skipped_components == skipped, adapter.family


def test_every_tiny_family_folder_passes_the_folder_check(tiny_folders):
    from spherediff_core.modelcheck import check_model_folder

    for folder in tiny_folders.values():
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        check_model_folder(folder, index)


def test_sd3_grid_larger_than_its_position_embedding_is_refused(loaded, tiny_folders, tmp_path):
    pipe = loaded("sd3")
    adapter = pipe.adapter
    limit = adapter.grid_limit()
    max_side = 2 * adapter.pipe.transformer.config.pos_embed_max_size
    assert limit is not None and limit[0] == max_side == 192
    opts = options(tiny_folders["sd3"], tmp_path, width=6144)
    with pytest.raises(BadInputError) as err:
        pipe(opts)
    message = str(err.value)
    assert "pos_embed_max_size" in message and "192 x 192" in message
    assert "smaller size" in message
    # The width it suggests fits, and one step more does not.
    suggested = int(message.split("at most ")[-1].split(" px")[0])
    fits = options(tiny_folders["sd3"], tmp_path, width=suggested)
    check_grid_limit(plan_config_for(fits, 8, 2), fits, adapter)
    too_big = options(tiny_folders["sd3"], tmp_path, width=suggested + 2)
    with pytest.raises(BadInputError):
        check_grid_limit(plan_config_for(too_big, 8, 2), too_big, adapter)
    # Other families have no such limit.
    assert loaded("sdxl").adapter.grid_limit() is None


# --- models SphereDiff cannot drive -------------------------------------------------------


def _assert_names_families(message: str) -> None:
    for adapter in ADAPTERS:
        assert adapter.family in message
        for cls in adapter.pipeline_classes:
            assert cls in message
    assert supported_families_text() in message


def test_unknown_family_is_refused(tmp_path, plan_dir):
    folder = tmp_path / "cogvideox"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    with pytest.raises(UnsupportedModelError) as err:
        load(folder, plan_dir)
    assert "CogVideoXPipeline" in str(err.value)
    _assert_names_families(str(err.value))


def test_other_pipeline_class_is_refused(tmp_path, plan_dir):
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(UnsupportedModelError) as err:
        load(folder, plan_dir)
    assert "KandinskyV22Pipeline" in str(err.value)
    _assert_names_families(str(err.value))


def test_folder_without_model_index_is_refused(tmp_path, plan_dir):
    folder = tmp_path / "not_a_pipeline"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError) as err:
        load(folder, plan_dir)
    assert "model_index.json" in str(err.value)
    _assert_names_families(str(err.value))
