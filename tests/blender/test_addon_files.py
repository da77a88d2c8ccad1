"""Saving a generation from the add-on (real Blender 4.2 and 5.0; fake_video_worker.py).

* The sidecar describes the files where they end up in the output folder: ``options.output``
  is the saved PNG (for a sequence, the path naming its stem), ``image`` its name (the first
  frame for a sequence), the ``video`` block the saved frames folder and MP4; nothing
  points into the staging folder.
* With the staging folder on another file system (a copy, not a rename) and a file-size
  limit that cuts Blender's copy short (a full disk), the output folder holds nothing new
  (no truncated PNG or MP4, no empty sidecar, no temporary), the World is untouched and
  the error says the files could not be saved.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("files"), {"timeout": 300}

    pool = ScenarioPool("files", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def test_the_still_sidecar_describes_the_saved_png(scenario):
    assert scenario["still"]["result"] == ["FINISHED"], scenario["still"]
    saved = scenario["still_saved"]
    doc = json.loads(saved["sidecar_text"])
    assert doc["format"] == "spherediff"
    assert doc["options"]["output"] == saved["path"]
    assert doc["image"] == Path(saved["path"]).name
    assert Path(saved["folder"], doc["image"]).is_file()
    assert scenario["staging_dir"] not in saved["sidecar_text"]
    assert "panorama.png" not in saved["sidecar_text"]


def test_the_sequence_sidecar_describes_the_saved_frames_and_mp4(scenario):
    assert scenario["video"]["result"] == ["FINISHED"], scenario["video"]
    saved = scenario["video_saved"]
    stem, folder = saved["stem"], Path(saved["folder"])
    doc = json.loads(saved["sidecar_text"])
    assert doc["options"]["output"] == str(folder / f"{stem}.png")
    assert doc["image"] == f"{stem}_frames/frame_0001.png" == doc["video"]["first_frame"]
    assert doc["video"]["frames_folder"] == f"{stem}_frames"
    assert doc["video"]["mp4"] == f"{stem}.mp4"
    for name in (doc["image"], doc["video"]["mp4"]):
        assert (folder / name).is_file(), name
    assert scenario["staging_dir"] not in saved["sidecar_text"]
    assert "world_frames" not in saved["sidecar_text"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm and RLIMIT_FSIZE")
@pytest.mark.parametrize("kind", ["still", "video"])
def test_a_full_disk_while_saving_leaves_nothing_half_written(scenario, kind):
    assert scenario["cross_fs"], "no second file system (/dev/shm) to stage on"
    case = scenario["disk_full"][kind]
    assert case["result"] is None and "could not save" in case["error"], case
    assert "File too large" in case["error"], case["error"]
    assert case["files_after"] == case["files_before"], "something was left in the output folder"
    assert not any(os.path.basename(f).startswith(".") for f in case["files_after"])
    assert case["unchanged"], "the World changed"
    assert case["staging"] == []
    assert scenario["end"]["staging"] == [] and scenario["end"]["children"] == []
