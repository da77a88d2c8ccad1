"""The scene's generations in real Blender (4.2 and 5.0): history, seeds, drafts, finals.

One ``history`` scenario per bpy interpreter (addon_scenarios.py) with
fake_history_worker.py, which writes real PNG (and, with HDR, OpenEXR) files in one colour
per seed and writes down every job it receives:

* Restore gives back the exact World of an earlier generation (image, mapping, strength,
  sun mask and lamp) after a later one replaced it; a missing file is refused by name and
  leaves the World untouched.
* The history is saved in the .blend with paths relative to it: after the project folder
  moved and the file was reopened, the paths resolve to the moved files, the packed
  thumbnails are there, and Restore works; Save As elsewhere keeps them resolving.
* Reuse Seed sets a seed beyond 32 bits exactly (and turns Random off); Variations makes n
  files with n seeds, all in the history; a draft job sends its final's width
  (``final_width``) and Make Final sends that width, full steps and the same seed, prompt
  and model without ``final_width``.
"""

from __future__ import annotations

import os

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param
from fake_history_worker import seed_colour

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("history"), {"timeout": 300}

    pool = ScenarioPool("history", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def test_operators_say_why_they_cannot_run_without_history(scenario):
    for name, res in scenario["empty"].items():
        assert res["result"] is None, (name, res)
        assert "generate" in res["error"].lower(), (name, res["error"])


def test_restore_gives_back_the_exact_world_of_an_earlier_generation(scenario):
    assert scenario["a"]["result"] == ["FINISHED"], scenario["a"]
    assert scenario["b"]["result"] == ["FINISHED"], scenario["b"]
    assert scenario["restore_a"]["result"] == ["FINISHED"], scenario["restore_a"]
    states = scenario["restore"]
    a, b, restored = states["a"], states["b"], states["restored"]
    assert a["image"]["abspath"].endswith(".exr") and b["image"]["abspath"].endswith(".png")
    assert a != b  # the second generation replaced the World

    def world(state: dict) -> dict:
        return {k: v for k, v in state.items() if k != "settings"}

    assert world(restored) == world(a)
    # The panel's World settings follow the restored World (turning it goes on from there;
    # the generation had them as operator arguments, the scene's own stayed as they were).
    assert restored["settings"] == {"rotation_z": 0.5, "strength": 2.0, "sun_strength": 1.5}
    assert a["lamp"] is not None and a["lamp"]["hidden"] == [False, False]
    assert b["lamp"]["hidden"] == [True, True]
    assert a["rotation"][2] == pytest.approx(0.5) and a["strength"] == pytest.approx(2.0)
    # ... and back to the later one.
    assert scenario["restore_b"]["result"] == ["FINISHED"]
    assert world(states["restored_b"]) == world(b)


def test_an_animated_world_is_restored_as_its_sequence(scenario):
    assert scenario["video"]["result"] == ["FINISHED"], scenario["video"]
    assert scenario["restore_video"]["result"] == ["FINISHED"], scenario["restore_video"]
    made, restored = scenario["video_states"]["made"], scenario["video_states"]["restored"]
    assert made["image"]["source"] == "SEQUENCE"
    assert {k: v for k, v in restored.items() if k != "settings"} == {
        k: v for k, v in made.items() if k != "settings"
    }
    assert restored["user"]["frame_duration"] == 5 and restored["user"]["use_cyclic"]
    entry = scenario["entries"][scenario["video_index"]]
    assert entry["model"] != SD15 and entry["thumbnail"]["size"] == [128, 64]


def test_a_missing_file_is_named_and_the_world_left_alone(scenario):
    res = scenario["missing"]
    assert res["result"] is None
    assert res["path"] in res["error"] and "missing" in res["error"], res["error"]
    assert "put the file back" in res["error"] and "remove the entry" in res["error"]
    assert res["unchanged"]
    assert res["path"] in res["last_error"]


def test_reuse_seed_sets_a_seed_beyond_32_bits_exactly(scenario):
    big = 2**31 + 5
    assert scenario["big"]["result"] == ["FINISHED"], scenario["big"]
    assert [j["seed"] for j in scenario["big_jobs"]] == [big]
    assert scenario["reuse_big"]["result"] == ["FINISHED"], scenario["reuse_big"]
    after = scenario["after_reuse_big"]
    assert after["exact_seed"] == str(big) and after["random_seed"] is False
    assert [j["seed"] for j in scenario["again_jobs"]] == [big]
    assert scenario["after_reuse_small"] == {"exact_seed": "", "random_seed": False, "seed": 101}
    if "clipboard" in scenario:  # (a background Blender may have no clipboard)
        assert scenario["clipboard"] in (str(big), "")


def test_a_bad_exact_seed_is_refused_by_name(scenario):
    res = scenario["bad_exact"]
    assert res["result"] is None and "'12ab'" in res["error"], res
    assert "0 to 9223372036854775807" in res["error"]
    assert scenario["bad_exact_jobs"] == []


def test_variations_make_n_files_with_n_seeds_all_in_the_history(scenario):
    assert scenario["variations"]["result"] == ["FINISHED"], scenario["variations"]
    jobs = scenario["variation_jobs"]
    entries = scenario["variation_entries"]
    seeds = [j["seed"] for j in jobs]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    assert [int(e["seed"]) for e in entries] == seeds
    images = [e["abspaths"]["image_path"] for e in entries]
    assert len(set(images)) == 3 and all(e["exists"]["image_path"] for e in entries)
    shown = entries[-1]["abspaths"]["exr_path"] or images[-1]  # (HDR on: the EXR)
    assert scenario["variation_world"] == shown  # the World is the last one


def test_a_draft_sends_its_final_width_and_make_final_makes_it(scenario):
    assert scenario["draft"]["result"] == ["FINISHED"], scenario["draft"]
    (draft,) = scenario["draft_jobs"]
    assert (draft["width"], draft["steps"], draft["final_width"]) == (1024, 4, 2048)
    assert draft["seed"] == 303
    assert scenario["final"]["result"] == ["FINISHED"], scenario["final"]
    (final,) = scenario["final_jobs"]
    assert (final["width"], final["steps"], final["seed"]) == (2048, 20, 303)
    assert final.get("final_width") is None
    for key in ("prompt", "model", "negative_prompt", "guidance", "sky_prompt"):
        assert final[key] == draft[key], key
    assert final["model"] == SD15
    entries = scenario["entries"]
    draft_entry = next(e for e in entries if e["seed"] == "303" and e["draft"])
    final_entry = next(e for e in entries if e["seed"] == "303" and not e["draft"])
    assert draft_entry["final_width"] == 2048 and draft_entry["width"] == 1024
    assert final_entry["width"] == 2048


def test_a_script_passes_the_draft_settings(scenario):
    assert scenario["op_draft"]["result"] == ["FINISHED"], scenario["op_draft"]
    (job,) = scenario["op_draft_jobs"]
    assert (job["width"], job["steps"], job["final_width"], job["seed"]) == (1024, 3, 2048, 307)
    zero = scenario["op_draft_zero"]
    assert zero["result"] is None and "draft_steps: 0" in zero["error"], zero
    assert "1 to 1000" in zero["error"] and scenario["op_draft_zero_jobs"] == []


def test_a_draft_of_the_model_size_and_what_cannot_be_drafted(scenario):
    (auto,) = scenario["auto_draft_jobs"]
    assert (auto["width"], auto["final_width"]) == (1024, 2048)  # SD 1.5's own 2K
    big = scenario["big_draft"]
    assert big["result"] is None and "Draft Size 4K" in big["error"], big
    assert scenario["big_draft_jobs"] == []
    custom = scenario["custom_auto_draft"]
    assert custom["result"] is None and "choose a Size" in custom["error"], custom
    assert scenario["custom_jobs"] == []


def test_every_generation_is_in_the_history_with_its_thumbnail(scenario):
    entries = scenario["entries"]
    assert [e["seed"] for e in entries[:2]] == ["101", "202"]
    for e in entries:
        assert e["exists"]["image_path"] and e["exists"]["sidecar_path"], e
        assert e["thumbnail"] and e["thumbnail"]["size"] == [128, 64], e
        assert e["thumbnail"]["packed"]
        assert e["time"] and e["model"]
    assert entries[0]["hdr"] and entries[0]["exists"]["exr_path"]
    expected = [c / 255 for c in seed_colour(101)]
    assert entries[0]["thumbnail"]["pixel"] == pytest.approx(expected, abs=2 / 255)
    assert scenario["panels"]["problems"] == []
    logged = [item for item in scenario["panels"]["log"] if item[0] == "list"]
    assert logged == [["list", "history"]]


def test_the_history_survives_moving_and_reopening_the_blend(scenario):
    saved, moved = scenario["saved_entries"], scenario["moved_entries"]
    assert len(moved) == len(saved) >= 10
    folder = os.path.dirname(scenario["moved_blend"])
    for before, after in zip(saved, moved, strict=True):
        assert before["seed"] == after["seed"]
        for key, text in after["paths"].items():
            if not text:
                continue
            assert text.startswith("//") and text == before["paths"][key], (key, text)
            assert after["abspaths"][key].startswith(os.path.realpath(folder) + os.sep)
            assert after["exists"][key], (key, after["abspaths"][key])
        assert after["thumbnail"] == before["thumbnail"]
    assert scenario["moved_restore"]["result"] == ["FINISHED"], scenario["moved_restore"]
    state = scenario["moved_state"]
    assert state["image"]["abspath"] == moved[0]["abspaths"]["exr_path"]
    assert state["rotation"][2] == pytest.approx(0.5) and state["strength"] == pytest.approx(2.0)
    assert scenario["moved_panels"]["problems"] == []
    for before, after in zip(moved, scenario["elsewhere_entries"], strict=True):
        for key, text in after["paths"].items():
            if text:
                assert text.startswith("//../"), (key, text)
                assert after["abspaths"][key] == before["abspaths"][key]
    # Save Copy: the open file keeps its paths; the copy's resolve from where it is.
    assert scenario["after_copy_entries"] == scenario["elsewhere_entries"]
    for before, copied in zip(moved, scenario["copy_entries"], strict=True):
        for key, text in copied["paths"].items():
            if text:
                assert text.startswith("//../../spherediff/"), (key, text)
                assert copied["abspaths"][key] == before["abspaths"][key]


def test_remove_keeps_files_unless_asked(scenario):
    assert scenario["remove"]["result"] == ["FINISHED"], scenario["remove"]
    after = scenario["remove_after"]
    assert after["count"] == after["before"] - 1
    assert scenario["remove_files_kept"]
    assert scenario["remove_delete"]["result"] == ["FINISHED"], scenario["remove_delete"]
    assert scenario["remove_deleted"] and not any(scenario["remove_deleted"])


def test_nothing_left_running(scenario):
    assert "RuntimeWarning" not in scenario["_stderr"], scenario["_stderr"][-3000:]
    assert "Traceback" not in scenario["_stderr"], scenario["_stderr"][-3000:]
    assert scenario["end"]["children"] == [] and scenario["end"]["staging"] == []
    after = scenario["save_handlers_after_disable"]
    assert "_on_save_pre" not in after and "_on_save_post" not in after
