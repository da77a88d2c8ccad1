"""The GPUs preferences in real Blender (4.2 and 5.0): how the worker is started.

One GPU starts the worker as before (``python -c BOOTSTRAP --parent-pid PID``), with
``--serve`` first when Keep Model Loaded keeps it warm (issue 15).
Several run it under PyTorch's launcher, ``python -m torch.distributed.run --standalone
--nproc-per-node=N -m spherediff_core.worker --parent-pid PID`` (the launcher itself started
the add-on's safe way, without the current folder on ``sys.path``); GPU IDs set
``CUDA_VISIBLE_DEVICES`` and the number of processes. Bad settings are refused by name,
with the fix, before any worker starts. One ``gpus`` scenario per bpy interpreter
(addon_scenarios.py; recording_worker.py records the argv and environment a worker got).
"""

from __future__ import annotations

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param

TORCHRUN_TAIL = ["-m", "spherediff_core.worker", "--parent-pid"]

# case -> (processes, CUDA_VISIBLE_DEVICES) for what starts a worker
ACCEPTED = {
    "one": (1, None),
    "one_cpu": (1, None),
    "four": (4, None),
    "four_cuda": (4, None),
    "ids_0_2": (2, "0,2"),
    "ids_spaced": (2, "3,1"),
    "one_id": (1, "1"),
}
# case -> words the refusal must contain (the bad value and the fix)
REFUSED = {
    "bad_id_letter": (
        "GPU ids '0,x': use comma-separated GPU numbers such as 0,1,3",
        "empty",
    ),
    "bad_id_empty": ("GPU ids '0,,1'", "such as 0,1,3"),
    "bad_id_negative": ("GPU ids '-1'", "such as 0,1,3"),
    "bad_id_cuda_name": ("GPU ids 'cuda:1'", "such as 0,1,3"),
    "duplicate_ids": ("GPU ids '0,1,0'", "GPU 0 is listed twice", "list each GPU once"),
    "several_cpu": ("GPUs 4", "'cpu'", "several GPUs need device auto or cuda", "GPUs to 1"),
    "several_mps": ("GPUs 2", "'mps'", "several GPUs need device auto or cuda"),
    "ids_cpu": ("GPU ids '0,1'", "'cpu'", "need device auto or cuda", "clear GPU IDs"),
}
PURE_REFUSED = {
    "zero": ("GPUs 0", "1 to 64"),
    "too_many": ("GPUs 65", "1 to 64"),
    "job_device_cuda_1": ("'cuda:1'", "several GPUs need device auto or cuda"),
    "several_on_windows": ("GPUs 2", "Linux only", "win32", "GPUs to 1"),
    "ids_on_macos": ("GPU ids '0,1'", "Linux only", "darwin"),
}


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("gpus"), {"timeout": 180}

    pool = ScenarioPool("gpus", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def expected_argv(processes: int, args: list[str], bootstrap: list[str]) -> list[str]:
    """What launch_command should build, spelled out independently of it."""
    python, flag, code = bootstrap
    if processes == 1:
        worker = code.replace("torch.distributed.run", "spherediff_core.worker")
        return [python, flag, worker, *args]
    return [
        python,
        flag,
        code,  # torch.distributed.run, without the current folder on sys.path
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "spherediff_core.worker",
        *args,
    ]


def test_preferences_have_descriptions_and_limits(scenario):
    for name, description in scenario["descriptions"].items():
        assert description.strip(), f"preference {name} has no description"
    assert {"gpu_count", "gpu_ids"} <= set(scenario["descriptions"])
    count = scenario["gpu_count_prop"]
    assert count["name"] == "GPUs" and count["type"] == "INT"
    assert count["default"] == 1 and count["hard"] == [1, 64] and count["soft"] == [1, 8]
    assert scenario["gpu_ids_prop"] == {"name": "GPU IDs", "type": "STRING", "default": ""}
    assert scenario["values_default"] == [1, "", "auto"]
    assert scenario["gpu_count_clamped"] == [1, 64]
    words = scenario["descriptions"]["gpu_count"]
    assert "process per GPU" in words and "torchrun" in words
    assert "CUDA_VISIBLE_DEVICES" in scenario["descriptions"]["gpu_ids"]


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_launch_from_the_pure_function(scenario, name):
    processes, visible = ACCEPTED[name]
    plan = scenario["plans"][name]
    assert "error" not in plan, plan
    assert (plan["processes"], plan["visible"]) == (processes, visible)
    args = ["--parent-pid", "7"]
    assert plan["argv"] == expected_argv(processes, args, scenario["bootstrap"])
    if processes == 1:  # unchanged from before the GPUs preference
        assert plan["argv"] == scenario["worker_argv"]
    expected_env = (
        {"BASE": "1"} if visible is None else {"BASE": "1", "CUDA_VISIBLE_DEVICES": visible}
    )
    assert plan["env"] == expected_env


def test_default_launch_is_the_plain_worker(scenario):
    argv = scenario["default_launch"]
    assert argv[1] == "-c" and "spherediff_core.worker" in argv[2] and argv[3:] == ["--hello"]
    assert "torch.distributed.run" not in " ".join(argv)


@pytest.mark.parametrize("name", sorted({**REFUSED, **PURE_REFUSED}))
def test_pure_function_refuses_by_name(scenario, name):
    plan = scenario["plans"][name]
    assert set(plan) == {"error"}, plan
    for words in {**REFUSED, **PURE_REFUSED}[name]:
        assert words in plan["error"], (name, plan["error"])


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_operator_starts_the_worker_so(scenario, name):
    processes, visible = ACCEPTED[name]
    res = scenario["calls"][name]
    assert "recorded by the test worker" in (res["error"] or ""), res
    assert len(res["launches"]) == 1, res
    launch = res["launches"][0]
    args = ["--parent-pid", str(scenario["pid"])]
    argv = launch["argv"]  # the recording worker's own arguments: argv[1:] of the plan
    if processes == 1:
        assert argv[0] == "-c" and "'spherediff_core.worker'" in argv[1], argv
        # The warm worker's --serve; the recording worker cannot serve, so a later job
        # with the same settings is started one-shot, exactly as before.
        assert argv[2:] in (["--serve", *args], args), argv
    else:
        assert argv[0] == "-c" and "'torch.distributed.run'" in argv[1], argv
        assert argv[2:] == [
            "--standalone",
            f"--nproc-per-node={processes}",
            *TORCHRUN_TAIL,
            str(scenario["pid"]),
        ], argv
    assert launch["cuda_visible_devices"] == visible
    # Several GPUs: the job names no particular GPU (each rank takes cuda:LOCAL_RANK).
    device = launch["options"]["device"]
    if processes > 1:
        assert device in ("auto", "cuda"), device
    assert device == {"four_cuda": "cuda", "ids_spaced": "cuda", "one_cpu": "cpu"}.get(name, "auto")
    assert res["staging"] == [], res


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_operator_refuses_before_any_worker(scenario, name):
    res = scenario["calls"][name]
    assert res["result"] is None and res["error"], res
    for words in REFUSED[name]:
        assert words in res["error"], (name, res["error"])
    assert res["last_error"] and res["last_error"] in res["error"], res
    assert res["launches"] == [], f"{name}: a worker was started: {res['launches']}"
    assert res["new_files"] == [] and res["staging"] == [], res
    assert res["seconds"] < 2.0, res


@pytest.mark.parametrize("name", sorted(ACCEPTED) + sorted(REFUSED))
def test_preferences_draw_the_gpus(scenario, name):
    drawn = scenario["drawn"][name]
    assert drawn["problems"] == [], drawn["problems"]
    log = drawn["log"]
    assert ["prop", "gpu_count"] in log and ["prop", "gpu_ids"] in log  # JSON: lists
    labels = [text for kind, text in log if kind == "label"]
    if name in REFUSED:  # the preferences show the same refusal
        assert any(REFUSED[name][0] in text for text in labels), labels
    elif ACCEPTED[name][0] > 1:
        assert any(f"{ACCEPTED[name][0]} worker processes" in text for text in labels), labels


def test_nothing_left_running(scenario):
    assert scenario["end"]["children"] == [] and scenario["end"]["staging"] == []
