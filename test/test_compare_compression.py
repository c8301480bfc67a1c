"""The compression report (``tools.bench --compare-compression``) on real frames.

Real models (the ImageNet MobileNetV2 from ../shared/assets) on real vtest.avi
frames, torch and ONNX Runtime modes side by side, small input so it runs in
seconds; the speed figures themselves are measured with the tool, not asserted.
"""
import json

import pytest

from robot_vision_ros.tools import bench, compare_compression

from conftest import asset_path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report.json"
    weights = asset_path("mobilenet_v2-b0353104.pth")
    status = bench.main(["--compare-compression", "--backbones", "mobilenet_v2",
                         "--weights", f"mobilenet_v2={weights}",
                         "--frames", str(asset_path("vtest.avi")), "--count", "12",
                         "--size", "96", "--runs", "5", "--batch", "2",
                         "--modes", "prune,int8,ort_fp32,ort_int8", "--json", str(out)])
    assert status == 0
    return {row["mode"]: row for row in json.loads(out.read_text())["rows"]}


def test_every_mode_has_size_speed_and_fidelity(report):
    assert set(report) == {"fp32", "prune", "int8", "ort_fp32", "ort_int8"}
    fp32 = report["fp32"]
    assert fp32["speedup"] == pytest.approx(1.0)
    for mode in ("prune", "int8", "ort_fp32", "ort_int8"):
        row = report[mode]
        assert row["latency_ms"] > 0 and row["throughput_fps"] > 0 and row["size_mb"] > 0
        assert -1.0 <= row["fidelity"]["cosine"] <= 1.0001
    # Structured pruning really removes parameters; the sessions keep the encoder's count.
    assert report["prune"]["parameters"] < 0.9 * fp32["parameters"]
    assert report["ort_fp32"]["parameters"] == fp32["parameters"]
    # The exported fp32 graph computes the same features; INT8 stores weights in a byte.
    assert report["ort_fp32"]["fidelity"]["cosine"] > 0.999
    assert report["ort_int8"]["size_mb"] < 0.5 * report["ort_fp32"]["size_mb"]
    assert report["ort_int8"]["fidelity"]["cosine"] > 0.95
    assert report["ort_int8"]["details"]["method"] == "static"


def test_unknown_mode_is_refused_with_the_list(capsys):
    status = compare_compression.main(["--backbones", "mobilenet_v2", "--frames",
                                       str(asset_path("vtest.avi")), "--modes", "int4"])
    assert status == 2
    err = capsys.readouterr().err
    assert "unknown --modes ['int4']" in err and "ort_int8" in err
