"""Dimensionality reduction: each method on data whose answer is known, the out-of-core PCA
against sklearn, and the embeddings that ``reduce_run`` adds to a run."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import PCA

from mambapanel import randomized_pca, reduce, store
from mambapanel.store import stage_group

N_IMAGES, N_BLOCKS, GRID = 6, 2, (4, 4)


def two_clusters(n_per_cluster: int = 30, n_features: int = 500, seed: int = 0):
    """Two Gaussian clusters 10 standard deviations apart, and each point's cluster."""
    rng = np.random.default_rng(seed)
    offset = np.zeros(n_features)
    offset[0] = 10.0
    points = rng.normal(size=(2 * n_per_cluster, n_features))
    points[n_per_cluster:] += offset
    return points, np.repeat([0, 1], n_per_cluster)


def nearest_centroid_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    centroids = np.stack([points[labels == k].mean(axis=0) for k in np.unique(labels)])
    distances = np.linalg.norm(points[:, None] - centroids[None], axis=-1)
    return float(np.mean(distances.argmin(axis=1) == labels))


def low_rank(n_points: int = 60, n_features: int = 500, seed: int = 0) -> np.ndarray:
    """Rank 5 with decaying scales, small noise, off-centre: the spectrum of attention data."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_points, 5)) * [10.0, 6.0, 3.0, 2.0, 1.0]
    noise = 0.01 * rng.normal(size=(n_points, n_features))
    return scores @ rng.normal(size=(5, n_features)) + noise + 3.0


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_two_clusters_stay_separated(method):
    points, labels = two_clusters()
    embedding = reduce.embed(points, method)
    assert embedding.shape == (60, 2) and embedding.dtype == np.float32
    assert nearest_centroid_accuracy(embedding, labels) == 1.0


@pytest.mark.parametrize(
    ("n_points", "n_components"),
    [(60, 3), (12, 5)],  # power iterations; a sketch as wide as the data (exact)
)
def test_pca_of_dask_array_matches_sklearn(monkeypatch, n_points, n_components):
    data = low_rank(n_points)
    # Blocks of 20 rows, re-read at every pass: the out-of-core path.
    monkeypatch.setattr(randomized_pca, "_BLOCK_ELEMENTS", 4000)
    monkeypatch.setattr(randomized_pca, "_MIN_BLOCK_ROWS", 20)
    monkeypatch.setattr(randomized_pca, "_IN_MEMORY_BYTES", 0)
    scores = reduce.pca(da.from_array(data, chunks=(7, 130)), n_components, seed=0)
    expected = PCA(n_components, svd_solver="full").fit_transform(data)
    tolerance = 1e-6 * np.abs(expected).max()
    signs = np.sign(np.sum(scores * expected, axis=0))
    np.testing.assert_allclose(scores * signs, expected, atol=tolerance)
    # Both paths orient the components alike: the same data gives the same picture.
    np.testing.assert_allclose(reduce.pca(data, n_components), scores, atol=tolerance)


def test_large_dask_features_are_read_once_per_pass_not_held(monkeypatch):
    loads = []

    def load(block):
        loads.append(block.shape)
        return block

    data = low_rank()
    features = da.from_array(data, chunks=data.shape).map_blocks(load, meta=np.array((), float))
    monkeypatch.setattr(randomized_pca, "_IN_MEMORY_BYTES", 0)
    reduce.pca(features, 2)
    # Means, sketch, two products per power iteration, final projection.
    assert len(loads) == 3 + 2 * randomized_pca.POWER_ITERATIONS

    loads.clear()
    monkeypatch.setattr(randomized_pca, "_IN_MEMORY_BYTES", data.nbytes)
    reduce.pca(features, 2)
    assert len(loads) == 1


def test_pca_of_float16_dask_array_works_in_float32():
    data = low_rank().astype(np.float16)
    scores = reduce.pca(da.from_array(data, chunks=(10, 500)), 2)
    assert scores.dtype == np.float32
    expected = PCA(2, svd_solver="full").fit_transform(data.astype(np.float64))
    np.testing.assert_allclose(np.abs(scores), np.abs(expected), atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_same_seed_same_output(method):
    points, _ = two_clusters(n_per_cluster=20)
    first = reduce.embed(points, method, seed=3)
    np.testing.assert_array_equal(first, reduce.embed(points, method, seed=3))


def test_tsne_runs_after_pca_to_n_pca_for_wide_input(monkeypatch):
    calls = []
    real_pca = reduce.pca

    def spy(features, n_components, *, seed=0, on_workers=False):
        calls.append((features.shape, n_components, seed))
        return real_pca(features, n_components, seed=seed, on_workers=on_workers)

    monkeypatch.setattr(reduce, "pca", spy)
    wide, _ = two_clusters(n_per_cluster=60)  # 120 points x 500 features
    reduce.embed(wide, "tsne", seed=1)
    assert calls == [((120, 500), 100, 1)]
    assert reduce.embedding_params("tsne", 120, 500)["pca_components"] == 100

    calls.clear()
    reduce.embed(wide[:, :50], "tsne")
    assert calls == []
    assert reduce.embedding_params("tsne", 120, 50)["pca_components"] is None
    # Fewer points than n_pca: PCA to the point count, which loses nothing.
    assert reduce.embedding_params("tsne", 12, 500)["pca_components"] == 12


def test_neighbourhoods_clipped_to_point_count():
    assert reduce.embedding_params("tsne", 1000, 10)["perplexity"] == 30.0
    assert reduce.embedding_params("tsne", 13, 10)["perplexity"] == 4.0
    assert reduce.embedding_params("tsne", 3, 10)["perplexity"] == 1.0
    assert reduce.embedding_params("umap", 1000, 10)["n_neighbors"] == 15
    assert reduce.embedding_params("umap", 5, 10)["n_neighbors"] == 4
    assert reduce.embedding_params("umap", 3, 10)["init"] == "random"
    assert reduce.embedding_params("umap", 4, 10)["init"] == "spectral"


@pytest.mark.parametrize("method", ["pca", "tsne"])
@pytest.mark.parametrize("n_points", [3, 4, 5])
def test_small_point_counts(method, n_points):
    points = np.random.default_rng(0).normal(size=(n_points, 200))
    embedding = reduce.embed(points, method)
    assert embedding.shape == (n_points, 2) and np.isfinite(embedding).all()


@pytest.mark.parametrize("method", reduce.METHODS)
def test_fewer_than_three_points_is_an_error(method):
    with pytest.raises(ValueError, match="at least 3 points, got 2"):
        reduce.embed(np.ones((2, 10)), method)


def test_unknown_method_or_parameter_is_an_error():
    with pytest.raises(ValueError, match="method must be one of"):
        reduce.embed(np.ones((5, 10)), "mds")
    with pytest.raises(ValueError, match=r"unknown \['perplexty'\]"):
        reduce.embed(np.ones((5, 10)), "tsne", perplexty=5)
    with pytest.raises(ValueError, match="pca takes no parameters"):
        reduce.embed(np.ones((5, 10)), "pca", n_neighbors=5)


def test_pca_of_nan_features_is_an_error():
    features = low_rank()
    features[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        reduce.pca(da.from_array(features), 2)


@pytest.mark.slow
def test_umap_separates_clusters_deterministically_and_takes_three_points():
    points, labels = two_clusters()
    embedding = reduce.embed(points, "umap", seed=2)
    assert embedding.shape == (60, 2) and embedding.dtype == np.float32
    assert nearest_centroid_accuracy(embedding, labels) == 1.0
    np.testing.assert_array_equal(embedding, reduce.embed(points, "umap", seed=2))
    assert np.isfinite(reduce.embed(points[:3], "umap")).all()


def test_inter_block_features_are_image_major_rows():
    attention = np.random.default_rng(0).random((3, 2, 4, 4), dtype=np.float32)
    features = reduce.inter_block_features(attention)
    assert isinstance(features, da.Array) and features.shape == (6, 16)
    np.testing.assert_array_equal(features[3].compute(), attention[1, 1].ravel())


def test_feature_shapes_are_checked():
    with pytest.raises(ValueError, match=r"query = key, got shape \(3, 2, 4, 5\)"):
        reduce.inter_block_features(np.zeros((3, 2, 4, 5)))
    with pytest.raises(ValueError, match=r"query = key, got shape \(4, 5\)"):
        reduce.intra_block_features(np.zeros((4, 5)))


# --- the store ------------------------------------------------------------------------


def block_patterns(seed: int) -> np.ndarray:
    """f32(image, block, L, L): block 0 attends back along rows, block 1 along columns
    (causal decay in row-major and column-major order), each image with its own noise."""
    height, width = GRID
    rows, cols = np.divmod(np.arange(height * width), width)
    patterns = []
    for step in (rows * width + cols, cols * height + rows):
        lag = step[:, None] - step[None, :]
        patterns.append(np.where(lag >= 0, np.exp(-lag / 4.0), 0.0))
    noise = np.random.default_rng(seed).normal(size=(N_IMAGES, N_BLOCKS, *patterns[0].shape))
    return (np.stack(patterns)[None] * (1 + 0.1 * noise)).astype(np.float32)


@pytest.fixture
def run(tmp_path):
    """A complete run of two stages, 2 blocks, 6 images and L = 16, made by the store."""
    path = tmp_path / "run.zarr"
    layouts = [store.StageLayout(stage, N_BLOCKS, GRID) for stage in (0, 1)]
    images = [(f"image{i}.png", "ab"[i % 2]) for i in range(N_IMAGES)]
    store.create_run(
        path, images=images, layouts=layouts, dtype="float32", shard_size=N_IMAGES, attrs={}
    )
    sums = {}
    for stage in (0, 1):
        attention = block_patterns(seed=stage)
        for block in range(N_BLOCKS):
            store.write_attention(path, stage, block, 0, attention[:, block])
        sums[stage] = attention.sum(axis=0, dtype=np.float64)
    store.write_shard(path, 0, np.zeros((N_IMAGES, 64, 64, 3), np.uint8), sums)
    store.finalise(path)
    return path


@pytest.fixture
def embedded(monkeypatch):
    """The methods that reduce_run computes, one entry per feature set, in order."""
    methods = []
    embed_resolved = reduce._embed_resolved

    def spy(features, method, params, pca_cache, **options):
        methods.append(method)
        return embed_resolved(features, method, params, pca_cache, **options)

    monkeypatch.setattr(reduce, "_embed_resolved", spy)
    return methods


def test_reduce_run_writes_embeddings(run, embedded):
    before = store.open_run(run)
    reduce.reduce_run(run, methods=("pca",), seed=5, progress=False)

    tree = store.open_run(run)
    for stage in (0, 1):
        node = tree[stage_group(stage)]
        inter, intra = node["embedding_inter"], node["embedding_intra"]
        assert inter.dims == ("method", "image", "block", "xy")
        assert inter.shape == (1, N_IMAGES, N_BLOCKS, 2) and inter.dtype == np.float32
        assert intra.dims == ("method", "block", "query", "xy")
        assert intra.shape == (1, N_BLOCKS, 16, 2) and intra.dtype == np.float32
        assert list(node["method"].values) == ["pca"]
        assert list(node["xy"].values) == ["x", "y"]
        # The index coordinates line the points up with the images, blocks and patches.
        assert list(inter["image"].values) == list(range(N_IMAGES))
        assert list(intra["query_row"].values) == list(np.arange(16) // GRID[1])
        for variable in (inter, intra):
            params = json.loads(variable.attrs["reduce_params"])
            assert list(params) == ["pca"] and params["pca"]["seed"] == 5
        # Nothing else changed: the group's attrs, the attention, the mean.
        assert node.attrs == before[stage_group(stage)].attrs
        for name in ("attention", "attention_mean"):
            assert node[name].identical(before[stage_group(stage)][name])

        # The blocks were built to differ: their points separate in 2-D.
        points = inter.sel({"method": "pca"}).values.reshape(-1, 2)
        blocks = np.tile(np.arange(N_BLOCKS), N_IMAGES)
        assert nearest_centroid_accuracy(points, blocks) == 1.0
        # Algorithms 1 and 2 as the array functions compute them.
        np.testing.assert_array_equal(
            inter.sel({"method": "pca"}).values,
            reduce.embed(reduce.inter_block_features(node["attention"]), "pca", seed=5).reshape(
                N_IMAGES, N_BLOCKS, 2
            ),
        )
        for block in range(N_BLOCKS):
            mean = reduce.intra_block_features(node["attention_mean"].isel(block=block))
            np.testing.assert_array_equal(
                intra.sel({"method": "pca"}).isel(block=block).values,
                reduce.embed(mean, "pca", seed=5),
            )
    stored = {
        (stage, name): tree[stage_group(stage)][name].values
        for stage in (0, 1)
        for name in ("embedding_inter", "embedding_intra")
    }
    embedded.clear()

    # A new method is added; the stored one is kept, not recomputed.
    reduce.reduce_run(run, methods=("pca", "tsne"), seed=5, progress=False)
    assert set(embedded) == {"tsne"}
    again = store.open_run(run)
    for stage in (0, 1):
        node = again[stage_group(stage)]
        assert list(node["method"].values) == ["pca", "tsne"]
        for name in ("embedding_inter", "embedding_intra"):
            np.testing.assert_array_equal(node[name].values[:1], stored[stage, name])
            assert list(json.loads(node[name].attrs["reduce_params"])) == ["pca", "tsne"]
        points = node["embedding_inter"].sel({"method": "tsne"}).values.reshape(-1, 2)
        assert nearest_centroid_accuracy(points, np.tile(np.arange(N_BLOCKS), N_IMAGES)) == 1.0


def test_reduce_run_recomputes_on_new_parameters_or_force(run, embedded):
    reduce.reduce_run(run, methods=("pca", "tsne"), stages=[1], progress=False)
    embedded.clear()
    reduce.reduce_run(run, methods=("pca", "tsne"), stages=[1], progress=False)
    assert embedded == []

    reduce.reduce_run(
        run, methods=("tsne",), stages=[1], method_params={"tsne": {"perplexity": 2.0}}
    )
    assert set(embedded) == {"tsne"}
    node = store.open_run(run)[stage_group(1)]
    assert list(node["method"].values) == ["pca", "tsne"]
    params = json.loads(node["embedding_intra"].attrs["reduce_params"])
    assert params["tsne"]["perplexity"] == 2.0

    embedded.clear()
    reduce.reduce_run(run, methods=("pca",), stages=[1], force=True, progress=False)
    assert set(embedded) == {"pca"}
    assert "embedding_inter" not in store.open_run(run)[stage_group(0)]


def test_reduce_run_refuses_unknown_stage(run):
    with pytest.raises(ValueError, match=r"stores stages \[0, 1\], not \[2\]"):
        reduce.reduce_run(run, methods=("pca",), stages=[2], progress=False)
