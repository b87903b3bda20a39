"""The Fourier-domain density maps of the registration search: sizes, smoothing, norms and shifts."""

import numpy as np
import pytest
from scipy import ndimage

from sthelar_platform.registration import _density as density


def _prime_factors(n: int) -> set[int]:
    out, p = set(), 2
    while n > 1:
        while n % p == 0:
            out.add(p)
            n //= p
        p += 1
    return out


@pytest.mark.parametrize("side", [1123 * 2, 449 * 10, 1224, 61])
def test_grid_sides_have_only_small_prime_factors(side):
    rows, cols = density.fast_shape((side, side + 1))
    assert rows >= side and cols >= side + 1
    assert _prime_factors(rows) <= {2, 3, 5} and _prime_factors(cols) <= {2, 3, 5}


@pytest.mark.parametrize("shape", [(60, 80), (61, 75)])
def test_smoothed_spectrum_is_the_blurred_map_without_its_mean(shape):
    hist = np.random.default_rng(0).poisson(0.5, shape).astype(np.float32)
    spec = density.smoothed_spectrum(hist, density.gaussian_transfer(shape, 1.0))
    blurred = ndimage.gaussian_filter(hist, 1.0, mode="wrap")
    blurred -= blurred.mean()
    assert np.abs(np.fft.irfft2(spec, s=shape) - blurred).max() < 0.01
    assert density.spectrum_norm(spec, shape[1]) == pytest.approx(np.linalg.norm(blurred), rel=1e-3)


def test_histogram_counts_points_per_bin_and_drops_those_outside():
    pts = np.array([[0.5, 0.5], [1.5, 0.5], [1.6, 0.7], [-0.1, 0.0], [0.0, 3.5]])
    hist = density.histogram(pts, np.zeros(2), (3, 2), 1.0)
    assert hist.tolist() == [[1, 2], [0, 0], [0, 0]]


def test_cross_correlation_peaks_at_the_shift():
    rng = np.random.default_rng(1)
    shape = (64, 90)
    pts = rng.uniform(10, 50, (300, 2))
    transfer = density.gaussian_transfer(shape, 1.0)
    ref = density.smoothed_spectrum(density.histogram(pts + [7, -4], np.zeros(2), shape, 1.0), transfer)
    img = density.smoothed_spectrum(density.histogram(pts, np.zeros(2), shape, 1.0), transfer)
    dy, dx = np.unravel_index(int(np.argmax(density.cross_correlation(ref, img, shape))), shape)
    assert (dx, dy - shape[0]) == (7, -4)
