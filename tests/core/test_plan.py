"""Sampling plans: distinctness, coverage, regularity and the disk cache."""

from __future__ import annotations

import pytest
import torch
from spherediff_core.errors import CancelledError
from spherediff_core.plan import PlanConfig, build_plan, load_or_build_plan, regularity_report

SIZES = [2_600, 10_000, 26_500]


@pytest.mark.parametrize("n_points", SIZES)
def test_dynamic_plan_is_distinct_covering_and_regular(plan_for, n_points):
    plan = plan_for(n_points=n_points)
    h, w = plan.grid_size
    assert plan.n_views == 89 and plan.indices.shape == (89, h * w)
    for v in range(plan.n_views):
        assert plan.indices[v].unique().numel() == h * w, f"view {v} repeats a point"
    assert bool(plan.covered.all()), f"{int((~plan.covered).sum())} points no view reads"
    report = regularity_report(plan)
    # Mean ray-to-point angle in units of the cell's own angular size.
    assert report["centre_half"] <= 0.40, report
    assert report["whole"] <= 0.90, report


def test_nearest_plan_repeats_points(plan_for):
    plan = plan_for(n_points=10_000, method="nearest")
    repeats = [plan.indices[v].numel() - plan.indices[v].unique().numel() for v in range(89)]
    assert min(repeats) > 0


def test_weights_favour_the_view_centre(plan_for):
    plan = plan_for(n_points=2_600)
    h, w = plan.grid_size
    wts = plan.weights.reshape(-1, h, w)
    # exp(-r / 0.1): about 0.45 at the cells next to the centre of an even grid, e^-14 at corners.
    centre = wts[:, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1]
    assert float(centre.mean()) > 0.3
    assert float(wts[:, 0, 0].max()) < 1e-4
    assert bool((wts > 0).all())


def test_cache_round_trip_and_keys(tmp_path):
    config = PlanConfig(n_points=2_600)
    built = load_or_build_plan(config, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    loaded = load_or_build_plan(config, tmp_path)
    assert torch.equal(built.indices, loaded.indices)
    assert torch.equal(built.weights, loaded.weights)
    # Every parameter that changes the plan changes the key.
    variants = [
        PlanConfig(n_points=2_601),
        PlanConfig(n_points=2_600, fov_deg=70.0),
        PlanConfig(n_points=2_600, overlap=0.5),
        PlanConfig(n_points=2_600, extra_views_per_ring=2),
        PlanConfig(n_points=2_600, ring_step_deg=30.0),
        PlanConfig(n_points=2_600, grid_height=16),
        PlanConfig(n_points=2_600, method="nearest"),
        PlanConfig(n_points=2_600, temperature=0.2),
    ]
    keys = {v.cache_key() for v in variants} | {config.cache_key()}
    assert len(keys) == len(variants) + 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    config = PlanConfig(n_points=2_600)
    good = load_or_build_plan(config, tmp_path)
    path = next(tmp_path.iterdir())
    if damage == "garbage":
        path.write_bytes(b"not a plan at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        state = good.to_state()
        state["indices"] = state["indices"][:, :10]
        torch.save(state, path)
    again = load_or_build_plan(config, tmp_path)
    assert torch.equal(again.indices, good.indices)
    # The rebuilt plan replaced the bad file; no temporary files are left behind.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert torch.equal(torch.load(path, weights_only=True)["indices"], good.indices)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="method"):
        PlanConfig(n_points=2_600, method="raster")
    with pytest.raises(ValueError, match="n_points"):
        PlanConfig(n_points=3)
    with pytest.raises(ValueError, match="grid"):
        build_plan(PlanConfig(n_points=100, grid_height=50, grid_width=50))


def test_big_plan_stays_distinct_covering_and_regular_at_the_centre(plan_for):
    """100,000 points: the rim's deficit pushes outer rings far out, so most cells find
    their candidates through the inner ring's prediction and some through widened KD-tree
    queries; both paths must keep every view's points distinct."""
    plan = plan_for(n_points=100_000)
    sorted_idx = plan.indices.sort(dim=1).values
    assert not bool((sorted_idx[:, 1:] == sorted_idx[:, :-1]).any()), "a view repeats a point"
    assert bool(plan.covered.all())
    report = regularity_report(plan)
    assert report["centre_half"] <= 0.35, report
    # Cells far from the centre sit where the inner rings' displacement predicts: no cell
    # ends up far off its ray (the pre-prediction build reached 10 cell spacings too).
    assert report["max"] <= 12.0, report


def test_plan_build_stops_when_cancelled_in_the_assignment():
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) > 20  # past the first checks, inside the ring loop

    with pytest.raises(CancelledError):
        build_plan(PlanConfig(n_points=26_500), should_cancel)


@pytest.mark.parametrize(("h", "w"), [(3, 6), (8, 16), (16, 32), (20, 9), (5, 17)])
def test_non_square_grids_get_distinct_points(h, w):
    """Elongated grids: some outer cells have no cell one ring further in (their ring is
    then matched around the cells' own rays); every view still reads distinct points."""
    plan = build_plan(PlanConfig(n_points=20_000, grid_height=h, grid_width=w))
    assert plan.indices.shape == (plan.n_views, h * w)
    for v in range(plan.n_views):
        assert plan.indices[v].unique().numel() == h * w
    assert regularity_report(plan)["centre_half"] <= 0.6
