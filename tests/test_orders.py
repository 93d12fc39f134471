"""Tests for mambapanel.orders: patch orders (scan routes) over H x W patch grids."""

from __future__ import annotations

import pytest
import torch

from mambapanel import orders

SIZES = [(56, 56), (28, 28), (14, 14), (7, 7), (5, 9), (9, 5), (1, 6), (6, 1), (3, 3), (1, 1)]
BUILTINS = ["cross", "bidirectional", "diagonal", "morton", "spiral", "hilbert", "snake", "random"]
EXPECTED_K = {"bidirectional": 2}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register orders without leaking them (or stale cache entries) to others."""
    monkeypatch.setattr(orders, "_REGISTRY", dict(orders._REGISTRY))
    orders._cached_routes.cache_clear()
    yield
    orders._cached_routes.cache_clear()


def step_distances(route: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|d row| and |d col| between consecutive steps of a route (L,)."""
    rows, cols = route // width, route % width
    return rows.diff().abs(), cols.diff().abs()


def non_adjacent_steps(route: torch.Tensor, width: int) -> torch.Tensor:
    dr, dc = step_distances(route, width)
    return (dr + dc) != 1


def hilbert_needs_diagonal(height: int, width: int) -> bool:
    # Parity: a corner-to-corner path along an odd long side needs an odd short side; gilbert
    # handles a short side of 2 anyway, so the one forced diagonal appears from 4 upwards.
    lo, hi = min(height, width), max(height, width)
    return hi % 2 == 1 and lo % 2 == 0 and lo >= 4


# --- every built-in order: shape, dtype, permutation ------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_routes_are_permutations(name, size):
    height, width = size
    n = height * width
    rts = orders.routes(name, height, width)
    assert rts.dtype == torch.int64
    assert rts.shape == (EXPECTED_K.get(name, 4), n)
    for row in rts:
        assert torch.equal(row.sort().values, torch.arange(n))


def test_available_lists_all_builtins():
    assert set(BUILTINS) <= set(orders.available())
    assert orders.available() == sorted(orders.available())


# --- cross / bidirectional and the path -> four routes machinery ------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cross_matches_official_cross_scan(size):
    height, width = size
    x = torch.arange(height * width).view(height, width)
    official = torch.stack([x.flatten(), x.t().flatten()])
    official = torch.cat([official, official.flip(-1)])
    assert torch.equal(orders.routes("cross", height, width), official)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bidirectional_is_row_major_and_reverse(size):
    height, width = size
    r0 = torch.arange(height * width)
    assert torch.equal(orders.routes("bidirectional", height, width), torch.stack([r0, r0.flip(0)]))


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_row_major_path_reproduces_cross(size):
    orders.register("row_major_path", lambda h, w: list(range(h * w)))
    assert torch.equal(orders.routes("row_major_path", *size), orders.routes("cross", *size))


