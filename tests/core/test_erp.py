"""ERP <-> perspective views, in the Blender convention."""

from __future__ import annotations

import torch
from spherediff_core import geometry as g
from spherediff_core.erp import ErpCanvas, erp_to_views, views_to_erp

from tests.core.panoramas import psnr, smooth_colour


def ground_truth_erp(h: int, w: int) -> torch.Tensor:
    return smooth_colour(g.erp_pixel_directions(h, w)).permute(2, 0, 1).float()


def test_erp_to_views_samples_the_right_directions():
    lay = g.default_view_layout()
    frames = lay.frames()
    erp = ground_truth_erp(512, 1024)
    views = erp_to_views(erp, frames, lay.fov_deg, 48, 48)
    truth = smooth_colour(g.view_rays(frames, lay.fov_deg, 48, 48)).permute(0, 3, 1, 2).float()
    per_view = [psnr(views[v], truth[v]) for v in range(lay.n_views)]
    assert min(per_view) > 40
    # Pole views are as good as equator views (within 3 dB).
    lat = lay.lat_rad.abs()
    equator = [p for p, la in zip(per_view, lat, strict=False) if la < 1e-6]
    poles = [p for p, la in zip(per_view, lat, strict=False) if la > 1.5]
    assert len(poles) == 8 and min(poles) > min(equator) - 3


def test_erp_view_erp_round_trip_is_seamless():
    lay = g.default_view_layout()
    frames = lay.frames()
    erp = ground_truth_erp(128, 256)
    views = erp_to_views(erp, frames, lay.fov_deg, 64, 64)
    back = views_to_erp(views, frames, lay.fov_deg, 128, 256)
    assert psnr(back, erp) > 40
    lat = (0.5 - (torch.arange(128) + 0.5) / 128) * 180
    caps = lat.abs() > 75
    assert psnr(back[:, caps], erp[:, caps]) > 40
    seam = (back[:, :, 0] - back[:, :, -1]).abs().mean()
    truth_seam = (erp[:, :, 0] - erp[:, :, -1]).abs().mean()
    assert float(seam) <= 1.5 * float(truth_seam)


def test_views_to_erp_orientation_is_not_mirrored():
    lay = g.default_view_layout()
    frames = lay.frames()
    truth = smooth_colour(g.view_rays(frames, lay.fov_deg, 32, 32)).permute(0, 3, 1, 2).float()
    erp = views_to_erp(truth, frames, lay.fov_deg, 64, 128)
    good = psnr(erp, ground_truth_erp(64, 128))
    mirrored = psnr(erp.flip(-1), ground_truth_erp(64, 128))
    assert good > 35 and mirrored < good - 15


def test_erp_canvas_blends_video_frames_like_one_erp_per_frame():
    """Frames as channels, added batch by batch = views_to_erp of every frame on its own."""
    lay = g.default_view_layout()
    frames = lay.frames()
    n_frames, size = 4, 40
    video = torch.rand(
        lay.n_views, 3, n_frames, size, size, generator=torch.Generator().manual_seed(1)
    )
    canvas = ErpCanvas(frames, lay.fov_deg, 32, 64, 3 * n_frames, chunk_channels=5)
    for start in range(0, lay.n_views, 7):
        ids = torch.arange(start, min(start + 7, lay.n_views))
        canvas.add(video[ids].transpose(1, 2).reshape(len(ids), 3 * n_frames, size, size), ids)
    blended = canvas.result().reshape(n_frames, 3, 32, 64)
    for f in range(n_frames):
        assert torch.equal(blended[f], views_to_erp(video[:, :, f], frames, lay.fov_deg, 32, 64))


def test_the_gpu_way_of_blending_gives_the_cpu_result():
    """On a GPU a view's whole band is blended with weight 0 outside the view (no host
    wait per view); on the CPU the inside pixels are selected first. Same canvas."""
    lay = g.default_view_layout()
    frames = lay.frames()
    erp = ground_truth_erp(96, 192)
    views = erp_to_views(erp, frames, lay.fov_deg, 40, 40)
    canvases = []
    for compact in (True, False):
        canvas = ErpCanvas(frames, lay.fov_deg, 96, 192, 3)
        canvas.compact = compact
        for start in range(0, lay.n_views, 16):
            ids = torch.arange(start, min(start + 16, lay.n_views))
            canvas.add(views[ids], ids)
        canvases.append(canvas.result())
    assert torch.allclose(canvases[0], canvases[1], atol=1e-5)
    assert psnr(canvases[1], erp) > 40
