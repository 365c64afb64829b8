"""Tiled processing must be seam-free, cover the frame exactly once and hold bounded memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from refscope.models.errors import ImageError
from refscope.models.tiling import TileBox, memory_bound_bytes, process_tiled, tile_plan


def _repeat(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _gauss_up(scale: int, mode: str = "reflect"):
    """Conv-like fn: Gaussian (sigma 1.5, radius 6) then pixel repeat; receptive-field radius 6."""

    def fn(image: np.ndarray) -> np.ndarray:
        return _repeat(ndimage.gaussian_filter(image, sigma=1.5, truncate=4.0, mode=mode), scale)

    return fn


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) / np.max(np.abs(b)))


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror"])
def test_tiled_equals_untiled_on_odd_shape(rng: np.random.Generator, scale: int, mode: str) -> None:
    image = rng.random((517, 389)) * 1000.0 + 50.0
    fn = _gauss_up(scale, mode)
    tiled = process_tiled(image, fn, scale=scale, tile=128, halo=8)
    untiled = fn(image.astype(np.float32))
    assert tiled.shape == (scale * 517, scale * 389)
    assert tiled.dtype == np.float32
    assert _rel_err(tiled, untiled) < 1e-4  # whatever the fn's own border rule


def test_borders_match_untiled_exactly_at_each_edge(rng: np.random.Generator) -> None:
    image = rng.random((300, 257)).astype(np.float32)
    fn = _gauss_up(2, "constant")  # zero padding, like a CNN: reflect-padded tiles would differ here
    tiled = process_tiled(image, fn, scale=2, tile=64, halo=7, dtype=np.float64)
    untiled = fn(image.astype(np.float64))
    for edge in (np.s_[:20, :], np.s_[-20:, :], np.s_[:, :20], np.s_[:, -20:]):
        assert np.allclose(tiled[edge], untiled[edge], rtol=1e-12, atol=1e-12)


def test_halo_smaller_than_receptive_field_shows_seams(rng: np.random.Generator) -> None:
    image = rng.random((200, 200))
    fn = _gauss_up(2)
    tiled = process_tiled(image, fn, scale=2, tile=64, halo=2)
    assert _rel_err(tiled, fn(image.astype(np.float32))) > 1e-3  # the equality test above is not vacuous


def test_frame_smaller_than_tile_is_one_untiled_call(rng: np.random.Generator) -> None:
    image = rng.random((40, 23))
    calls: list[tuple[int, int]] = []

    def fn(window: np.ndarray) -> np.ndarray:
        calls.append(window.shape)
        return _repeat(window, 2)

    out = process_tiled(image, fn, scale=2, tile=512, halo=16)
    assert calls == [(40, 23)]
    np.testing.assert_allclose(out, _repeat(image, 2), rtol=1e-6)


@pytest.mark.parametrize("shape,tile,halo", [((517, 389), 128, 8), ((100, 37), 16, 5), ((33, 300), 64, 0), ((7, 9), 2, 3)])
def test_tile_plan_partitions_frame_with_halo(shape: tuple[int, int], tile: int, halo: int) -> None:
    boxes = tile_plan(shape, tile, halo)
    height, width = shape
    assert len(boxes) == -(-height // tile) * -(-width // tile)
    coverage = np.zeros(shape, dtype=int)
    window_shapes = set()
    for box in boxes:
        assert isinstance(box, TileBox)
        cy0, cy1, cx0, cx1 = box.core
        wy0, wy1, wx0, wx1 = box.window
        coverage[cy0:cy1, cx0:cx1] += 1
        window_shapes.add((wy1 - wy0, wx1 - wx0))
        assert 0 <= wy0 <= cy0 < cy1 <= wy1 <= height and 0 <= wx0 <= cx0 < cx1 <= wx1 <= width
        assert cy1 - cy0 <= tile and cx1 - cx0 <= tile
        # halo of real context on each side, unless that side is the frame edge
        assert cy0 - wy0 >= halo or wy0 == 0
        assert wy1 - cy1 >= halo or wy1 == height
        assert cx0 - wx0 >= halo or wx0 == 0
        assert wx1 - cx1 >= halo or wx1 == width
        ry0, ry1, rx0, rx1 = box.crop
        assert (ry1 - ry0, rx1 - rx0) == (cy1 - cy0, cx1 - cx0)
    assert np.all(coverage == 1)
    assert window_shapes == {(min(height, tile + 2 * halo), min(width, tile + 2 * halo))}  # one shape for TensorRT


def test_fn_with_wrong_output_shape_is_reported(rng: np.random.Generator) -> None:
    with pytest.raises(ImageError, match="expected"):
        process_tiled(rng.random((50, 50)), lambda w: _repeat(w, 3), scale=2, tile=16, halo=4)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros(10), np.zeros((0, 5))])
def test_non_2d_or_empty_frame_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ImageError):
        process_tiled(bad, lambda w: w, scale=1)


@pytest.mark.parametrize("kwargs", [{"tile": 0}, {"halo": -1}, {"scale": 0}, {"tile": 2.5}])
def test_bad_parameters_are_refused(kwargs: dict) -> None:
    params = {"scale": 1, "tile": 8, "halo": 2, **kwargs}
    with pytest.raises(ValueError):
        process_tiled(np.zeros((10, 10)), lambda w: w, **params)


def test_memory_bound_formula() -> None:
    window = 512 + 2 * 16
    assert memory_bound_bytes(512, 16, 2) == 4 * (window**2 + (2 * window) ** 2)
    assert memory_bound_bytes(512, 16, 2, bytes_per_px=8) == 2 * memory_bound_bytes(512, 16, 2)
    with_output = memory_bound_bytes(512, 16, 2, shape=(8192, 8192))
    assert with_output - memory_bound_bytes(512, 16, 2) == 4 * 4 * 8192 * 8192  # 1 GiB output
    assert memory_bound_bytes(512, 16, 2) < 8 * 2**20  # a few MB per tile


def _peak_traced(image: np.ndarray, scale: int, tile: int, halo: int) -> tuple[int, np.ndarray]:
    fn = lambda w: _repeat(w, scale)  # noqa: E731 - allocates exactly its output
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = process_tiled(image, fn, scale=scale, tile=tile, halo=halo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out


def test_peak_memory_is_output_plus_a_few_tiles() -> None:
    image = np.arange(1536 * 1280, dtype=np.uint16).reshape(1536, 1280)
    peak, out = _peak_traced(image, scale=2, tile=128, halo=16)
    bound = memory_bound_bytes(128, 16, 2, shape=image.shape)
    # np.repeat in two steps holds one intermediate of half the fn output: allow one more tile of slack
    assert peak <= bound + memory_bound_bytes(128, 16, 2) + 64 * 1024
    assert peak < 1.1 * out.nbytes
    np.testing.assert_array_equal(out, _repeat(image, 2).astype(np.float32))


@pytest.mark.slow
def test_8192_frame_with_bounded_memory() -> None:
    image = np.zeros((8192, 8192), dtype=np.uint16)
    image[::7, ::5] = 1000
    peak, out = _peak_traced(image, scale=2, tile=512, halo=16)
    assert out.shape == (16384, 16384)
    assert peak <= memory_bound_bytes(512, 16, 2, shape=image.shape) + memory_bound_bytes(512, 16, 2)
    assert out[14, 10] == 1000 and out[16383, 16383] == 0


def test_aligned_windows_start_on_multiples_and_keep_the_halo():
    for shape, tile, halo, align in [((517, 389), 128, 8, 2), ((300, 301), 64, 5, 3), ((90, 77), 40, 7, 2)]:
        plan = tile_plan(shape, tile, halo, align=align)
        windows = {(b.window[1] - b.window[0], b.window[3] - b.window[2]) for b in plan}
        assert len(windows) == 1
        for box in plan:
            (cy0, cy1, cx0, cx1), (wy0, wy1, wx0, wx1) = box.core, box.window
            assert wy0 % align == 0 and wx0 % align == 0
            assert wy0 <= cy0 and wy1 >= cy1 and wx0 <= cx0 and wx1 >= cx1
            assert cy0 - wy0 >= halo or wy0 == 0
            assert wy1 - cy1 >= halo or wy1 == shape[0]
            assert cx0 - wx0 >= halo or wx0 == 0
            assert wx1 - cx1 >= halo or wx1 == shape[1]


def test_aligned_tiling_is_exact_for_a_function_with_an_origin_anchored_grid(rng):
    """fn samples every 2nd input pixel from its own origin: only aligned windows reproduce the untiled call."""
    def fn(x):
        coarse = ndimage.uniform_filter(x, 3, mode="nearest")[::2, ::2]
        return np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[: 2 * x.shape[0], : 2 * x.shape[1]]

    image = rng.random((130, 98))
    whole = fn(image)
    tiled = process_tiled(image, fn, scale=2, tile=32, halo=4, dtype=np.float64, align=2)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-12)
    misaligned = process_tiled(image, fn, scale=2, tile=31, halo=3, dtype=np.float64)
    assert not np.allclose(misaligned, whole)


@pytest.mark.parametrize("shape,max_tile,align", [((1024, 1536), 304, 1), ((1024, 1536), 160, 2), ((37, 900), 64, 3),
                                                  ((512, 512), 512, 1), ((100, 7), 16, 1)])
def test_balanced_tile_keeps_the_tile_count_and_computes_fewer_window_pixels(shape, max_tile, align):
    from refscope.models.tiling import balanced_tile

    tile = balanced_tile(shape, max_tile, align=align)
    assert tile <= max_tile and (tile % align == 0 or tile == max_tile)
    same = tile_plan(shape, max_tile, 5, align=align)
    even = tile_plan(shape, tile, 5, align=align)
    assert len(even) == len(same)

    def window_px(plan):
        return sum((b.window[1] - b.window[0]) * (b.window[3] - b.window[2]) for b in plan)

    assert window_px(even) <= window_px(same)
    # the result is the same stitched image for an exact function (here: pixel replication, radius 0)
    image = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(process_tiled(image, lambda w: np.kron(w, np.ones((2, 2), np.float32)), scale=2,
                                                tile=tile, halo=5, align=align), np.kron(image, np.ones((2, 2))))
