"""The count sketch: the fast form against the hashed one as written, the stated error
bound measured over many seeds, and what makes resumes and stages consistent."""

import numpy as np
import pytest
import torch

from mambapanel.sketch import CountSketch, sketch_reference


@pytest.mark.parametrize(
    ("features", "width"),
    # R >= k rows (F = k·R, ragged), fewer rows than shifts (F = k·R, ragged), kept whole
    [(4096, 64), (64 * 64 + 7, 64), (56 * 56, 32), (4096, 1024), (5000, 1024), (100, 1024)],
)
def test_fast_sketch_equals_the_hashed_form(features, width):
    sketch = CountSketch(features, width, seed=5)
    x = torch.randn(3, features)
    fast = sketch(x)
    assert fast.shape == (3, sketch.out_features) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast.double().numpy(), sketch_reference(sketch, x.numpy()),
                               rtol=0, atol=1e-5)  # fmt: skip


def test_every_feature_lands_in_one_bucket_and_a_row_never_collides_with_itself():
    sketch = CountSketch(50 * 16 + 9, 16, seed=1)  # 51 rows of 16, the last one ragged
    bucket, sign = sketch.buckets()
    assert bucket.shape == (sketch.features,) and set(np.unique(sign)) == {-1.0, 1.0}
    rows = np.arange(sketch.features) // 16
    for row in range(sketch.rows):
        in_row = bucket[rows == row]
        assert len(set(in_row)) == len(in_row)
    # Balanced shifts: the 51 rows spread over at most ceil(51 / 16) = 4 per shift.
    shifts = [bucket[rows == row][0] for row in range(sketch.rows)]  # column 0's bucket
    assert np.bincount(shifts, minlength=16).max() <= sketch.slots_per_shift


def test_squared_norms_are_unbiased_within_the_stated_variance_bound():
    """E‖Sx‖² = ‖x‖² and Var ‖Sx‖² <= (2/k)(1 + 1/(g·k - 1))‖x‖⁴ (module docstring), over
    400 seeds, for a spread-out vector and for one whose mass sits on a few features."""
    k, features = 32, 2048
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(features, generator=generator)
    spiky = torch.zeros(features)
    spiky[:8] = torch.tensor([5.0, -4.0, 3.0, 3.0, -2.0, 2.0, 1.0, 1.0])
    for x in (spread, spiky):
        ratios = np.array(
            [float(CountSketch(features, k, seed)(x[None]).square().sum()) for seed in range(400)]
        ) / float(x.square().sum())
        slots = CountSketch(features, k).slots_per_shift * k
        bound = 2 / k * (1 + 1 / (slots - 1))
        # Mean within 4 standard errors of 1; the sample variance of 400 draws is within
        # ~7 % of the true one (one standard error), so 30 % of slack is 4 of them.
        assert abs(ratios.mean() - 1) < 4 * np.sqrt(bound / len(ratios))
        assert ratios.var() < 1.3 * bound


def test_a_sketch_is_the_same_bits_on_every_call_and_seeded():
    x = torch.randn(2, 4096)
    a, b = CountSketch(4096, 64, 7), CountSketch(4096, 64, 7)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x[:1]), a(x)[:1])
    assert not torch.equal(a(x), CountSketch(4096, 64, 8)(x))


def test_vectors_no_wider_than_the_sketch_are_kept_whole():
    sketch = CountSketch(49, 64)
    x = torch.randn(2, 7, 7)
    assert sketch.exact and sketch.out_features == 49
    assert torch.equal(sketch(x), x.reshape(2, 49))
