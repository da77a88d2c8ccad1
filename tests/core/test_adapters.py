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

# One tiny model per image family (variants that only change defaults are in DEFAULTS).
FAMILIES = ("sd15", "sdxl", "sana", "flux", "sd3", "flux2-klein-base", "qwenimage", "zimage-base")
WIDTH = 256
# Default (steps, guidance) of each tiny model's family (per model for FLUX dev / schnell).
DEFAULTS = {
    "sd15": (30, 7.5),
    "sdxl": (30, 5.0),
    "sana": (20, 4.5),
    "flux": (28, 3.5),
    "flux-schnell": (4, 0.0),
    "sd3": (28, 7.0),
    "flux2-dev": (50, 4.0),
    "flux2-klein": (4, 1.0),
    "flux2-klein-base": (50, 4.0),
    "qwenimage": (50, 4.0),
    "zimage-turbo": (8, 0.0),
    "zimage-base": (50, 5.0),
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


@pytest.mark.parametrize(
    "family", (*FAMILIES, "flux-schnell", "flux2-dev", "flux2-klein", "zimage-turbo")
)
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
    # One view per batch: the denoiser module may be called once per distinct text length
    # (Qwen-Image, as its pipeline), and a batch of [negative, positive] keeps item order.
    opts = options(
        tiny_folders[family],
        tmp_path,
        steps=adapter.min_steps,
        negative_prompt="",
        view_batch_size=1,
        **prompts,
    )
    plan = load_or_build_plan(
        plan_config_for(opts, adapter.vae_scale_factor, adapter.grid_multiple), pipe.plan_cache_dir
    )

    calls: list[tuple[list[int], list[str], list[bool]]] = []
    model_inputs: list[list[torch.Tensor]] = []
    real_denoise = adapter.denoise

    def recording_denoise(inp, guidance):
        texts = [c.text for c in inp.conditioning]
        calls.append((inp.view_index.tolist(), texts, inp.unconditional.tolist()))
        model_inputs.append([])
        return real_denoise(inp, guidance)

    def pre_hook(module, args, kwargs):
        texts = adapter.text_from_denoiser_call(args, kwargs)
        model_inputs[-1].extend(t.detach().clone() for t in texts)

    seen: set[int] = set()

    def stop_before_decoding() -> bool:  # one step is enough: skip the rest and the VAE
        seen.update(v for views, _, _ in calls for v in views)
        return len(seen) == plan.n_views

    monkeypatch.setattr(adapter, "denoise", recording_denoise)
    handle = adapter.denoiser_module.register_forward_pre_hook(pre_hook, with_kwargs=True)
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
        assert len(ehs) == len(views)
        for i, (v, text, u) in enumerate(zip(views, texts, uncond, strict=True)):
            if u:
                want = ""  # the negative prompt
            else:
                ring = "sky" if lat[v] > 1e-6 else "ground" if lat[v] < -1e-6 else "horizon"
                rings_seen.add(ring)
                want = expected_by_ring[ring]
            assert text == want, f"view {v} (lat {float(lat[v]):.3f}) got {text!r}"
            # ...and the model received exactly that prompt's embedding.
            emb = adapter.text_of(negative if u else encoded[want])
            emb = emb.to(ehs[i].dtype)
            assert torch.equal(ehs[i], emb), f"view {v}: embedding of another prompt"
    assert rings_seen == {"sky", "horizon", "ground"}
    # Distinct prompts really are encoded differently.
    sky, ground = expected_by_ring["sky"], expected_by_ring["ground"]
    assert sky != ground
    assert not torch.equal(adapter.text_of(encoded[sky]), adapter.text_of(encoded[ground]))


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

# case -> (tiny model, pipeline call keyword arguments, pixel size: an 8x8 or 4x4 grid,
# the engine's guidance for that call)
PARITY = {
    "sd15": ("sd15", {"negative_prompt": None, "guidance_scale": 7.5}, 64, 7.5),
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
        5.0,
    ),
    "sana": (
        "sana",
        {"negative_prompt": "", "guidance_scale": 4.5, "use_resolution_binning": False},
        128,
        4.5,
    ),
    "flux": ("flux", {"guidance_scale": 3.5}, 64, 3.5),
    # schnell: no guidance embedding; the adapter encodes 256 T5 tokens like BFL's reference.
    "flux-schnell": (
        "flux-schnell",
        {"guidance_scale": 0.0, "max_sequence_length": 256},
        64,
        0.0,
    ),
    "sd3": ("sd3", {"negative_prompt": "", "guidance_scale": 7.0}, 64, 7.0),
    "sd3-dynamic-shift": ("sd3", {"negative_prompt": "", "guidance_scale": 7.0}, 64, 7.0),
    "flux2-dev": ("flux2-dev", {"guidance_scale": 4.0}, 64, 4.0),
    "flux2-klein-base": ("flux2-klein-base", {"guidance_scale": 4.0}, 64, 4.0),
    # Qwen-Image's guidance is its true CFG scale (its guidance_scale is for distilled models).
    "qwenimage": ("qwenimage", {"negative_prompt": "", "true_cfg_scale": 4.0}, 64, 4.0),
    "zimage-base": ("zimage-base", {"guidance_scale": 5.0}, 64, 5.0),
}


