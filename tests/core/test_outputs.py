"""outputs.write_outputs: 8-bit sRGB PNG with its parameters, JSON sidecar, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core import outputs
from spherediff_core.errors import OutputError
from spherediff_core.options import GenerationOptions, OptionsError
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
    with pytest.raises(OutputError, match="disk full"):
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
    with pytest.raises(OutputError, match="locked"):
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


# --- never lose or overwrite what is there (issue 8: A, B, D, K, 9) --------------------------


def write_pair(folder, seed: int, name: str = "pano.png"):
    return outputs.write_outputs(make_result(folder, seed=seed), folder / name)


def png_seed(path) -> int:
    with Image.open(path) as im:
        return json.loads(im.text[outputs.METADATA_KEY])["seed"]


def test_a_sidecar_name_that_is_a_folder_keeps_the_earlier_image(tmp_path):
    write_pair(tmp_path, seed=1)
    before = (tmp_path / "pano.png").read_bytes()
    (tmp_path / "pano.json").unlink()
    (tmp_path / "pano.json").mkdir()  # something in the way of the sidecar
    with pytest.raises(OutputError, match=r"pano\.json.*is a folder") as info:
        write_pair(tmp_path, seed=2)
    assert "move or rename it" in str(info.value)
    assert (tmp_path / "pano.png").read_bytes() == before
    assert names(tmp_path) == ["pano.json", "pano.png"]  # no temporaries, no lock


def test_a_failed_sidecar_rename_keeps_the_earlier_pair(tmp_path, monkeypatch):
    write_pair(tmp_path, seed=1)
    before = {name: (tmp_path / name).read_bytes() for name in ("pano.png", "pano.json")}
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("pano.json") and ".tmp" in str(src):
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OutputError, match="No space left on device"):
        write_pair(tmp_path, seed=2)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert names(tmp_path) == ["pano.json", "pano.png"]


@pytest.mark.parametrize(
    "content",
    ['{"name": "my notes", "format": "other"}', "[1, 2, 3]", "not json at all", "", "[" * 100_000],
    ids=["foreign", "list", "garbage", "empty", "nested"],
)
def test_a_json_not_written_by_spherediff_is_never_replaced(tmp_path, content):
    foreign = tmp_path / "pano.json"
    foreign.write_text(content, encoding="utf-8")
    options = GenerationOptions(prompt="x", output=str(tmp_path / "pano.png"))
    with pytest.raises(OptionsError, match=r"pano\.json.*not.*SphereDiff") as info:
        options.validate()  # refused before anything loads
    assert info.value.field == "output" and "choose another output name" in str(info.value)
    with pytest.raises(OutputError, match=r"pano\.json.*not.*SphereDiff"):
        write_pair(tmp_path, seed=1)  # and again at write time
    assert foreign.read_text(encoding="utf-8") == content
    assert names(tmp_path) == ["pano.json"]


def test_our_own_sidecar_is_replaced(tmp_path):
    write_pair(tmp_path, seed=1)
    GenerationOptions(prompt="x", output=str(tmp_path / "pano.png")).validate()
    write_pair(tmp_path, seed=2)
    assert json.loads((tmp_path / "pano.json").read_text(encoding="utf-8"))["seed"] == 2


def test_outputs_inside_a_model_folder_are_refused(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    index = model / "model_index.json"
    index.write_text('{"_class_name": "StableDiffusionPipeline"}', encoding="utf-8")
    for name in ("model_index.png", "pano.png"):
        options = GenerationOptions(prompt="x", output=str(model / name))
        with pytest.raises(OptionsError, match="holds a diffusers model") as info:
            options.validate()
        assert str(model) in str(info.value) and "another folder" in str(info.value)
        with pytest.raises(OutputError, match="holds a diffusers model"):
            write_pair(model, seed=1, name=name)
    assert index.read_text(encoding="utf-8") == '{"_class_name": "StableDiffusionPipeline"}'
    assert names(model) == ["model_index.json"]


def test_an_unnormalised_path_leaves_no_stray_folder(tmp_path):
    paths = outputs.write_outputs(make_result(tmp_path), str(tmp_path / "sub/../../x/../p.png"))
    assert paths.image == tmp_path.parent / "p.png"
    try:
        assert names(tmp_path) == []  # no sub/, no x/
        doc = json.loads(paths.sidecar.read_text(encoding="utf-8"))
        assert doc["options"]["output"] == str(tmp_path.parent / "p.png")
    finally:
        paths.image.unlink()
        paths.sidecar.unlink()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc file system")
def test_a_folder_that_cannot_hold_a_file_is_refused_up_front_and_at_write_time(tmp_path):
    from spherediff_core.runner import describe_error

    out = "/proc/spherediff-no-such-folder/pano.png"
    with pytest.raises(OptionsError, match=r"/proc.*not writable") as info:
        GenerationOptions(prompt="x", output=out).validate()
    assert info.value.field == "output"
    with pytest.raises(OutputError) as info:
        outputs.write_outputs(make_result(tmp_path), out)
    report = describe_error(info.value)
    assert (report.code, report.exit_code) == ("output_error", 5)
    assert "spherediff-no-such-folder" in report.message and "please report" not in report.message


# --- two writers of the same output ---------------------------------------------------------

WRITER = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pathlib import Path
from spherediff_core import outputs
from tests.core.test_outputs import make_result
out = Path(sys.argv[3])
results = {seed: make_result(out.parent, seed=seed) for seed in map(int, sys.argv[4:])}
print("ready", flush=True)
for line in sys.stdin:  # one seed a line: write it, say so
    outputs.write_outputs(results[int(line)], out)
    print("done", flush=True)
"""


