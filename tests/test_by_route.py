"""Runs that keep their routes apart (``compute extract --by-route``): each route's image-mean
matrix against a direct capture, the merge identity (the routes sum to ``attention_mean``),
the stored routes against the orders, and a resume after an interrupted shard."""

import numpy as np
import pytest
import torch

from mambapanel import attention, data, extract, orders, store
from mambapanel.errors import OptionError
from mambapanel.models.vim import token_routes
from mambapanel.store import stage_group

IMAGES = 2  # the packaged photographs, one per shard (two shards)


def make_run(path, model, order, size, stage):
    """A run made in this process by the workers' own functions (no cluster): plan, create,
    every shard, finalise."""
    plan = extract.plan_run(
        model=model, order=order, image_source="photos", image_size=size,
        stages=[stage], explanations=False, by_route=True, shard_size=1, batch_size=2,
    )  # fmt: skip
    selection = data.select_images("photos", IMAGES)
    store.create_run(
        path,
        images=[(image.image_id, image.label) for image in selection.images],
        layouts=plan.layouts,
        dtype="float32",
        shard_size=1,
        attrs=plan.attrs,
        routes=plan.routes,
    )
    return path


def complete(path):
    for shard in store.pending_shards(path):
        extract.extract_shard(path, shard, batch_size=2)
    store.finalise(path)
    return store.open_run(path)


def direct_by_route(model, order, size, stage):
    """r(block, K, L, L) float64: each route's matrix averaged over the run's images, from
    one direct capture of the workers' model (seed 0); the patches only for Vim."""
    network = extract.build_model(model, None, order, seed=0)
    ids = data.select_images("photos", IMAGES).images
    pixels = data.preprocess([data.open_image("photos", image.image_id) for image in ids], size)
    with torch.no_grad(), attention.capture(network) as cap:
        network(pixels)
    blocks = range(network.depths[stage])
    per_block = [cap.attention(stage, b, by_route=True, dtype=torch.float64) for b in blocks]
    return torch.stack(per_block).mean(1).numpy()


# VMamba's four cross routes at 64 px (stage 1: 8x8), Vim's two morton routes at 32 px (8x8).
CASES = [("vmamba-micro", "cross", 64, 1), ("vim-micro", "morton", 32, 0)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """built(case) -> (path, tree) of that case's complete run, made once per module."""
    runs = {}

    def build(case):
        if case not in runs:
            path = make_run(tmp_path_factory.mktemp("by-route") / "run", *case)
            runs[case] = path, complete(path)
        return runs[case]

    return build


@pytest.fixture(params=CASES, ids=[case[0] for case in CASES])
def by_route_run(request, built):
    return request.param, *built(request.param)


def test_each_route_mean_is_the_direct_capture_and_they_sum_to_attention_mean(by_route_run):
    (model, order, size, stage), _, tree = by_route_run
    group = tree[stage_group(stage)]
    routed = group["attention_mean_by_route"].values
    merged = group["attention_mean"].values
    expected = direct_by_route(model, order, size, stage)
    assert routed.shape == expected.shape and routed.shape[1] == (
        4 if model.startswith("vm") else 2
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(routed, expected, rtol=1e-4, atol=1e-5 * scale)
    # design.md section 3: a block's attention is the sum of its routes' (Vim: halved) scans.
    np.testing.assert_allclose(
        routed.astype(np.float64).sum(1), merged, rtol=1e-5, atol=1e-6 * scale
    )
    assert not np.allclose(
        routed[:, 0], routed[:, 1]
    )  # the routes differ: nothing was merged twice
    assert list(group["route"].values) == list(range(routed.shape[1]))
    assert "partial_sum_by_route" not in group


def test_the_stored_routes_are_the_orders_patch_sequences(by_route_run):
    (model, order, _, stage), _, tree = by_route_run
    group = tree[stage_group(stage)]
    height, width = group.attrs["full_grid_height"], group.attrs["full_grid_width"]
    if model.startswith("vim"):
        tokens = token_routes(order, height, width)
        expected = tokens[tokens != height * width].view(2, -1)  # the CLS token left out
        assert (expected[0] == orders.single_route(order, height, width)).all()
    else:
        expected = orders.routes(order, height, width)
    np.testing.assert_array_equal(group["routes"].values, expected.numpy())


def test_a_shard_interrupted_before_done_is_computed_again_to_the_same_arrays(tmp_path, built):
    whole = built(CASES[0])[1]
    path = make_run(tmp_path / "interrupted", *CASES[0])
    extract.extract_shard(path, 0, batch_size=2)
    # What a kill of shard 1's task after its sums but before `done` leaves: sums on disk,
    # the images not done. The resume computes the shard again and overwrites them.
    layouts = store.read_run(path).layouts
    garbage = {s.stage: np.full((s.n_blocks, s.patches, s.patches), 7.0) for s in layouts}
    routed = {stage: np.repeat(g[:, None], 4, 1) for stage, g in garbage.items()}
    thumbnails = np.zeros((1, 64, 64, 3), np.uint8)
    store.write_shard(path, 1, thumbnails, garbage, None, routed)
    done = store._array(path, "done")
    done[1] = False  # undone: the kill came before the flag
    assert store.pending_shards(path) == [1]
    resumed = complete(path)
    for layout in layouts:
        for name in ("attention", "attention_mean", "attention_mean_by_route"):
            np.testing.assert_array_equal(
                resumed[stage_group(layout.stage)][name].values,
                whole[stage_group(layout.stage)][name].values,
            )


def test_a_resume_without_by_route_is_refused_by_name(by_route_run):
    _, path, tree = by_route_run
    with pytest.raises(store.RunError, match="by_route: the run has True, asked for False"):
        store.check_compatible(path, {**tree.attrs, "by_route": False})


def test_by_route_without_routes_is_refused():
    layouts = [store.StageLayout(0, 1, (2, 2))]
    with pytest.raises(OptionError, match=r"routes of every stage; none for \[0\]"):
        store.create_run("/nonexistent/run", images=[("a", "")], layouts=layouts,
                         dtype="float32", shard_size=1, attrs={"by_route": True})  # fmt: skip


def test_the_disk_estimate_counts_the_by_route_means_and_sums():
    layouts = [store.StageLayout(0, 2, (4, 4))]
    plain, routed = (
        store.bytes_needed(layouts, 5, "float32", 2, routes=routes)[0] for routes in (0, 4)
    )
    assert routed["attention_mean"] == 5 * plain["attention_mean"] == 5 * 2 * 16**2 * 4
    assert routed["partial_sum"] == 5 * plain["partial_sum"]
    assert routed["attention"] == plain["attention"]
