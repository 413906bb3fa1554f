"""Each metric of mindreader.metrics against a direct reference computation on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from mindreader import metrics
from mindreader.evaluation.bootstrap import half_sample_ci, half_samples, mean_ci, percentile_ci, ratio_ci, resamples
from mindreader.evaluation.fid_reference import pytorch_fid_frechet_distance


def _gaussian_features(rng, n, d, shift=0.0):
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + shift


def _reference_trace_sqrt(sigma1, sigma2):
    # tr(sqrtm(S1 S2)) from the (real, non-negative) eigenvalues of the non-symmetric product
    evals = np.linalg.eigvals(sigma1 @ sigma2).real
    return np.sqrt(np.clip(evals, 0, None)).sum()


def test_frechet_distance_agrees_with_pytorch_fid_on_full_rank_covariances():
    rng = np.random.default_rng(0)
    x, y = _gaussian_features(rng, 400, 24), _gaussian_features(rng, 400, 24, shift=0.3)
    stats = (*metrics.feature_stats(x), *metrics.feature_stats(y))
    ours, theirs = metrics.frechet_distance(*stats), pytorch_fid_frechet_distance(*stats)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_frechet_distance_closed_form_in_one_dimension():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_is_exact_and_finite_for_singular_covariances():
    rng = np.random.default_rng(1)
    x, y = _gaussian_features(rng, 12, 40), _gaussian_features(rng, 15, 40, shift=0.5)  # rank < d
    mu1, s1 = metrics.feature_stats(x)
    mu2, s2 = metrics.feature_stats(y)
    assert np.linalg.matrix_rank(s1) < 40
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * _reference_trace_sqrt(s1, s2)
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours)
    assert ours == pytest.approx(expected, rel=1e-7)
    # the nuclear-norm route from the features themselves gives the same number
    assert metrics.frechet_distance_features(x, y) == pytest.approx(ours, rel=1e-9)
    assert metrics.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_feature_moments_over_batches_equal_numpy_mean_and_covariance():
    rng = np.random.default_rng(4)
    x = _gaussian_features(rng, 50, 6, shift=2.0)
    moments = metrics.FeatureMoments(6)
    for start in range(0, 50, 16):
        moments.add(x[start : start + 16])
    assert moments.n == 50
    for ddof in (0, 1):
        mean, cov = moments.mean_cov(ddof)
        np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(cov, np.cov(x, rowvar=False, ddof=ddof), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="width"):
        moments.add(x[:, :5])


def test_feature_stats_needs_two_vectors_of_any_width():
    mean, cov = metrics.feature_stats(np.array([[1.0], [3.0]]))
    assert mean.tolist() == [2.0] and float(cov) == 2.0
    with pytest.raises(ValueError, match="at least 2"):
        metrics.feature_stats(np.ones((1, 5)))


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma2"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def _two_way_reference(gt, pred):
    n = len(gt)
    r = np.corrcoef(gt, pred)[:n, n:]
    return np.array([sum(r[i, j] < r[j, j] for i in range(n) if i != j) / (n - 1) for j in range(n)])


def test_two_way_identification_matches_the_definition():
    rng = np.random.default_rng(2)
    gt = rng.standard_normal((9, 30))
    pred = gt + rng.standard_normal((9, 30)) * 1.5
    np.testing.assert_allclose(metrics.two_way_per_image(gt, pred), _two_way_reference(gt, pred))


def test_two_way_identification_chance_and_perfect():
    rng = np.random.default_rng(3)
    gt = rng.standard_normal((300, 64))
    assert metrics.two_way_identification(gt, gt) == 1.0
    unrelated = metrics.two_way_identification(gt, rng.standard_normal((300, 64)))
    assert abs(unrelated - 0.5) < 0.05


def test_two_way_identification_scores_each_reconstruction_against_the_other_ground_truths():
    # Zero-mean orthogonal ground truths (pairwise r = 0). Reconstruction 0 is image 0. Reconstruction
    # 1 is image 0 too: r 0 with its own image 1, below image 0's r 1 and tied with image 2's r 0, so
    # it beats neither. Reconstruction 2 leans to image 2 (r 0.94) with some of image 1 (r 0.33).
    # r is not symmetric: read per ground truth instead of per reconstruction it gives [0.5, 0, 1].
    gt = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
    pred = np.stack([gt[0], gt[0], gt[2] + 0.5 * gt[1]])
    np.testing.assert_array_equal(metrics.two_way_per_image(gt, pred), [1.0, 0.0, 1.0])
    assert metrics.two_way_identification(gt, pred) == pytest.approx(2 / 3)


def test_correlation_distance_matches_corrcoef():
    rng = np.random.default_rng(4)
    gt, pred = rng.standard_normal((5, 20)), rng.standard_normal((5, 20))
    expected = [1 - np.corrcoef(a, b)[0, 1] for a, b in zip(gt, pred)]
    np.testing.assert_allclose(metrics.correlation_distance_per_image(gt, pred), expected)


def _images(rng, n, side):
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def test_pixcorr_matches_corrcoef_of_flattened_rgb():
    rng = np.random.default_rng(5)
    gt = _images(rng, 3, 24)
    rec = np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
    expected = [np.corrcoef(a.ravel() / 255.0, b.ravel() / 255.0)[0, 1] for a, b in zip(gt, rec)]
    np.testing.assert_allclose(metrics.pixcorr_per_image(gt, rec, side=24), expected, rtol=1e-5)


def test_pixcorr_of_a_flat_image_is_zero():
    rng = np.random.default_rng(11)
    gt = _images(rng, 2, 8)
    flat = np.full_like(gt, 128)
    np.testing.assert_array_equal(metrics.pixcorr_per_image(gt, flat, side=8), [0.0, 0.0])


def test_pixel_metrics_resize_to_the_evaluation_side():
    rng = np.random.default_rng(6)
    gt, rec = _images(rng, 2, 16), _images(rng, 2, 16)
    big_gt, big_rec = metrics.resize_images(gt, 40), metrics.resize_images(rec, 40)
    assert big_gt.shape == (2, 40, 40, 3)
    np.testing.assert_allclose(
        metrics.pixcorr_per_image(gt, rec, side=40), metrics.pixcorr_per_image(big_gt, big_rec, side=40), rtol=1e-6
    )


def _skimage_ssim(gt, rec) -> list[float]:
    """scikit-image's true 2-D SSIM of each pair: grayscale, Gaussian weights, sigma 1.5, no sample
    covariance, data range 1 (evaluation.md)."""
    return [
        structural_similarity(
            rgb2gray(a / 255.0),
            rgb2gray(b / 255.0),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for a, b in zip(gt, rec)
    ]


def test_ssim_matches_scikit_image_true_2d_ssim():
    rng = np.random.default_rng(7)
    gt = _images(rng, 3, 48)
    rec = np.clip(gt.astype(int) + rng.integers(-80, 80, gt.shape), 0, 255).astype(np.uint8)
    expected = _skimage_ssim(gt, rec)
    np.testing.assert_allclose(metrics.ssim_per_image(gt, rec, side=48), expected, rtol=1e-6)
    assert metrics.ssim_per_image(gt, gt, side=48) == pytest.approx(1.0)


def test_ssim_matches_scikit_image_on_dark_images():
    # Dark images: the local means are near 0, where SSIM's stabilising constants C1 = (0.01)^2 and
    # C2 = (0.03)^2 decide the score (on mid-grey images they hardly matter).
    rng = np.random.default_rng(12)
    gt = rng.integers(0, 12, size=(2, 32, 32, 3), dtype=np.uint8)
    rec = rng.integers(0, 12, size=(2, 32, 32, 3), dtype=np.uint8)
    expected = _skimage_ssim(gt, rec)
    np.testing.assert_allclose(metrics.ssim_per_image(gt, rec, side=32), expected, rtol=1e-6)


def test_ssim_compares_at_425_by_default():
    # Pixel noise and its blur at 32 px: SSIM's 11-pixel Gaussian window sees single pixels at
    # 32 px but 13-pixel blocks at 425 px, so the score depends on the side.
    rng = np.random.default_rng(8)
    gt = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    rec = scipy.ndimage.gaussian_filter(gt.astype(float), sigma=(0, 1, 1, 0)).astype(np.uint8)

    def skimage_ssim(a, b, side):
        def resized(x):  # antialiased bilinear, once, straight to the side
            t = torch.from_numpy(x / 255.0).permute(0, 3, 1, 2)
            t = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", antialias=True)
            return t.clamp(0, 1).permute(0, 2, 3, 1).numpy()

        ra, rb = resized(a), resized(b)
        return np.mean(
            [
                structural_similarity(
                    rgb2gray(x), rgb2gray(y), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
                )
                for x, y in zip(ra, rb)
            ]
        )

    at_425, at_32 = skimage_ssim(gt, rec, 425), skimage_ssim(gt, rec, 32)
    assert abs(at_425 - at_32) > 0.05  # the side matters for these images
    assert metrics.EVAL_SIDE == 425
    assert metrics.ssim(gt, rec) == pytest.approx(at_425, abs=1e-4)


def test_retrieval_perfect_and_chance():
    rng = np.random.default_rng(9)
    target = rng.standard_normal((120, 16))
    hits = metrics.retrieval_hits(target * 2.0, target, pool_size=50, draws=10, seed=0)
    assert hits["appearances"].sum() == 500
    assert (hits["image"] == hits["appearances"]).all() and (hits["brain"] == hits["appearances"]).all()
    random = metrics.retrieval_hits(rng.standard_normal((120, 16)), target, pool_size=50, draws=200, seed=0)
    assert random["image"].sum() / random["appearances"].sum() == pytest.approx(1 / 50, abs=0.01)


def test_retrieval_directions_differ_on_an_asymmetric_pool():
    # Both predictions lie nearest image 0, so brain -> image misses image 1; image 1 is still
    # nearest its own prediction (cos 0.37 vs 0.20), so image -> brain finds it.
    target = np.array([[1.0, 0.0], [0.0, 1.0]])
    pred = np.array([[1.0, 0.2], [1.0, 0.4]])
    hits = metrics.retrieval_hits(pred, target, pool_size=2, draws=3, seed=0)
    assert hits["appearances"].tolist() == [3, 3]
    assert hits["image"].tolist() == [3, 0]
    assert hits["brain"].tolist() == [3, 3]


def test_bootstrap_ci_brackets_the_value_and_is_reproducible():
    rng = np.random.default_rng(10)
    scores = rng.random(200)
    first, again = mean_ci(scores, 500, seed=1), mean_ci(scores, 500, seed=1)
    assert first == again
    lo, hi = first["ci95"]
    assert lo < first["value"] < hi
    assert hi - lo == pytest.approx(2 * 1.96 * scores.std() / np.sqrt(200), rel=0.25)
    ratio = ratio_ci(np.array([1, 2, 0, 3]), np.array([2, 2, 2, 4]), 100, seed=0)
    assert ratio["value"] == pytest.approx(6 / 10)


def test_percentile_ci_is_the_central_95_percent():
    # On 0, 1, ..., 1000 the 2.5th and 97.5th percentiles are 25 and 975 (90 %: 50 and 950).
    assert percentile_ci(np.arange(1001)) == pytest.approx([25.0, 975.0])


def test_bootstrap_cis_are_percentiles_of_the_statistic_over_resampled_images():
    rng = np.random.default_rng(13)
    scores, hits, seen = rng.random(30), rng.integers(0, 3, 30), rng.integers(1, 4, 30)
    idx = resamples(30, 400, seed=5)
    assert idx.shape == (400, 30) and set(idx.ravel()) == set(range(30))

    mean = mean_ci(scores, 400, seed=5)
    assert mean["value"] == pytest.approx(scores.mean())
    assert mean["ci95"] == pytest.approx(np.percentile(scores[idx].mean(axis=1), [2.5, 97.5]))
    ratio = ratio_ci(hits, seen, 400, seed=5)
    assert ratio["value"] == pytest.approx(hits.sum() / seen.sum())
    assert ratio["ci95"] == pytest.approx(np.percentile(hits[idx].sum(axis=1) / seen[idx].sum(axis=1), [2.5, 97.5]))


def test_half_sample_cis_are_the_halves_percentiles_centred_on_the_value():
    scores = np.random.default_rng(13).random(31)
    halves = half_samples(31, 300, seed=5)
    assert halves.shape == (300, 15) and all(len(set(h)) == 15 for h in halves)  # without replacement
    median = half_sample_ci(lambda i: np.median(scores[i]), 31, 300, seed=5)
    replicates = np.array([np.median(scores[h]) for h in halves])
    assert median["value"] == pytest.approx(np.median(scores))
    expected = np.median(scores) + np.percentile(replicates - replicates.mean(), [2.5, 97.5])
    assert median["ci95"] == pytest.approx(expected)
    # a mean's half-sampling interval has the width of the N-image mean's (s^2 (1/m - 1/N) = s^2/N)
    many = np.random.default_rng(3).normal(size=400)
    lo, hi = half_sample_ci(lambda i: many[i].mean(), 400, 2000, seed=1)["ci95"]
    assert hi - lo == pytest.approx(2 * 1.96 * many.std() / np.sqrt(400), rel=0.1)


def test_a_frechet_distances_interval_contains_its_value_and_the_n_image_expectation():
    # Paired features from one distribution, 40 images in 24 dimensions: the Frechet distance of N
    # images is dominated by its finite-sample bias. The percentile bootstrap's resamples duplicate
    # images and inflate it further: its interval lies wholly above the value (the failure this
    # replaces). The half-sampling interval holds the value, and the N-image distance's mean over
    # fresh draws of the test set in most trials.
    rng = np.random.default_rng(0)
    n, dim = 40, 24
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)

    def draw():
        x = rng.normal(size=(n, dim))
        return x, 0.5 * x @ mixing + rng.normal(size=(n, dim))

    values, half, percentile = [], [], []
    for _ in range(16):
        x, y = draw()
        fd = lambda i: metrics.frechet_distance_features(x[i], y[i])  # noqa: E731
        values.append(fd(np.arange(n)))
        half.append(half_sample_ci(fd, n, 100, seed=1)["ci95"])
        percentile.append(percentile_ci([fd(i) for i in resamples(n, 100, seed=1)]))
    values, half, percentile = np.array(values), np.array(half), np.array(percentile)
    expectation = np.mean([metrics.frechet_distance_features(*draw()) for _ in range(100)])
    assert (percentile[:, 0] > values).all()
    assert ((half[:, 0] <= values) & (values <= half[:, 1])).all()
    assert ((half[:, 0] <= expectation) & (expectation <= half[:, 1])).mean() >= 0.8


def test_a_ratio_over_no_appearances_is_zero():
    assert ratio_ci(np.zeros(3), np.zeros(3), 50, seed=0) == {"value": 0.0, "ci95": [0.0, 0.0]}
    # a resample of only the unseen image has no appearances: its replicate is 0, not NaN
    ratio = ratio_ci(np.array([0, 1]), np.array([0, 1]), 200, seed=0)
    assert ratio["value"] == 1.0 and ratio["ci95"] == [0.0, 1.0]


def test_scipy_sqrtm_is_left_unpatched_by_the_reference():
    before = scipy.linalg.sqrtm
    pytorch_fid_frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2) * 2)
    assert scipy.linalg.sqrtm is before


def test_pixel_metrics_resize_through_the_via_sides_in_turn():
    # evaluation.pixel_resize_via [48]: both images to 48 px, then to the comparison side; not the
    # same numbers as one straight resize (caught: via ignored).
    rng = np.random.default_rng(4)
    gt, rec = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for per_image in (metrics.pixcorr_per_image, metrics.ssim_per_image):
        two_steps = per_image(metrics.resize_images(gt, 48), metrics.resize_images(rec, 48), 80)
        assert per_image(gt, rec, 80, via=(48,)) == pytest.approx(two_steps, abs=1e-6)
        assert per_image(gt, rec, 80) != pytest.approx(two_steps, abs=1e-3)
