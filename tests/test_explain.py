"""Explanations: rollout against its sum over paths, the downsampling map, VMamba's
cross-stage rollout on cases with a known answer, and the perturbation test on a score
whose curves are known exactly."""

import numpy as np
import pytest
import torch

from mambapanel import attention, explain, models
from mambapanel.findings import metrics


def random_blocks(n_blocks=3, L=3, B=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(B, L, L, generator=generator, dtype=torch.float64) for _ in range(n_blocks)]


def test_rollout_is_the_sum_over_paths_first_block_first():
    blocks = random_blocks()
    torch.testing.assert_close(explain.rollout(blocks), explain.rollout_reference(blocks))
    # The order matters: the reversed product is another matrix.
    assert not torch.allclose(explain.rollout(blocks), explain.rollout(blocks[::-1]))
    torch.testing.assert_close(
        explain.rollout(blocks).sum(-1), torch.ones(2, 3, dtype=torch.float64)
    )


def test_rollout_of_no_attention_is_the_identity():
    blocks = [torch.zeros(1, 4, 4, dtype=torch.float64)] * 3
    torch.testing.assert_close(explain.rollout(blocks)[0], torch.eye(4, dtype=torch.float64))


def test_downsampling_spreads_a_coarse_patch_over_the_fine_patches_under_it():
    even = explain.downsampling((2, 2), (4, 4))
    assert even.shape == (4, 16)
    np.testing.assert_array_equal(
        even[0].view(4, 4).numpy(), np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4, [0] * 4]) / 4
    )
    uneven = explain.downsampling((2, 2), (3, 3))  # stride 2 over a 3x3 grid: edges smaller
    np.testing.assert_array_equal(uneven[3].view(3, 3).numpy(), [[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(uneven.sum(0).numpy(), [0.25, 0.25, 0.5, 0.25, 0.25, 0.5,
                                                          0.5, 0.5, 1.0])  # fmt: skip


def test_stage_rollout_of_no_attention_is_uniform_and_follows_attention_otherwise():
    grids = [(4, 4), (2, 2)]
    quiet = [
        [torch.zeros(1, 16, 16, dtype=torch.float64)] * 2,
        [torch.zeros(1, 4, 4, dtype=torch.float64)] * 2,
    ]
    torch.testing.assert_close(
        explain.stage_rollout(quiet, grids, 1), torch.full((1, 16), 1 / 16, dtype=torch.float64)
    )
    # One stage: the mean row of its rollout.
    blocks = random_blocks(2, L=4, B=1)
    expected = explain.rollout(blocks).mean(-2)
    torch.testing.assert_close(explain.stage_rollout([blocks[::-1]], [(2, 2)], 1), expected)
    # Last-stage attention that moves everything onto coarse patch 0 lands on the 2x2 fine
    # patches under it (stage 0 attends nowhere).
    towards_first = torch.zeros(1, 4, 4)
    towards_first[:, :, 0] = 1e6
    relevance = explain.stage_rollout([[torch.zeros(1, 16, 16)], [towards_first]], grids, 1)
    assert relevance.sum().item() == pytest.approx(1.0)
    np.testing.assert_allclose(relevance.view(4, 4)[:2, :2].numpy(), 0.25, atol=1e-5)


def test_perturbation_curves_of_a_known_score():
    """The score is a weighted sum over the cells of a 10x10 grid, weight = cell index: with
    the weights as relevance, removing the most relevant cells first takes the largest
    weights first, and the curves are the sums of what is left."""
    weights = torch.arange(100, dtype=torch.float64).view(10, 10)
    pixels = explain.cell_mask(weights, (30, 20)) / 6  # each cell is 3 x 2 pixels

    def score(images):  # images: (n, 3, 30, 20) with every channel 1 where kept
        return (images[:, 0] * pixels).sum((-2, -1))

    image = torch.ones(3, 30, 20, dtype=torch.float64)
    most, least = explain.perturbation_curves(score, image, weights)
    total = weights.sum().item()
    removed = [round(f * 100) for f in explain.FRACTIONS]
    np.testing.assert_allclose(most, [total - sum(range(100 - m, 100)) for m in removed])
    np.testing.assert_allclose(least, [total - sum(range(m)) for m in removed])
    area = metrics.curve_area(np.stack([most, least]), explain.FRACTIONS)
    assert area[0] < area[1]
    flat = np.full(len(explain.FRACTIONS), 0.7)
    assert metrics.curve_area(flat, explain.FRACTIONS) == pytest.approx(0.7)


def test_perturbation_curves_in_batches_and_with_a_known_clean_score():
    """Scored a few images at a time, or with the unperturbed image's score given, the
    curves are those of one call: ``score`` sees every perturbed image once and the clean
    image never when its score is given."""
    torch.manual_seed(0)
    weights = torch.randn(6, 6, dtype=torch.float64)
    image = torch.randn(3, 12, 18, dtype=torch.float64)
    direction = torch.randn(3, 12, 18, dtype=torch.float64)
    seen = []

    def score(images):
        seen.append(len(images))
        return torch.tanh((images * direction).sum((-3, -2, -1)))

    expected = explain.perturbation_curves(score, image, weights)
    assert seen == [2 * len(explain.FRACTIONS)]
    clean = score(image[None]).item()
    seen.clear()
    got = explain.perturbation_curves(score, image, weights, batch=3, clean=clean)
    assert max(seen) <= 3 and sum(seen) == 2 * (len(explain.FRACTIONS) - 1)
    for curve, want in zip(got, expected, strict=True):
        assert curve[0] == clean
        np.testing.assert_allclose(curve, want, rtol=1e-12)
    seen.clear()
    batched = explain.perturbation_curves(score, image, weights, batch=4)
    assert seen == [4] * 5
    for curve, want in zip(batched, expected, strict=True):
        np.testing.assert_allclose(curve, want, rtol=1e-12)


def test_cell_mask_tiles_the_image():
    cells = torch.arange(6.0).view(2, 3)
    mask = explain.cell_mask(cells, (5, 7))
    assert mask.shape == (5, 7)
    assert set(mask.unique().tolist()) == set(range(6))
    assert mask[0, 0] == 0 and mask[-1, -1] == 5 and mask[2, 2] == 0 and mask[3, 3] == 4


def test_propagate_is_a_row_of_the_rollout():
    blocks = random_blocks(4, L=5, B=2)
    start = torch.softmax(torch.randn(2, 5, dtype=torch.float64), -1)
    expected = (start[:, None, :] @ explain.rollout(blocks))[:, 0]
    torch.testing.assert_close(explain.propagate(start, blocks[::-1]), expected)


def test_propagate_in_row_blocks_converts_float32_matrices_without_losing_float64(monkeypatch):
    """Matrices of float32 (as extraction computes them) propagate in float64 a few rows at
    a time: the same as the rollout of the matrices converted whole."""
    monkeypatch.setattr(explain, "_PROPAGATE_ELEMENTS", 14)  # 2 rows of 7 at a time
    blocks = [b.float() for b in random_blocks(3, L=7, B=2)]
    start = torch.softmax(torch.randn(2, 7, dtype=torch.float64), -1)
    expected = (start[:, None, :] @ explain.rollout([b.double() for b in blocks]))[:, 0]
    relevance = explain.propagate(start, blocks[::-1])
    assert relevance.dtype == torch.float64
    torch.testing.assert_close(relevance, expected, rtol=1e-12, atol=0)


def test_propagate_transforms_each_block_of_rows(monkeypatch):
    """A transform (|.|) applied to a few rows at a time equals the transformed matrices."""
    monkeypatch.setattr(explain, "_PROPAGATE_ELEMENTS", 14)
    signed = [b - 0.5 for b in random_blocks(3, L=7, B=2)]
    start = torch.softmax(torch.randn(2, 7, dtype=torch.float64), -1)
    expected = explain.propagate(start, [b.abs() for b in signed[::-1]])
    got = explain.propagate(start, signed[::-1], torch.abs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert not torch.allclose(explain.propagate(start, signed[::-1]), expected)


def test_relevance_maps_take_the_matrices_extraction_supplies_once_per_block():
    torch.manual_seed(3)
    model = models.build("vmamba-micro", num_classes=4)
    with attention.capture(model, gradients=True) as cap:
        logits = model(torch.randn(2, 3, 32, 32))
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    asked = []

    def supplied(stage, block):
        asked.append((stage, block))
        return cap.item_attention(stage, block)

    maps = explain.relevance_maps(cap, attention=supplied)
    assert sorted(asked) == sorted(cap.keys())  # each block once
    for name, values in explain.relevance_maps(cap).items():
        torch.testing.assert_close(maps[name], values, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vmamba-micro", "vim-micro"])
def test_relevance_maps_of_a_model_equal_the_matrix_rollout(name):
    """The vector form on a real capture against full rollout matrices: VMamba's mean row
    through the downsamplings, Vim's CLS row without the CLS token."""
    torch.manual_seed(2)
    model = models.build(name, num_classes=4).double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with attention.capture(model, gradients=True) as cap:
        logits = model(images)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    maps = explain.relevance_maps(cap, dtype=torch.float64)
    assert set(maps) == {"rollout", "attribution"}
    for kind, matrix in (
        ("rollout", lambda s, b: cap.item_attention(s, b, dtype=torch.float64).abs()),
        ("attribution", lambda s, b: cap.attribution(s, b, dtype=torch.float64).clamp(min=0)),
    ):
        stages = sorted({s for s, _ in cap.keys()})
        if name.startswith("vim"):
            whole = explain.rollout([matrix(0, b) for b in range(4)])
            expected = whole[:, 64, :64] / whole[:, 64, :64].sum(-1, keepdim=True)
        else:
            grids = [cap.inputs(s, 0).grid for s in stages]
            total = None
            for s in stages:
                stage_rollout = explain.rollout([matrix(s, b) for b in range(2)])
                if total is None:
                    total = stage_rollout
                else:
                    spread = explain.downsampling(grids[s], grids[s - 1])
                    total = stage_rollout @ spread @ total
            expected = total.mean(-2)
        torch.testing.assert_close(maps[kind], expected)
        assert (maps[kind] >= 0).all()
        torch.testing.assert_close(maps[kind].sum(-1), torch.ones(2, dtype=torch.float64))