@pytest.mark.parametrize("name", [n for n in BUILTINS if n not in ("cross", "bidirectional")])
@pytest.mark.parametrize("size", [(5, 9), (7, 7), (1, 6)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_path_orders_follow_cross_layout(name, size):
    height, width = size
    rts = orders.routes(name, height, width)
    assert torch.equal(rts[2], rts[0].flip(0))
    assert torch.equal(rts[3], rts[1].flip(0))
    # Route 1 is route 0 of the transposed grid with (r', c') sent back to (row=c', col=r').
    q_t = orders.routes(name, width, height)[0]
    assert torch.equal(rts[1], (q_t % height) * width + q_t // height)
    assert torch.equal(orders.single_route(name, height, width), rts[0])


# --- locality of the path orders --------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["snake", "spiral"])
def test_snake_and_spiral_steps_are_4_neighbours(name, size):
    height, width = size
    for row in orders.routes(name, height, width):
        assert not non_adjacent_steps(row, width).any()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hilbert_steps_are_4_neighbours_on_standard_sizes(size):
    height, width = size
    assert not hilbert_needs_diagonal(height, width)  # none of these sizes hits the caveat
    for row in orders.routes("hilbert", height, width):
        assert not non_adjacent_steps(row, width).any()


@pytest.mark.parametrize("height", range(1, 13))
@pytest.mark.parametrize("width", range(1, 13))
def test_hilbert_diagonal_step_only_where_parity_forces_it(height, width):
    route = orders.single_route("hilbert", height, width)
    dr, dc = step_distances(route, width)
    assert bool((dr <= 1).all() and (dc <= 1).all())  # at worst a king move, never a jump
    expected = 1 if hilbert_needs_diagonal(height, width) else 0
    assert int(non_adjacent_steps(route, width).sum()) == expected


def test_small_paths_written_by_hand():
    # 2x2 Hilbert:  0 1   visits 0 -> 2 -> 3 -> 1 (down, right, up).
    #               2 3
    assert orders.single_route("hilbert", 2, 2).tolist() == [0, 2, 3, 1]
    # 3x4 spiral:   0  1  2  3   right along the top, down, left along the bottom, up, then in.
    #               4  5  6  7
    #               8  9 10 11
    assert orders.single_route("spiral", 3, 4).tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    # 3x3 spiral ends in the centre.
    assert orders.single_route("spiral", 3, 3).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    # 2x3 snake: row 0 left to right, row 1 right to left.
    assert orders.single_route("snake", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    # 3x3 diagonal: {0}, {1, 3}, {2, 4, 6}, {5, 7}, {8}, each by increasing row.
    assert orders.single_route("diagonal", 3, 3).tolist() == [0, 1, 3, 2, 4, 6, 5, 7, 8]
    # 3x3 Morton inside the 4x4 Z: the 2x2 block 0 1 3 4, then (0,2)=2, (1,2)=5, row 2.
    assert orders.single_route("morton", 3, 3).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]


# --- diagonal and morton ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_diagonal_visits_anti_diagonals_in_order(size):
    height, width = size
    rts = orders.routes("diagonal", height, width)
    for k, row in enumerate(rts):
        rows, cols = row // width, row % width
        s = (rows + cols).diff()
        assert bool((s >= 0).all()) if k < 2 else bool((s <= 0).all())
    # Within one anti-diagonal route 0 goes by strictly increasing row.
    rows, cols = rts[0] // width, rts[0] % width
    same = (rows + cols).diff() == 0
    assert bool((rows.diff()[same] == 1).all())


def bit_interleaved_key(row: int, col: int, nbits: int) -> int:
    """Morton key by string surgery: row bit then column bit, most significant level first."""
    rb, cb = format(row, f"0{nbits}b"), format(col, f"0{nbits}b")
    return int("".join(r + c for r, c in zip(rb, cb, strict=True)), 2)


@pytest.mark.parametrize("side", [2, 4, 8, 16])
def test_morton_on_power_of_two_grids_sorts_by_interleaved_key(side):
    nbits = side.bit_length() - 1
    cells = [(r, c) for r in range(side) for c in range(side)]
    expected = sorted(range(side * side), key=lambda i: bit_interleaved_key(*cells[i], nbits))
    assert orders.single_route("morton", side, side).tolist() == expected


@pytest.mark.parametrize("size", [(5, 9), (9, 5), (3, 3), (1, 6), (7, 7)])
def test_morton_on_other_grids_is_restricted_enclosing_order(size):
    height, width = size
    big = orders.single_route("morton", 16, 16)
    rows, cols = big // 16, big % 16
    inside = (rows < height) & (cols < width)
    expected = rows[inside] * width + cols[inside]
    assert torch.equal(orders.single_route("morton", height, width), expected)


# --- random -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(14, 14), (5, 9), (3, 3), (1, 6)])
def test_random_is_deterministic_and_not_row_major(size):
    first = orders.routes("random", *size)
    torch.manual_seed(12345)  # the global RNG must not leak into the order
    orders._cached_routes.cache_clear()
    again = orders.routes("random", *size)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], torch.arange(size[0] * size[1]))


@pytest.mark.parametrize("size", [(14, 14), (5, 9)])
def test_random_uses_seed_zero(size):
    n = size[0] * size[1]
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orders.single_route("random", *size), expected)


# --- inverse ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("size", [(5, 9), (7, 7), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_inverse_inverts_routes(name, size):
    rts = orders.routes(name, *size)
    steps = orders.inverse(rts)
    identity = torch.arange(rts.shape[1]).expand_as(rts)
    assert steps.shape == rts.shape and steps.dtype == torch.int64
    assert torch.equal(rts.gather(1, steps), identity)
    assert torch.equal(steps.gather(1, rts), identity)


