"""The statistics behind tools/compare.py: summaries, t and percentile intervals, verdicts, the
greedy proposal matching of average recall, and the paired bootstrap over images."""
import numpy as np
import pytest
import torch
from scipy.stats import t as scipy_t

from focal_rpn.comparison import bootstrap, stats
from focal_rpn.evaluation.proposal_recall import (
    AREA_RANGES, IOU_THRESHOLDS, LIMITS, average_recall, greedy_matched_ious, image_recall_counts,
)


def test_summary_is_mean_and_sample_std_of_present_values():
    s = stats.summarize([1.0, None, 2.0, 3.0, float("nan")])
    assert s == {"n": 3, "mean": 2.0, "std": 1.0}
    assert stats.summarize([5.0]) == {"n": 1, "mean": 5.0, "std": None}
    assert stats.summarize([None]) == {"n": 0, "mean": None, "std": None}


def test_t_interval_uses_students_quantile():
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    # t(0.975, df 2) = 4.3027 (tables); std 1, n 3
    assert (lo, hi) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-3)
    assert stats.t_interval([1.0]) is None


def test_paired_difference_pairs_by_seed_and_skips_missing_pairs():
    d = stats.paired_difference([10.0, 20.0, None], [11.0, 23.0, 5.0])
    assert d["per_seed"] == [1.0, 3.0, None] and d["n"] == 2 and d["mean"] == 2.0
    with pytest.raises(ValueError, match="one per seed"):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_percentile_interval_matches_numpy():
    reps = list(np.random.default_rng(0).normal(size=301))
    assert stats.percentile_interval(reps) == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))


@pytest.mark.parametrize("intervals,expected", [
    ([[0.1, 2.0]], "higher"),
    ([[0.1, 2.0], [0.5, 1.0]], "higher"),
    ([[-2.0, -0.1], None], "lower"),
    ([[-0.1, 2.0]], "no difference detectable with 3 seeds"),
    ([[0.1, 2.0], [-0.5, 1.0]], "no difference detectable with 3 seeds"),  # one interval holds 0
    ([[0.1, 2.0], [-2.0, -1.0]], "no difference detectable with 3 seeds"),  # disagreeing sides
    ([None, None], "no difference detectable with 3 seeds"),
])
def test_verdict_calls_a_direction_only_when_every_interval_excludes_zero(intervals, expected):
    assert stats.verdict(intervals, 3) == expected
    assert stats.verdict([[-1, 1]], 1) == "no difference detectable with 1 seed"


def test_greedy_matching_takes_the_best_pair_first_not_each_boxs_best():
    iou = torch.tensor([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0]])
    # box 0 takes proposal 0 (0.9); box 1 is left with proposal 1 (0.1), not its best 0.85
    assert greedy_matched_ious(iou).tolist() == pytest.approx([0.9, 0.1])


def test_recall_counts_use_only_the_first_n_proposals_per_area():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 150.0, 150.0]])  # small, large
    areas = torch.tensor([100.0, 10000.0], dtype=torch.float64)
    proposals = torch.tensor([[50.0, 50.0, 150.0, 150.0], [0.0, 0.0, 10.0, 11.0]])  # large first
    counts = image_recall_counts(gt, areas, proposals)
    areas_index = list(AREA_RANGES)
    assert counts["num_gt"] == [2, 1, 0, 1]
    at1, at2 = LIMITS.index(1), LIMITS.index(2)
    all_ = counts["matched"][areas_index.index("all")]
    assert all_[at1] == [1] * len(IOU_THRESHOLDS)  # only the large box is covered by proposal 1
    # the small box with the second proposal: IoU 100/110 = 0.909 (>= 0.9, < 0.95)
    assert all_[at2] == [2] * 9 + [1]
    ar = average_recall([counts])
    assert ar["AR@1"] == pytest.approx(50.0) and ar["ARl@1"] == pytest.approx(100.0)
    assert ar["ARs@1"] == pytest.approx(0.0) and np.isnan(ar["ARm@1"])


def _tiny_coco():
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns, dets = [], []
    for i in (1, 2, 3):
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0})
        # image 3's detection is wrong (and ranked below the right ones)
        box, score = ([10, 10, 40, 40], 0.9) if i != 3 else ([60, 60, 30, 30], 0.5)
        dets.append({"image_id": i, "category_id": 1, "bbox": box, "score": score})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    return gt, dets