@pytest.mark.parametrize("case", PARITY)
def test_adapter_denoise_matches_the_diffusers_pipeline(case, tiny_folders, plan_dir):
    model, call_kwargs, size, guidance = PARITY[case]
    sphere = load(tiny_folders[model], plan_dir)  # a fresh one: the call below steps its scheduler
    adapter, pipe = sphere.adapter, sphere.adapter.pipe
    if case == "sd3-dynamic-shift":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=True
        )
    prompt = "a city by the sea"
    steps = 3
    captured: list[tuple] = []

    def hook(module, args, kwargs, output):
        captured.append((args, kwargs, output))

    handle = adapter.denoiser_module.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(
            prompt=prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **call_kwargs,
        )
    finally:
        handle.remove()
    grid = size // adapter.vae_scale_factor

    # The adapter's schedule for this grid (resolution shift included) is the pipeline's.
    scheduler = adapter.make_scheduler(steps, (grid, grid))
    torch.testing.assert_close(scheduler.timesteps, pipe.scheduler.timesteps)
    if getattr(scheduler, "sigmas", None) is not None:
        torch.testing.assert_close(scheduler.sigmas, pipe.scheduler.sigmas)

    # The first step's calls: one batched call under CFG, or one call per prompt (FLUX.2
    # klein, Qwen-Image), in the pipeline's own order. Each item's prompt is told by the
    # text the module received; the adapter, given the same items, must answer the same.
    positive = adapter.encode_prompt(prompt)
    negative = adapter.encode_negative_prompt("")
    cfg = adapter.guidance_rule(guidance, GenerationOptions(prompt=prompt)) is not None
    evaluations = len(pipe.scheduler.timesteps)  # PNDM evaluates one step twice
    assert len(captured) % evaluations == 0
    first_step = captured[: len(captured) // evaluations]
    items = 0
    for args, kwargs, output in first_step:
        x, ref = adapter.grids_from_denoiser_call(args, kwargs, output, (grid, grid))
        assert x.shape[-2:] == (grid, grid)
        texts = adapter.text_from_denoiser_call(args, kwargs)
        uncond = [not torch.equal(t, adapter.text_of(positive).to(t.dtype)) for t in texts]
        for t, u in zip(texts, uncond, strict=True):
            if u:  # not the prompt, so the negative one
                assert torch.equal(t, adapter.text_of(negative).to(t.dtype))
        conds = [negative if u else positive for u in uncond]
        n = len(conds)
        assert x.shape[0] == n
        items += n
        inp = DenoiserInput(
            latents=x,
            timestep=torch.as_tensor(scheduler.timesteps[0]),
            conditioning=conds,
            unconditional=torch.tensor(uncond),
            view_index=torch.zeros(n, dtype=torch.long),
            view_dirs=torch.zeros(n, 3),
            rays=torch.zeros(n, grid, grid, 3),
            step_index=0,
        )
        out = adapter.denoise(inp, guidance)
        assert out.dtype == torch.float32 and out.shape == x.shape
        torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)
    # As many items as the sphere's loop sends: a negative pass exactly when it guides.
    assert items == (2 if cfg else 1)


# --- defaults and limits ------------------------------------------------------------------


def test_family_traits():
    by_family = {a.family: a for a in ADAPTERS}
    assert len(by_family) == len(ADAPTERS)  # one adapter per family
    classes = [c for a in ADAPTERS for c in a.pipeline_classes]
    assert len(classes) == len(set(classes))  # one family per pipeline class
    assert {"ltx", "wan"} <= {f for f, a in by_family.items() if a.is_video}
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


def test_a_component_that_needs_a_missing_module_is_refused_by_name(tiny_folders, tmp_path):
    """FLUX.2 [dev]'s tokenizer (PixtralProcessor) needs torchvision: without it the run is
    refused before torch loads, naming the module and the install command."""
    import importlib.util
    import shutil

    from spherediff_core.runner import precheck_model

    folder = shutil.copytree(tiny_folders["flux2-dev"], tmp_path / "flux2-dev")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["tokenizer"] = ["transformers", "PixtralProcessor"]
    index_path.write_text(json.dumps(index), encoding="utf-8")
    if importlib.util.find_spec("torchvision") is not None:
        precheck_model(str(folder))  # installed: nothing to refuse
        return
    with pytest.raises(UnsupportedModelError) as err:
        precheck_model(str(folder))
    message = str(err.value)
    assert "PixtralProcessor" in message and "pip install torchvision" in message
    # The folder as built (a tokenizer without the optional module) passes.
    precheck_model(str(tiny_folders["flux2-dev"]))


def test_a_second_guidance_is_refused_for_a_model_with_one_denoiser(loaded, tiny_folders, tmp_path):
    """guidance_2 is Wan 2.2 A14B's low-noise expert's scale; elsewhere it would be
    silently ignored, so it is refused by name."""
    from spherediff_core.options import OptionsError

    pipe = loaded("sd15")
    with pytest.raises(OptionsError) as err:
        pipe(options(tiny_folders["sd15"], tmp_path, guidance_2=3.0))
    assert err.value.field == "guidance_2" and "Wan 2.2 A14B" in str(err.value)


def test_a_second_guidance_is_refused_before_loading_unless_the_model_has_two_experts(
    tiny_folders,
):
    """The check before torch loads reads model_index.json: Wan 2.1 (one transformer) is
    refused, Wan 2.2 A14B (transformer_2) takes it."""
    from spherediff_core.options import OptionsError
    from spherediff_core.runner import precheck_model

    def request(model: str) -> GenerationOptions:
        folder = str(tiny_folders[model])
        return GenerationOptions(prompt="x", model=folder, video=True, frames=5, guidance_2=3.0)

    with pytest.raises(OptionsError) as err:
        precheck_model(str(tiny_folders["wan"]), request("wan"))
    assert err.value.field == "guidance_2" and "Wan 2.2 A14B" in str(err.value)
    precheck_model(str(tiny_folders["wan22-a14b"]), request("wan22-a14b"))