def test_inverse_small_case_by_hand():
    # Route [2, 0, 1] visits patch 0 at step 1, patch 1 at step 2, patch 2 at step 0.
    assert orders.inverse(torch.tensor([[2, 0, 1]])).tolist() == [[1, 2, 0]]


# --- API: get / routes / register -------------------------------------------------------------


def test_get_returns_route_builder():
    assert torch.equal(orders.get("spiral")(5, 9), orders.routes("spiral", 5, 9))


def test_unknown_name_lists_available():
    with pytest.raises(KeyError, match="hilbert") as info:
        orders.get("no-such-order")
    assert "no-such-order" in str(info.value)
    with pytest.raises(KeyError):
        orders.routes("no-such-order", 3, 3)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3"])
def test_routes_rejects_bad_grid_sizes(bad):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        orders.routes("cross", bad, 3)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        orders.routes("cross", 3, bad)


def test_routes_returns_independent_copies():
    rts = orders.routes("hilbert", 4, 4)
    rts.zero_()
    assert torch.equal(orders.routes("hilbert", 4, 4)[0].sort().values, torch.arange(16))


@pytest.mark.usefixtures("scratch_registry")
def test_register_column_major_path():
    orders.register("colmajor", lambda h, w: torch.arange(h * w).view(h, w).t().flatten())
    assert "colmajor" in orders.available()
    x = torch.arange(5 * 9).view(5, 9)
    col, row = x.t().flatten(), x.flatten()  # transposed column-major is row-major
    expected = torch.stack([col, row, col.flip(0), row.flip(0)])
    assert torch.equal(orders.get("colmajor")(5, 9), expected)
    assert torch.equal(orders.single_route("colmajor", 5, 9), col)


@pytest.mark.usefixtures("scratch_registry")
def test_register_two_dimensional_routes_used_as_is():
    orders.register("two", lambda h, w: torch.stack([torch.arange(h * w), torch.arange(h * w)]))
    rts = orders.routes("two", 3, 4)
    assert rts.shape == (2, 12)
    assert torch.equal(rts, torch.arange(12).expand(2, 12))


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize(
    ("fn", "what"),
    [
        (lambda h, w: [0] * (h * w), "more than once"),
        (lambda h, w: list(range(h * w - 1)), "length"),
        (lambda h, w: list(range(1, h * w + 1)), "out of range"),
        (
            lambda h, w: torch.stack([torch.arange(h * w), torch.zeros(h * w, dtype=torch.long)]),
            "more than once",
        ),
        (lambda h, w: torch.rand(h * w), "integers"),
    ],
    ids=["duplicate", "short", "out-of-range", "2d-duplicate", "float"],
)
def test_bad_custom_order_raises_on_first_use(fn, what):
    orders.register("broken", fn)  # validation is lazy: registering alone must succeed
    with pytest.raises(ValueError, match=what) as info:
        orders.routes("broken", 3, 4)
    message = str(info.value)
    assert "'broken'" in message and "3x4" in message


@pytest.mark.usefixtures("scratch_registry")
def test_bad_transposed_path_names_transposed_grid():
    # Valid on 3x4 but not on the transposed 4x3 grid needed for routes 1 and 3.
    orders.register("lopsided", lambda h, w: list(range(h * w)) if h == 3 else [0] * (h * w))
    with pytest.raises(ValueError, match="'lopsided' on grid 4x3"):
        orders.routes("lopsided", 3, 4)


@pytest.mark.usefixtures("scratch_registry")
def test_register_existing_name_requires_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        orders.register("cross", lambda h, w: list(range(h * w)))
    orders.routes("spiral", 3, 3)  # warm the cache so overwriting must invalidate it
    orders.register("spiral", lambda h, w: list(range(h * w)), overwrite=True)
    assert torch.equal(orders.routes("spiral", 3, 3), orders.routes("cross", 3, 3))


@pytest.mark.usefixtures("scratch_registry")
def test_register_rejects_non_callable():
    with pytest.raises(TypeError, match="callable"):
        orders.register("nope", [0, 1, 2])