def test_resampled_images_count_as_often_as_drawn():
    gt, dets = _tiny_coco()
    assert bootstrap.box_ap(gt, dets)["AP50"] == pytest.approx(100 * 2 / 3, abs=1)
    per_image = {d["image_id"]: [d] for d in dets}
    twice_good = bootstrap.box_ap(*bootstrap.resample_coco(gt, per_image, [1, 1, 2]))
    assert twice_good["AP50"] == pytest.approx(100.0)
    rs_gt, rs_dets = bootstrap.resample_coco(gt, per_image, [3, 3, 1])
    assert [im["id"] for im in rs_gt["images"]] == [1, 2, 3]
    assert len(rs_gt["annotations"]) == 3 and len({a["id"] for a in rs_gt["annotations"]}) == 3
    assert bootstrap.box_ap(rs_gt, rs_dets)["AP50"] == pytest.approx(100 / 3, abs=1)


def test_bootstrap_of_the_identity_draw_is_the_full_evaluation():
    gt, dets = _tiny_coco()
    identity = np.array([[0, 1, 2]])
    assert bootstrap.bootstrap_box_ap(gt, {"m": dets}, identity)["m"][0] == pytest.approx(bootstrap.box_ap(gt, dets))
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    images = [dict(image_recall_counts(box, torch.tensor([100.0], dtype=torch.float64), box), image_id=i)
              for i in (1, 2)] + [dict(image_recall_counts(box, torch.tensor([100.0], dtype=torch.float64),
                                                           box + 50), image_id=3)]
    rec = bootstrap.bootstrap_recall({"m": images}, [1, 2, 3], identity)["m"][0]
    assert rec == pytest.approx(average_recall(images), nan_ok=True)
    assert rec["AR@100"] == pytest.approx(100 * 2 / 3)


def test_detectable_difference_is_the_80_percent_power_distance_at_the_seeds_spread():
    diffs = [1.0, 3.0, -1.0, 2.0]
    n, sd = 4, np.std(diffs, ddof=1)
    expected = (scipy_t.ppf(0.975, n - 1) + scipy_t.ppf(0.8, n - 1)) * sd / np.sqrt(n)
    assert stats.detectable_difference(diffs) == pytest.approx(expected)
    # simulated: a true difference of that size is found in about 80% of comparisons
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(4000):
        sample = rng.normal(expected, sd, size=n)
        lo, hi = stats.t_interval(sample)
        found += lo > 0 or hi < 0
    assert 0.75 < found / 4000 < 0.85
    assert stats.detectable_difference([2.0]) is None


def test_seeds_needed_is_the_first_count_whose_detectable_difference_is_small_enough():
    diffs = [0.0, 4.0, -2.0]  # sd 3.06
    n = stats.seeds_needed(diffs, 2.0)
    sd = np.std(diffs, ddof=1)

    def detectable(k):
        return (scipy_t.ppf(0.975, k - 1) + scipy_t.ppf(0.8, k - 1)) * sd / np.sqrt(k)

    assert detectable(n) <= 2.0 < detectable(n - 1)
    assert stats.seeds_needed([5.0, 5.0], 2.0) == 2  # no spread: two seeds settle it
    assert stats.seeds_needed([0.0, 40.0], 0.1, most=50) == 51  # more than 50


def test_hierarchical_interval_resamples_seeds_and_keeps_complete_seed_columns():
    table = [[1.0, 3.0, None], [2.0, 4.0, 9.0]]  # seed 2 missing in one resample: left out
    picks = np.random.default_rng(1).integers(0, 2, size=(2, 2))
    d = np.array([[1.0, 3.0], [2.0, 4.0]])
    reps = np.take_along_axis(d, picks, axis=1).mean(axis=1)
    assert stats.hierarchical_interval(table) == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))
    # one seed: nothing to draw among, the interval is the images' alone
    single = [[v] for v in np.linspace(-1, 1, 41)]
    assert stats.hierarchical_interval(single) == pytest.approx([-0.95, 0.95])
    assert stats.hierarchical_interval([]) is None
