"""Extraction on a real LocalCluster into real stores: stored matrices against a direct
capture, the exact mean, pooling, resume after a real SIGKILL, refusal of other options."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from distributed import LocalCluster
from test_data import write_image

import compute.extract
from compute.__main__ import main
from compute.cluster import LOCAL_HTTP
from compute.extract import choose_keep, report_disk
from mambapanel import attention, data, explain, extract, store
from mambapanel.models.vmamba import SS2D
from mambapanel.store import stage_group

SIZE = 64  # vmamba-micro grids: 16x16, 8x8, 4x4, 2x2
IMAGES = ["cat/1.png", "cat/2.png", "cat/3.png", "dog/1.png", "dog/2.png", "dog/3.png"]


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for seed, name in enumerate(IMAGES):
        write_image(root / name, size=(80 + 8 * seed, 70), seed=seed)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def extract_args(out, folder, *options):
    return ["extract", "--out", str(out), "--images", str(folder), "--size", str(SIZE), *options]


@pytest.fixture(scope="module")
def run(tmp_path_factory, folder, scheduler):
    """Six images, two shards (4 + 2), forward batches of 2, stage 0 pooled 2x2, float16."""
    out = tmp_path_factory.mktemp("runs") / "run"
    options = ["--batch-size", "2", "--shard-size", "4", "--pool", "0:2", "--dtype", "float16"]
    assert main([*extract_args(out, folder, *options), "--scheduler", scheduler]) == 0
    return out


def direct_attention(folder, stage):
    """r(image, block, L, L) float64 of every image at ``stage``, from one direct capture
    with the weights the workers build (seed 0)."""
    model = extract.build_model("vmamba-micro", None, None, seed=0)
    pixels = data.preprocess([data.load_image(folder / name) for name in IMAGES], SIZE)
    with torch.no_grad(), attention.capture(model) as cap:
        model(pixels)
    blocks = range(model.depths[stage])
    return np.stack([cap.attention(stage=stage, block=b).double().numpy() for b in blocks], 1)


def pooled_by_reshape(matrices, side, factor):
    """Mean over factor x factor windows of queries and keys of r(..., side², side²)."""
    small = side // factor
    windows = matrices.reshape(
        *matrices.shape[:-2], small, factor, small, factor, small, factor, small, factor
    )
    return windows.mean((-7, -5, -3, -1)).reshape(*matrices.shape[:-2], small**2, small**2)


def test_run_records_images_labels_thumbnails_and_skipped_files(run, folder):
    tree = store.open_run(run)
    attrs = tree.attrs
    assert attrs["model"] == "vmamba-micro" and attrs["order"] == "cross"
    assert attrs["image_source"] == str(folder.resolve()) and attrs["n_images"] == 6
    assert attrs["skipped_files"] == ["cat/notes.txt: not an image"]
    assert attrs["checkpoint"] is None and attrs["seed"] == 0 and attrs["complete"]
    assert list(tree["image_id"].values) == IMAGES
    assert list(tree["label"].values) == ["cat"] * 3 + ["dog"] * 3
    expected = [data.thumbnail(data.load_image(folder / name), 64) for name in IMAGES]
    np.testing.assert_array_equal(tree["thumbnail"].values, np.stack(expected))
    assert (
        tree[stage_group(0)].attrs["grid_height"] == 8 and tree[stage_group(0)].attrs["pool"] == 2
    )
    assert tree[stage_group(1)]["attention"].shape == (6, 2, 64, 64)


def test_stored_matrices_match_a_direct_capture_pooled_where_asked(run, folder):
    tree = store.open_run(run)
    expected = {0: pooled_by_reshape(direct_attention(folder, 0), 16, 2)}
    expected[1] = direct_attention(folder, 1)
    for stage, matrices in expected.items():
        stored = tree[stage_group(stage)]["attention"].values
        assert stored.dtype == np.float16 and stored.shape == matrices.shape
        # Random weights give |α| ~ 1e-6, below float16's normal range (6.1e-5): its steps
        # there are 2^-24 apart.
        np.testing.assert_allclose(stored, matrices, rtol=2**-10, atol=2**-24)


def test_attention_mean_is_the_exact_float64_mean_not_the_float16_one(run, folder):
    tree = store.open_run(run)
    for stage in (0, 3):
        exact = direct_attention(folder, stage).mean(0)
        if stage == 0:
            exact = pooled_by_reshape(exact, 16, 2)
        group = tree[stage_group(stage)]
        error = np.abs(group["attention_mean"].values - exact).max()
        float16_error = np.abs(group["attention"].values.astype(np.float64).mean(0) - exact).max()
        scale = np.abs(exact).max()
        # Batches of 2 on the workers against one batch of 6 here: float32 rounding apart.
        assert error < 1e-5 * scale
        assert error < float16_error / 20


def test_float32_run_mean_is_the_mean_of_its_stored_matrices(tmp_path, folder, scheduler):
    out = tmp_path / "run32"
    options = ["--stages", "2,3", "--n", "3", "--channels", "absmean"]  # float32 by default
    assert main([*extract_args(out, folder, *options), "--scheduler", scheduler]) == 0
    tree = store.open_run(out)
    assert tree.attrs["stages"] == [2, 3] and set(tree.children) == {stage_group(2), stage_group(3)}
    for stage in (2, 3):
        stored = tree[stage_group(stage)]["attention"].values
        assert stored.dtype == np.float32 and (stored >= 0).all()  # absmean
        mean = stored.astype(np.float64).mean(0).astype(np.float32)
        np.testing.assert_array_max_ulp(tree[stage_group(stage)]["attention_mean"].values, mean, 1)


def test_pool_attention_averages_uneven_edge_windows():
    matrices = torch.arange(81.0).reshape(1, 9, 9)  # a 3x3 grid
    pooled = extract.pool_attention(matrices, (3, 3), 2)
    windows = [[0, 1, 3, 4], [2, 5], [6, 7], [8]]  # row-major 2x2 windows of the 3x3 grid
    expected = [[matrices[0][q][:, k].mean() for k in windows] for q in windows]
    torch.testing.assert_close(pooled[0], torch.tensor(expected))


def test_plan_refuses_unknown_stages_and_oversized_pools():
    with pytest.raises(ValueError, match=r"stages \[0, 1, 2, 3\]; asked for stage\(s\) \[4\]"):
        extract.plan_run(model="vmamba-micro", image_size=SIZE, stages=[4])
    with pytest.raises(ValueError, match=r"pool factor 4 for stage 3 must lie in 1\.\.2"):
        extract.plan_run(model="vmamba-micro", image_size=SIZE, pool=4)


def test_disk_report_before_a_run_offers_pool_for_a_large_stage(tmp_path, capsys):
    plan = extract.plan_run(model="vmamba-micro", image_size=224, dtype="float16")
    report_disk(tmp_path / "run", plan, n_images=1000)
    printed = capsys.readouterr().out
    # 1000 images x 2 blocks x 3136² x 2 bytes, and one float64 sum per block and shard.
    assert "    0   56x56    1      2   36.7 GiB          -    9.2 GiB" in printed
    assert "keep all (--keep): every image's matrices, 39.1 GiB" in printed
    assert "hint: stage 0 needs 36.6 GiB; --pool 0:2 averages 2x2 patches" in printed
    assert "hint: stage 1 needs 2.3 GiB" in printed and "hint: stage 2" not in printed
    assert choose_keep(plan, 1000) == "sketch" and choose_keep(plan, 100) == "all"

    sketched = extract.with_keep(plan, "sketch")
    report_disk(tmp_path / "run", sketched, n_images=1000, default_keep=True)
    printed = capsys.readouterr().out
    # The first 64 images' matrices, and 1000 x 2 blocks x 1,024 float32 numbers.
    assert "    0   56x56    1      2    2.4 GiB    7.8 MiB    9.2 GiB" in printed
    assert (
        "keep sketch (the default: at least 10 GB of matrices): every image's matrices would "
        "take 39.1 GiB" in printed
    )
    assert "hint" not in printed


def test_a_complete_run_is_left_as_it_is_and_other_weights_are_refused(
    run, folder, tmp_path, capsys
):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    options = ["--batch-size", "2", "--shard-size", "4", "--pool", "0:2", "--dtype", "float16"]
    assert main(extract_args(run, folder, *options)) == 0  # no cluster is started
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    checkpoint = tmp_path / "micro.pth"
    torch.save(extract.build_model("vmamba-micro", None, None, seed=1).state_dict(), checkpoint)
    capsys.readouterr()
    assert main([*extract_args(run, folder, *options), "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err
    assert "checkpoint_sha256: the run has None (checkpoint None), asked for '" in error
    assert f"(checkpoint {checkpoint})" in error
    with pytest.raises(store.RunError, match="the run is complete"):
        extract.extract_shard(run, 0, batch_size=2)


def test_a_resume_with_another_batch_size_is_refused_by_name(run, folder, capsys):
    """Batches of 2 and of 3 round differently in float32: finishing a run with another
    batch size would give a run equal to neither clean one."""
    options = ["--batch-size", "3", "--shard-size", "4", "--pool", "0:2", "--dtype", "float16"]
    assert main(extract_args(run, folder, *options)) == 2
    assert "batch_size: the run has 2, asked for 3" in capsys.readouterr().err


def count_done(out):
    try:
        return int(np.count_nonzero(zarr.open_array(out, path="done", mode="r")[...]))
    except (FileNotFoundError, zarr.errors.BaseZarrError):  # not created yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["all", "sketch"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, folder, scheduler, keep):
    out = tmp_path / "killed"
    # Six one-image shards at 96 px: time to kill between the first image done and the last.
    # Sketched: 64 numbers per block (stages 0-1 take the sketch's dense path, 2-3 its
    # path for fewer rows than shifts), the matrices of the first 2 images.
    kept = ["--keep", keep, *(["--keep-images", "2", "--sketch-dim", "64"] * (keep == "sketch"))]
    kept += ["--by-route"] * (keep == "all")  # and each route's mean, through its own sums
    options = [*kept, "--size", "96", "--batch-size", "1", "--shard-size", "1", "--workers", "2"]
    command = [sys.executable, "-m", "compute", *extract_args(out, folder, *options)]
    # Its own session: the kill reaches the client, the nannies and the workers at once.
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while count_done(out) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_at_kill = count_done(out)
    assert 0 < done_at_kill < len(IMAGES), "the kill must fall between the first and last image"
    assert not store.read_run(out).attrs["complete"]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_at_kill} done, {len(IMAGES) - done_at_kill} to compute" in resumed.stdout

    reference = tmp_path / "uninterrupted"
    reference_options = [*options[:-2], "--scheduler", scheduler]
    assert main(extract_args(reference, folder, *reference_options)) == 0
    killed, whole = store.open_run(out), store.open_run(reference)
    for stage in range(4):
        names = ("attention", "attention_mean", *(["sketch"] * (keep == "sketch")))
        names += ("attention_mean_by_route",) * (keep == "all")
        for name in names:
            np.testing.assert_array_equal(
                killed[stage_group(stage)][name].values, whole[stage_group(stage)][name].values
            )
        assert not {"partial_sum", "partial_sum_by_route"} & set(killed[stage_group(stage)])
        kept_images = np.isfinite(killed[stage_group(stage)]["attention"].values).all((1, 2, 3))
        assert list(kept_images) == [True] * 2 + [keep == "all"] * 4
    np.testing.assert_array_equal(killed["thumbnail"].values, whole["thumbnail"].values)

    other_order = subprocess.run(
        [*command, "--order", "morton"], capture_output=True, text=True, timeout=300
    )
    assert other_order.returncode == 2
    assert "order: the run has 'cross', asked for 'morton'" in other_order.stderr


def direct_explanations(folder, name, size, n):
    """What one direct forward and backward pass of the workers' model gives the first
    ``n`` images: predicted classes, relevance maps, the capture."""
    model = extract.build_model(name, None, None, seed=0).requires_grad_(False)
    pixels = data.preprocess([data.load_image(folder / image) for image in IMAGES[:n]], size)
    with attention.capture(model, gradients=True) as cap:
        predicted = extract.predict_and_backpropagate(model, pixels)
    return predicted, explain.relevance_maps(cap), cap


@pytest.mark.slow
def test_a_vim_run_stores_the_explanations_a_direct_capture_gives(tmp_path, folder, scheduler):
    out = tmp_path / "vim"
    options = ["--model", "vim-micro", "--size", "32", "--faithfulness-images", "3",
               "--batch-size", "2", "--shard-size", "4", "--scheduler", scheduler]  # fmt: skip
    assert main(extract_args(out, folder, *options)) == 0
    tree = store.open_run(out)
    assert tree.attrs["explanations"] and tree.attrs["faithfulness_images"] == 3
    assert list(tree["test"].values) == ["rollout", "attribution", "cls", "random"]
    predicted, maps, cap = direct_explanations(folder, "vim-micro", 32, len(IMAGES))
    np.testing.assert_array_equal(tree["predicted"].values, predicted.numpy())
    for index, name in enumerate(store.EXPLANATIONS):
        stored = tree["relevance"].isel(explanation=index).values
        np.testing.assert_allclose(stored, maps[name].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stored.sum(-1), 1.0, rtol=1e-5)
    stage = tree[stage_group(0)]
    for block in range(4):
        from_cls, to_cls = cap.cls_attention(0, block)
        np.testing.assert_allclose(stage["attention_from_cls"].values[:, block], from_cls,
                                   rtol=1e-4, atol=1e-7)  # fmt: skip
        np.testing.assert_allclose(stage["attention_to_cls"].values[:, block], to_cls,
                                   rtol=1e-4, atol=1e-7)  # fmt: skip
    curves = tree["faithfulness"].values  # (image, test, removal, fraction)
    assert np.isfinite(curves[:3]).all() and np.isnan(curves[3:]).all()
    # Nothing removed: every test starts from the unperturbed image's probability.
    np.testing.assert_allclose(curves[:3, :, :, 0], curves[:3, :1, :1, 0].repeat(4, 1).repeat(2, 2))


def test_no_explanations_stores_none_and_keep_defaults_by_the_estimate(
    tmp_path, folder, scheduler, capsys, monkeypatch
):
    monkeypatch.setattr(compute.extract, "KEEP_ALL_BELOW_BYTES", 1)  # any run is "large"
    out = tmp_path / "plain"
    options = ["--no-explanations", "--stages", "3", "--scheduler", scheduler]
    assert main(extract_args(out, folder, *options)) == 0
    assert "keep sketch (the default: at least 0 GB of matrices)" in capsys.readouterr().out
    tree = store.open_run(out)
    assert tree.attrs["keep"] == "sketch"
    assert not tree.attrs["explanations"] and "relevance" not in tree.data_vars
    assert store.read_run(out).tests == ()


def test_device_cuda_without_a_gpu_and_triton_on_the_cpu_are_refused_by_name(
    tmp_path, folder, capsys, monkeypatch
):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(extract_args(tmp_path / "gpu", folder, "--device", "cuda")) == 2
    assert "--device cuda: this machine shows no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu").exists()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert main(extract_args(tmp_path / "triton", folder, "--backend", "triton")) == 2
    assert "--backend triton runs on a GPU (--device cuda)" in capsys.readouterr().err


def test_bfloat16_passes_leave_the_reconstruction_identity_exact():
    """Under bfloat16 autocast the linears and convs round what the scans read (u is
    bfloat16), and the scan itself runs in float32 (A is float32): the stored float32
    attention reproduces each scan's output as in a float32 run, to float32 rounding."""
    model = extract.build_model("vmamba-micro", None, None, seed=0)
    with torch.no_grad(), attention.capture(model) as cap:
        with extract.autocast(torch.device("cpu"), "bfloat16"):
            model(torch.randn(2, 3, SIZE, SIZE))
    for stage, block in cap.keys():
        inputs = cap.inputs(stage, block)
        assert inputs.u.dtype == torch.bfloat16
        with extract.autocast(torch.device("cpu"), "bfloat16"):
            y_model = SS2D.scan(inputs).flatten(2).double()  # as the forward ran it
        alpha = cap.attention(stage=stage, block=block, reduce=None).double()  # float32
        u = inputs.u.flatten(2).double()
        skip = inputs.Ds.double().view(inputs.routes.shape[0], -1).sum(0)[None, :, None]
        y = torch.einsum("bdij,bdj->bdi", alpha, u) + skip * u
        assert (y - y_model).abs().max() < 1e-6 * y_model.abs().max()


@pytest.mark.slow
@pytest.mark.triton
def test_a_run_on_the_triton_backend_stores_what_the_tiled_one_does(tmp_path, folder, scheduler):
    """The Triton kernel, interpreted on the CPU (tests/conftest.py sets TRITON_INTERPRET=1
    before the workers start), at the 4x4 and 2x2 grids of 32 px."""
    runs = {}
    for backend in ("tiled", "triton"):
        runs[backend] = tmp_path / backend
        options = ["--size", "32", "--stages", "2,3", "--n", "2", "--no-explanations",
                   "--backend", backend, "--scheduler", scheduler]  # fmt: skip
        assert main(extract_args(runs[backend], folder, *options)) == 0
    tiled, triton = store.open_run(runs["tiled"]), store.open_run(runs["triton"])
    assert triton.attrs["backend"] == "triton" and tiled.attrs["backend"] == "tiled"
    for stage in (2, 3):
        np.testing.assert_allclose(
            triton[stage_group(stage)]["attention"].values,
            tiled[stage_group(stage)]["attention"].values,
            rtol=1e-4,
            atol=1e-7,
        )