def assert_consistent_pair(folder, name: str = "pano") -> int:
    image, sidecar = folder / f"{name}.png", folder / f"{name}.json"
    seed = json.loads(sidecar.read_text(encoding="utf-8"))["seed"]
    assert png_seed(image) == seed, "the PNG of one run beside the sidecar of another"
    return seed


def test_two_threads_writing_the_same_path_leave_a_consistent_pair(tmp_path):
    import threading

    results = [make_result(tmp_path, seed=s) for s in range(100)]
    for rnd in range(40):
        barrier = threading.Barrier(2)
        errors = []

        def write(seed: int, rnd: int = rnd, barrier=barrier, errors=errors) -> None:
            try:
                barrier.wait()
                outputs.write_outputs(results[seed], tmp_path / "pano.png")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(2 * (rnd % 50) + k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert_consistent_pair(tmp_path)
        assert names(tmp_path) == ["pano.json", "pano.png"]


def test_processes_writing_the_same_path_leave_a_consistent_pair(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "pano.png"
    rounds = 30
    seeds = [[2 * r + k for r in range(rounds)] for k in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo / "core"), str(repo), str(out)]
            + [str(seed) for seed in own],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for own in seeds
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for r in range(rounds):  # both write at once, then the pair is checked
            for p, own in zip(procs, seeds, strict=True):
                p.stdin.write(f"{own[r]}\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "done"
            assert assert_consistent_pair(tmp_path) in (2 * r, 2 * r + 1)
            assert names(tmp_path) == ["pano.json", "pano.png"]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0]


def test_a_dead_writers_lock_is_taken_over_and_a_live_ones_waited_for(tmp_path):
    import subprocess
    import sys
    import threading
    import time

    from spherediff_core import placing

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock = tmp_path / ".pano.lock"
    lock.write_text(dead.stdout.strip(), encoding="ascii")  # left by a killed writer
    write_pair(tmp_path, seed=1)
    assert names(tmp_path) == ["pano.json", "pano.png"]

    # A live holder: the writer waits for it and then goes on.
    held = placing.StemLock(tmp_path, "pano")
    held.__enter__()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (write_pair(tmp_path, seed=2), done.set()))
    thread.start()
    time.sleep(0.5)
    assert not done.is_set() and assert_consistent_pair(tmp_path) == 1
    held.__exit__(None, None, None)
    thread.join(30)
    assert done.is_set() and assert_consistent_pair(tmp_path) == 2
