"""The warm worker and the live preview in real Blender (4.2 and 5.0), background mode.

One ``warm`` scenario per bpy interpreter (addon_scenarios.py) drives the add-on against
fake_serve_worker.py, a stand-in that speaks the serving protocol (``--serve``, job ids,
``loaded``, previews, ``cancel`` answered while serving on); the tests below check what it
recorded:

* two generations go through one worker process (one hello; the second sends no load
  events and says ``loaded: false``);
* previews (asked for with ``preview=True``, as background mode does not show them by
  default) are shown in the World while the job runs: a World of their own holding the
  in-memory image ``SphereDiff Preview`` with the preview's pixels, the scene's World kept
  (with a fake user) and put back when the result loads;
* a cancel and a failure during previews leave the World exactly as it was (data-block,
  nodes, links, values, users, images) and the worker serving on;
* a worker killed between jobs, and one that crashed after a job, are replaced on the
  next job and the user is told; a worker that ignores a cancel is ended after the
  engine's own stop deadline, and the next job starts a new one without such a note;
* several seeds (Generation.seeds) run one after another on one worker, each loaded and
  the last one shown;
* the idle limit, Keep Model Loaded off (a worker per job, no ``--serve``), Unload Model
  and disabling the add-on stop the worker (it exits 0: its input closed), and no worker
  is left once Blender has exited with one warm.
"""

from __future__ import annotations

