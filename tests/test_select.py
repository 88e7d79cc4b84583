"""Query strategies on constructed pools with known answers."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from committee_calc.analysis import select as sel
from committee_calc.descriptors import pair_fingerprint, standardise, structure_descriptors
from committee_calc.errors import ConfigError


def test_fps_on_a_line():
    X = np.arange(10.0)[:, None]
    # 0 -> 9 (farthest) -> 4 (tie 4/5, lowest index) -> 2 (tie 2/6/7) -> 6
    assert sel.farthest_point_sampling(X, 5) == [0, 9, 4, 2, 6]
    assert sel.farthest_point_sampling(X, 3, start=5) == [5, 0, 9]


def test_fps_seeded_by_lowest_energy():
    X = np.arange(5.0)[:, None]
    assert sel.fps(X, 2, energy=[3, 2, 1, 0.5, 4])[0] == 3
    assert sel.fps(X, 2, energy=[3, 2, 1, 0.5, 4])[1] == 0


def test_highest_uncertainty_window():
    s = [0.1, 0.5, 0.3, 0.9, np.nan]
    assert sel.highest_uncertainty(s, 2) == [4, 3]          # NaN counts as infinitely uncertain
    assert sel.highest_uncertainty(s, 5, lower=0.2, upper=0.8) == [1, 2]


def test_highest_uncertainty_fps_seeded_by_most_uncertain():
    X = np.array([[0.0], [0.1], [5.0], [10.0], [10.1]])
    s = np.array([0.9, 0.8, 0.05, 0.7, 0.6])
    got = sel.highest_uncertainty_fps(s, X, 3, threshold=0.5)
    assert got[0] == 0 and got[1] in (3, 4) and 2 not in got
    assert sel.highest_uncertainty_fps(s, X, 3, threshold=1.0) == []


def test_random_above_threshold_and_random_selection():
    s = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    got = sel.random_above_threshold(s, 10, 0.5, rng=1)
    assert sorted(got) == [1, 3, 4]
    r = sel.random_selection(20, 5, np.random.default_rng(0))
    assert len(set(r)) == 5 and all(0 <= i < 20 for i in r)


def test_expected_improvement_by_hand():
    mu, sigma, best, window = np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.0, 1.0]), 0.8, 0.2
    t = best + window
    z = (t - mu[2]) / sigma[2]
    by_hand = (t - mu[2]) * norm.cdf(z) + sigma[2] * norm.pdf(z)
    ei = sel.expected_improvement(mu, sigma, best, window)
    assert ei[0] == pytest.approx(0.5 / math.sqrt(2 * math.pi))   # mu == target: sigma*phi(0)
    assert ei[1] == pytest.approx(1.0)                            # sigma = 0: max(0, t - mu)
    assert ei[2] == pytest.approx(by_hand)


def test_probability_all_sampled():
    p = sel.prob_all_sampled([10.0, 10.0], [0.1, 0.1], best=0.0, window=0.1, unlabelled=[0, 1])
    assert p == pytest.approx(1.0)
    p = sel.prob_all_sampled([0.0], [1.0], best=0.0, window=0.0, unlabelled=[0])
    assert p == pytest.approx(0.5)


def test_kriging_believer_differs_from_top_k_ei():
    # two tight clusters of near-duplicate points: top-k EI takes both duplicates,
    # the believer update shrinks sigma around the first pick and moves on.
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (20, 3)), [[5, 5, 5], [5.001, 5, 5], [-5, -5, 5], [-5, -5, 5.001]]])
    y_all = X[:, 0] * 0.1
    fp = sel.ridge_rs_fit_predict(X, n_members=8, seed=0)
    lab = list(range(20))
    mu, s = fp(np.array(lab), y_all[lab])
    ei = sel.expected_improvement(mu, s, y_all[lab].min())
    ei[lab] = -np.inf
    topk = [int(i) for i in np.argsort(-ei)[:2]]
    kb = sel.kriging_believer(fp, lab, y_all[lab], 2)
    assert len(kb) == 2 and kb[0] == topk[0]
    assert kb != topk and not set(kb) <= set(lab)


def test_one_pick_per_dbscan_cluster():
    X = np.array([[0, 0], [0.1, 0], [0.05, 0.1], [10, 10], [10.1, 10], [20, 0]], float)
    energy = np.array([0.0, 1.0, 2.0, 0.5, 0.6, 3.0])
    fsig = np.array([0.1, 0.2, 0.3, 0.9, 0.1, 0.0])
    got = sel.energy_force_dbscan(energy, fsig, X, 5, eps=1.0)
    labels = sel.cluster_labels(X, eps=1.0)
    assert len(got) == 3 and len({labels[i] for i in got}) == 3
    assert got[0] == 3                      # low energy + highest force spread


def test_bad_n():
    with pytest.raises(ConfigError):
        sel.highest_uncertainty([1.0], 0)


def test_descriptors_invariant_and_shapes():
    from ase.build import bulk

    a = bulk("NaCl", "rocksalt", a=5.6)
    b = a.copy()
    b.translate([0.3, 0.1, 0.2])
    b.wrap()
    X = pair_fingerprint([a, b])
    assert X.shape == (2, 3 * 24) and np.allclose(X[0], X[1])
    S = structure_descriptors([a, b, bulk("NaCl", "rocksalt", a=6.0)])
    assert S.shape[0] == 3 and np.allclose(S[0], S[1], atol=1e-8) and not np.allclose(S[0], S[2])
    Z = standardise(S)
    assert np.allclose(Z.mean(0), 0, atol=1e-12)


def test_standardise_keeps_copies_of_one_minimum_identical():
    """Noise-level columns (copies of one relaxed minimum) are not blown up to unit variance, so
    clustering sees one structure; real differences still standardise to unit std."""
    from committee_calc.descriptors import standardise

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, size=24)
    copies = base + 1e-7 * rng.standard_normal((20, 24))
    Z = standardise(copies)
    assert np.abs(Z).max() < 1e-3
    distinct = np.vstack([copies, base + 0.3])
    assert np.ptp(standardise(distinct), axis=0).max() > 1.0
