"""The benchmark tool runs end to end (tiny configuration) and reports what it promises."""
import json
import subprocess
import sys


def test_bench_tool_reports_json_with_medians_and_the_ceiling(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "robot_vision_ros.tools.bench", "--backbones", "realtime",
           "--input-size", "64", "--output-dim", "16", "--rates", "15", "--runs", "2",
           "--seconds", "2", "--ceiling-seconds", "0.5", "--json", str(out),
           "--log-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    result = doc["results"][0]
    assert result["params"]["backbone"] == "realtime"
    assert result["ceiling"]["ceiling_fps"] > 0
    assert result["ceiling"]["convert_preprocess_ms_p50"] > 0
    rate = result["rates"]["15"]
    assert len(rate["runs"]) == 2  # the reported figures are medians of these
    assert rate["published"] > 0 and 0.0 <= rate["drop_fraction"] <= 1.0
    for key in ("age_ms_p50", "age_ms_p95", "age_ms_p99", "jitter_ms", "node_cpu_percent",
                "node_rss_mb", "ratio_to_ceiling", "age_bound_ms"):
        assert key in rate
    assert rate["age_ms_p50"] <= rate["age_ms_p99"]
    # Heads are measured on their own topics: the default sensor depth head publishes,
    # no detector is configured.
    assert rate["depth_fps"] > 0 and rate["depth_age_ms_p50"] > 0
    assert rate["detections_fps"] == 0
    assert "achieved fps" in proc.stderr  # the table
