"""Smooth displacement fields: interpolation, inverse, fitting from noisy matched points."""

import numpy as np
import pytest

from sthelar_platform.core.displacement import DisplacementField, fit_field, random_field


def _field() -> DisplacementField:
    return random_field(np.zeros(2), np.array([1400.0, 1300.0]), 2.0, 1.0, 400.0, np.random.default_rng(3))


def test_a_random_field_is_smooth_and_larger_at_the_edge():
    f = _field()
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [1400, 1300], (4000, 2))
    d = np.linalg.norm(f.at(pts), axis=1)
    centre = np.linalg.norm(pts - [700, 650], axis=1) < 300
    edge = (np.minimum(pts, [1400, 1300] - pts).min(1)) < 100
    assert 1.0 < np.sqrt((d[centre] ** 2).mean()) < 3.5 and np.sqrt((d[edge] ** 2).mean()) > np.sqrt((d[centre] ** 2).mean())
    near = np.linalg.norm(f.at(pts) - f.at(pts + [5.0, 0.0]), axis=1)  # 5 µm apart: nearly the same displacement
    assert np.percentile(near, 99) < 0.2


def test_inverse_undoes_forward_and_the_field_survives_json():
    f = _field()
    pts = np.random.default_rng(1).uniform([0, 0], [1400, 1300], (500, 2))
    assert np.abs(f.inverse(f.forward(pts)) - pts).max() < 0.01
    g = DisplacementField.from_dict(f.to_dict())
    assert np.abs(g.at(pts) - f.at(pts)).max() < 1e-3


def test_fitting_recovers_a_field_from_noisy_pairs_with_outliers():
    truth = _field()
    rng = np.random.default_rng(2)
    q = rng.uniform([0, 0], [1400, 1300], (6000, 2))
    target = truth.forward(q) + rng.normal(0, 0.3, q.shape)
    target[:300] += rng.uniform(-6, 6, (300, 2))   # 5 % wrong pairs
    fitted = fit_field(q, target, spacing_um=100, min_pairs=8)
    err = np.linalg.norm(fitted.at(q[300:]) - truth.at(q[300:]), axis=1)
    assert np.median(err) < 0.3 and np.percentile(err, 90) < 0.6
    assert np.median(np.linalg.norm(truth.at(q), axis=1)) > 1.5  # the field was there to be found


def test_no_pairs_means_no_correction():
    f = fit_field(np.array([[10.0, 10.0]]), np.array([[12.0, 10.0]]), spacing_um=100, min_pairs=8)
    assert f.magnitude_um().max() == pytest.approx(0.0)
