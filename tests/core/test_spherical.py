"""360° video metadata (issue 12): Spherical Video V1 XMP and V2 st3d/sv3d in the MP4.

A real H.264 MP4 from ffmpeg (imageio-ffmpeg's build), with ``+faststart`` (moov before
mdat, so every chunk offset must move) and without; the metadata is parsed back box by box,
FFmpeg's own demuxer must report the projection, and the decoded frames must be unchanged.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from spherediff_core.spherical import inject_spherical_metadata, read_spherical_metadata

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _encode(path, faststart: bool) -> None:
    cmd = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x32:rate=8",
           "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p"]  # fmt: skip
    cmd += ["-movflags", "+faststart"] if faststart else []
    subprocess.run([*cmd, str(path)], check=True, capture_output=True)


def _frames_digest(path) -> str:
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    assert len(raw) == 8 * 64 * 32 * 3
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "mdat-first"])
def test_metadata_written_parsed_back_and_read_by_ffmpeg(tmp_path, faststart):
    plain, tagged = tmp_path / "plain.mp4", tmp_path / "tagged.mp4"
    _encode(plain, faststart)
    before = read_spherical_metadata(plain)
    assert not before.v1 and not before.v2
    inject_spherical_metadata(plain, tagged)
    info = read_spherical_metadata(tagged)
    assert info.v1 and "<GSpherical:Spherical>true</GSpherical:Spherical>" in info.v1_xmp
    assert info.v2 and info.stereo_mode == 0 and info.projection == "equirectangular"
    assert info.pose_deg == (0.0, 0.0, 0.0) and info.bounds == (0, 0, 0, 0)
    assert {"st3d", "sv3d", "prhd", "equi"} <= set(info.boxes)
    # FFmpeg's own MP4 demuxer sees a 360° video, and every frame decodes unchanged.
    probe = subprocess.run([FFMPEG, "-hide_banner", "-i", str(tagged)], capture_output=True,
                           text=True).stderr  # fmt: skip
    assert "Spherical Mapping: equirectangular" in probe, probe
    assert "Stereo 3D: 2D" in probe, probe
    assert _frames_digest(tagged) == _frames_digest(plain)
    # Injecting again replaces, never duplicates.
    again = tmp_path / "again.mp4"
    inject_spherical_metadata(tagged, again)
    assert read_spherical_metadata(again).boxes.count("sv3d") == 1
    assert again.stat().st_size == tagged.stat().st_size


def test_not_an_mp4_is_refused(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00\x00\x00\x08free")
    with pytest.raises(ValueError, match="no moov box"):
        inject_spherical_metadata(bad, tmp_path / "y.mp4")
    assert not (tmp_path / "y.mp4").exists()
