"""The tracking evaluation: simulated sequence, metrics, identity agreement, CLI.

The long measurements (several seeds, the real video, the node run, speed)
are not here: they are the commands in the tool's docstring.
"""
import json

import numpy as np
import pytest

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.tools import eval_tracking as et
from robot_vision_ros.tools.eval_tracking import FrameBoxes, SimConfig
from robot_vision_ros.tracking import TrackerConfig

SHORT = SimConfig(num_frames=240)


@pytest.fixture(scope="module")
def seq():
    return et.simulate_sequence(3, SHORT)


def test_sequence_is_deterministic_per_seed(seq):
    again = et.simulate_sequence(3, SHORT)
    other = et.simulate_sequence(4, SHORT)
    np.testing.assert_array_equal(seq.boxes_xyxy, again.boxes_xyxy)
    assert all(np.array_equal(a.boxes_xyxy, b.boxes_xyxy) and np.array_equal(a.scores, b.scores)
               for a, b in zip(seq.detections, again.detections))
    assert not np.allclose(seq.boxes_xyxy, other.boxes_xyxy)


def test_sequence_has_the_claimed_events(seq):
    props = et.sequence_properties(seq)
    assert props["crossings"] >= 2  # at least the two scripted pairs
    assert props["stops"] >= 2
    assert props["occlusions_by_objects"] >= 1 and props["occlusions_by_pillar"] >= 1
    assert 0.07 < props["drop_rate"] < 0.13
    assert props["false_positives"] > 20
    # Boxes stay inside the image; detections of visible objects only, noisy, scored 0.3..1.
    assert seq.boxes_xyxy.min() >= -1e-6 and seq.boxes_xyxy[..., 2].max() <= 1280 + 1e-6
    assert not (seq.detected & ~seq.visible).any()
    scores = np.concatenate([d.scores for d in seq.detections])
    assert scores.min() >= 0.3 and scores.max() <= 1.0
    fp = np.concatenate(seq.false_positive)
    assert len(scores) == seq.detected.sum() + fp.sum()
    # Partly hidden objects score lower than fully visible ones.
    scores_by_vis = {"partly": [], "full": []}
    for t, (dets, objects) in enumerate(zip(seq.detections, seq.detection_object)):
        real = objects >= 0
        vis = seq.visibility[t, objects[real]]
        scores_by_vis["partly"] += dets.scores[real][vis < 0.6].tolist()
        scores_by_vis["full"] += dets.scores[real][vis == 1.0].tolist()
    assert len(scores_by_vis["partly"]) > 10 and len(scores_by_vis["full"]) > 100
    assert np.median(scores_by_vis["partly"]) < 0.6 < np.median(scores_by_vis["full"])
    # Detected boxes are the true ones plus about noise_px of Gaussian noise.
    t = 10
    real = seq.detection_object[t] >= 0
    error = seq.detections[t].boxes_xyxy[real] - seq.boxes_xyxy[t, seq.detection_object[t][real]]
    assert 0.5 < np.abs(error).mean() < 4.0


def test_bad_sim_config_is_rejected():
    with pytest.raises(ConfigError, match="drop_rate"):
        SimConfig(drop_rate=1.5)


def test_metrics_are_perfect_for_ground_truth_and_drop_for_swapped_ids(seq):
    gt = seq.ground_truth()
    perfect = et.mot_metrics(gt, gt)
    assert perfect["mota"] == pytest.approx(1.0) and perfect["idf1"] == pytest.approx(1.0)
    assert perfect["id_switches"] == 0 and perfect["mostly_tracked"] == SHORT.num_objects
    half = len(gt) // 2
    swapped = gt[:half] + [FrameBoxes(np.where(f.ids == 1, 2, np.where(f.ids == 2, 1, f.ids)),
                                      f.boxes_xyxy) for f in gt[half:]]
    worse = et.mot_metrics(gt, swapped)
    assert worse["idf1"] < 0.99 and worse["mota"] < 1.0 and worse["id_switches"] == 2
    with pytest.raises(ConfigError, match="frames"):
        et.mot_metrics(gt, gt[:-1])


def _frame(ids, boxes):
    return FrameBoxes(np.array(ids), np.array(boxes, dtype=np.float64).reshape(-1, 4))


def test_identity_agreement_counts_both_directions():
    a_box, b_box = [0, 0, 10, 20], [50, 0, 60, 20]
    # Reference: ids 7 and 8 throughout. Ours: 7's object is id 1 then id 3 (a
    # fragment); id 2 follows 8's object, then jumps onto 7's (a switch).
    reference = [_frame([7, 8], [a_box, b_box])] * 4
    ours = [_frame([1, 2], [a_box, b_box]), _frame([1, 2], [a_box, b_box]),
            _frame([3], [a_box]), _frame([2], [a_box])]
    result = et.identity_agreement(ours, reference)
    assert result["reference_fragmented"] == 1 and result["reference_extra_ids"] == 2
    assert result["ours_switched"] == 1 and result["ours_extra_ids"] == 1
    assert result["matched_fraction_ours"] == pytest.approx(1.0)
    assert result["matched_fraction_reference"] == pytest.approx(6 / 8)
    # A box that overlaps less than IoU 0.5 is no match.
    shifted = [_frame([1], [[6, 0, 16, 20]])]
    assert et.identity_agreement(shifted, [_frame([7], [a_box])])["our_tracks_matched"] == 0
    stats = et.track_stats(ours)
    assert stats["tracks"] == 3 and stats["mean_track_length_frames"] == pytest.approx(2.0)


def test_reference_parameters_match_our_config():
    cfg = TrackerConfig(frame_rate_hz=10.0, max_lost=10)
    params = et.reference_parameters("bytetrack", cfg)
    # Same lost-track time: 10 frames at 10 Hz = 1 s = 30 frames at the references' 30 FPS.
    assert params["lost_track_buffer"] == 30 and params["frame_rate"] == 10.0
    assert params["high_conf_det_threshold"] == cfg.high_thresh
    assert params["track_activation_threshold"] == cfg.new_track_thresh
    with pytest.raises(ConfigError, match="unknown reference tracker"):
        et.reference_parameters("deepsort", cfg)


def test_all_trackers_run_on_identical_detections(seq):
    gt = seq.ground_truth()
    for name in et.TRACKER_NAMES:
        hyp = et.run_tracker(name, seq.detections[:60], seq.stamps_s[:60])
        metrics = et.mot_metrics(gt[:60], hyp)
        assert len(hyp) == 60 and metrics["mota"] > 0.5, (name, metrics)
    with pytest.raises(ConfigError, match="unknown tracker"):
        et.run_tracker("deepsort", seq.detections[:2], seq.stamps_s[:2])


def test_cli_sim_writes_json(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert et.main(["sim", "--seed", "5", "--frames", "90", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bytetrack" in printed and "idf1" in printed
    result = json.loads(out.read_text())
    assert [s["seed"] for s in result["per_seed"]] == [5]
    assert set(result["mean"]) == {"ours", "sort", "bytetrack"}
    assert 0.0 < result["mean"]["ours"]["idf1"] <= 1.0


def test_cli_rejects_bad_override(capsys):
    assert et.main(["sim", "--frames", "10", "--seed", "0", "--set", "max_lost"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