import json
import os

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param
from fake_serve_worker import preview_colour


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("warm"), {"timeout": 240}

    pool = ScenarioPool("warm", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def _hellos(log: list[dict]) -> list[dict]:
    return [e for e in log if e["event"] == "hello"]


def test_preferences_defaults(scenario):
    assert scenario["prefs_default"] == {
        "keep_model_loaded": True,
        "unload_after": 10.0,
        "live_preview": True,
        "preview_every": 2,
    }


def test_two_generations_share_one_warm_worker(scenario):
    first, second = scenario["first"], scenario["second"]
    assert first["result"] == second["result"] == ["FINISHED"], (first, second)
    (a,), (b,) = first["runs"], second["runs"]
    assert a["served"] and b["served"]
    assert a["pid"] == b["pid"] == second["warm_pid"]
    assert a["loaded"] is True and "load" in a["phases"]
    assert b["loaded"] is False and "load" not in b["phases"], b
    assert b["phases"][0] == "denoise"
    # One process, started once with --serve and this Blender's pid.
    log = scenario["after_two"]["log"]
    hellos = _hellos(log)
    assert len(hellos) == 1 and hellos[0]["argv"][:1] == ["--serve"], hellos
    assert hellos[0]["argv"][1] == "--parent-pid"
    assert [e["id"] for e in log if e["event"] == "job"] == [1, 2]
    # The warm worker is Blender's child and the only one; nothing else is left.
    assert [c["pid"] for c in second["children"]] == [second["warm_pid"]]
    assert second["staging"] == []
    # Background mode asks for no previews unless a script does.
    assert a["preview_every"] is None and a["previews_seen"] == 0


def test_previews_show_in_the_world_during_the_job(scenario):
    res = scenario["preview"]
    assert res["result"] == ["FINISHED"], res
    (run,) = res["runs"]
    assert run["preview_every"] == 2 and run["previews_seen"] == 3  # steps 2, 4, 6
    shown = res["shown"]
    assert 1 <= len(shown) <= 3, shown
    previous = res["before"]["snapshot"]["world"]
    for i, state in enumerate(shown, 1):
        assert state["world"] == "SphereDiff Preview World", state
        assert state["image"] == "SphereDiff Preview" and state["tagged"], state
        assert state["source"] == "GENERATED" and state["size"] == [512, 256]
        assert state["previous"] == previous and state["previous_fake_user"]
        assert state["shown"] == i
        # The preview's pixels: the colour of one of the steps previewed.
        assert tuple(state["pixel"]) in {preview_colour(k) for k in (2, 4, 6)}, state
    # Afterwards: the result in the scene's own World; the preview's World and image gone,
    # the fake user taken back.
    after = res["after"]
    assert after["snapshot"]["world"] == previous and after["fake_user"] is False
    assert "SphereDiff Preview World" not in after["worlds"]
    assert "SphereDiff Preview" not in after["images"]
    assert after["worlds"] == res["before"]["worlds"]


def test_a_file_saved_during_a_preview_holds_the_scenes_own_world(scenario):
    """Saving (or an autosave) while a preview shows writes the scene's own World, not
    the preview's World with its in-memory image; the preview is back in the viewport."""
    res = scenario["preview"]
    saved = [state for state in res["shown"] if "saved" in state]
    assert len(saved) == 1, res["shown"]
    assert saved[0]["world_after_save"] == "SphereDiff Preview World"
    previous = res["before"]["snapshot"]["world"]
    assert previous in res["saved_worlds"], res["saved_worlds"]
    assert "SphereDiff Preview World" not in res["saved_worlds"]
    assert "SphereDiff Preview" not in res["saved_images"]  # its pixels live in memory only


@pytest.mark.parametrize("name", ["cancel", "fail"])
def test_cancel_and_failure_put_the_world_back_exactly(scenario, name):
    res = scenario[name]
    assert res["shown"], f"{name}: no preview was shown before it ended"
    assert res["shown"][0]["world"] == "SphereDiff Preview World"
    assert res["unchanged"], (res["before"], res["after"])
    assert res["before"]["snapshot"]["users"] == res["after"]["snapshot"]["users"]
    assert res["staging"] == []
    (run,) = res["runs"]
    # The worker answered (cancelled / failed the job) and serves on: the same process.
    assert run["pid"] == res["warm_pid"] == scenario["second"]["warm_pid"]
    if name == "cancel":
        assert res["result"] == ["CANCELLED"] and run["failure"] == "cancelled"
        assert res["stop_s"] < 1.0, res["stop_s"]
    else:
        assert res["result"] is None and "failed on purpose" in res["error"]


def test_a_killed_warm_worker_is_restarted_and_the_user_told(scenario):
    assert scenario["killed_dead"]
    res = scenario["after_kill"]
    assert res["result"] == ["FINISHED"], res
    (run,) = res["runs"]
    assert run["served"] and run["loaded"] is True
    assert run["pid"] != scenario["second"]["warm_pid"] and run["pid"] == res["warm_pid"]
    out = scenario["_stdout"]
    assert "the SphereDiff worker had stopped (killed by SIGKILL); started a new one" in out


def test_a_crashed_warm_worker_is_restarted_and_the_user_told(scenario):
    assert scenario["crash"]["result"] == ["FINISHED"] and scenario["crash_dead"]
    res = scenario["after_crash"]
    assert res["result"] == ["FINISHED"], res
    assert res["runs"][0]["pid"] != scenario["crash"]["runs"][0]["pid"]
    assert "had stopped (exit code 1); started a new one" in scenario["_stdout"]


def test_a_cancel_the_worker_ignores_ends_it(scenario):
    """The engine stops a job by itself or exits within 1.2 s; a worker that hangs beyond
    that is ended (SIGTERM at 1.5 s, SIGKILL at 2 s) and the next job starts a new one."""
    res = scenario["deaf"]
    assert res["result"] == ["CANCELLED"] and res["runs"][0]["failure"] == "cancelled"
    assert res["stop_s"] is not None and 1.4 < res["stop_s"] < 2.5, res["stop_s"]
    assert res["old_pid_dead"]
    after = scenario["after_deaf"]
    assert after["result"] == ["FINISHED"] and after["runs"][0]["loaded"] is True
    # Ended by the add-on: no "had stopped" note for it (only the kill and the crash).
    told = [
        line
        for line in scenario["_stdout"].splitlines()
        if line.startswith("SphereDiff: the SphereDiff worker had stopped")
    ]
    assert len(told) == 2, told


def test_several_seeds_run_on_one_worker(scenario):
    seeds = scenario["seeds"]
    assert seeds["error"] == "" and seeds["ok"], seeds
    assert seeds["results"] == [10, 11, 12]
    assert [r["seed"] for r in seeds["runs"]] == [10, 11, 12]
    assert len({r["pid"] for r in seeds["runs"]}) == 1
    assert [r["loaded"] for r in seeds["runs"]] == [False, False, False]
    assert seeds["image"] == 12 and seeds["last_seed"] == 12  # the World shows the last
    assert seeds["history"] in (0, 3)  # every result recorded (once history lands)
    assert not seeds["active"] and seeds["staging"] == []
    assert [kind for kind, _ in seeds["reports"]] == ["INFO", "INFO"]  # seeds 10 and 11


def test_the_idle_limit_stops_the_worker(scenario):
    idle = scenario["idle"]
    assert idle["dead"] and not idle["warm_running"], idle
    assert idle["log"] == {**idle["log"], "pid": idle["pid"], "event": "exit", "code": 0}


def test_keep_model_loaded_off_runs_a_worker_per_job(scenario):
    a, b = scenario["one_shot_a"], scenario["one_shot_b"]
    assert a["result"] == b["result"] == ["FINISHED"]
    assert not a["runs"][0]["served"] and not b["runs"][0]["served"]
    assert a["runs"][0]["pid"] != b["runs"][0]["pid"]
    assert a["warm_pid"] is None and a["children"] == [] and b["children"] == []
    hellos = {e["pid"]: e["argv"] for e in _hellos(scenario["log"])}
    assert "--serve" not in hellos[a["runs"][0]["pid"]]
    warm = scenario["warm_again"]
    assert warm["runs"][0]["served"] and warm["warm_pid"] is not None


def test_unload_model_stops_the_worker(scenario):
    unload = scenario["unload"]
    assert unload["poll"] and unload["result"] == ["FINISHED"]
    assert unload["dead"] and not unload["poll_after"]


def test_disabling_the_add_on_stops_the_worker(scenario):
    disable = scenario["disable"]
    assert disable["dead"] and disable["children"] == [], disable
    assert disable["log"]["event"] == "exit" and disable["log"]["code"] == 0


def test_no_worker_left_after_blender_exits(scenario):
    exit_ = scenario["exit"]
    assert [r["result"] for r in exit_["runs"]] == [["FINISHED"], ["FINISHED"]], exit_
    pid = exit_["pid"]
    assert pid is not None
    # The scenario's Blender has exited (pool.get waited for it): its warm worker too,
    # told by the add-on's atexit (its input closed: exit code 0).
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, f"worker {pid} outlived Blender"
    with open(os.path.join(scenario["_work"], "serve.jsonl"), encoding="utf-8") as fh:
        log = [json.loads(line) for line in fh]
    mine = [e for e in log if e["pid"] == pid]
    assert mine[0]["event"] == "hello" and mine[-1] == {**mine[-1], "event": "exit", "code": 0}
    assert scenario["heavy_modules"] == []
