"""Compare compression modes per backbone: size, speed and fidelity in one run.

``python -m robot_vision_ros.tools.compare_compression --backbones
resnet18,mobilenet_v2 --frames vtest.avi [--weights mobilenet_v2=FILE]
[--eval-frames PHOTOS] [--modes fp32,prune_unstructured,prune,int8,ort_fp32,ort_int8]``

For every backbone and mode it prints parameters, state-dict size on disk,
latency (median wall and process-CPU milliseconds, batch 1), throughput (batch ``--batch``), fidelity to the
fp32 model (cosine, centred cosine, linear CKA, top-1 agreement where there
are logits) and the speed-up over fp32 measured in the same run. Latencies of
one backbone's modes are measured interleaved (round-robin), so a busy,
shared machine slows them all alike and the ratios stay meaningful. A JSON
document with every figure follows the table (``--json`` also writes it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..compression.apply import compress, split_frames
from ..compression.calibration import load_calibration_frames
from ..compression.fidelity import feature_fidelity
from ..compression.prune import parameter_count
from ..core.errors import ConfigError
from .cli import run_guarded
from ..models.registry import create_model

#: Tool mode -> (compress mode, options).
MODES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "fp32": ("none", {}),
    "prune_unstructured": ("prune", {"method": "unstructured"}),
    "prune": ("prune", {"method": "structured"}),
    "prune_ft": ("prune", {"method": "structured"}),
    "int8": ("int8", {"method": "auto"}),
    "int8_dynamic": ("int8", {"method": "dynamic"}),
    "ort_fp32": ("none", {}),
    "ort_int8": ("int8", {"method": "auto"}),
}
#: Modes run by ONNX Runtime (``backend: onnxruntime``) instead of torch.
ORT_MODES = ("ort_fp32", "ort_int8")
DEFAULT_MODES = "fp32,prune_unstructured,prune,int8"
FIDELITY_KEYS = ("cosine", "centred_cosine", "linear_cka", "top1_agreement")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.compare_compression",
                                description="Compare compression modes of encoders.")
    p.add_argument("--backbones", required=True, help="comma-separated encoder names")
    p.add_argument("--frames", required=True,
                   help="calibration frames: folder of images, video or .npz")
    p.add_argument("--eval-frames", default="",
                   help="frames to measure fidelity on (default: every 4th calibration "
                        "frame, held out of calibration)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=SPEC",
                   help="weights per backbone ('imagenet' or a file); repeatable")
    p.add_argument("--modes", default=DEFAULT_MODES,
                   help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--count", type=int, default=32, help="calibration frames to read")
    p.add_argument("--eval-count", type=int, default=16, help="--eval-frames to read")
    p.add_argument("--size", type=int, default=224, help="square input size")
    p.add_argument("--prune-amount", type=float, default=0.3)
    p.add_argument("--finetune-steps", type=int, default=50, help="steps for prune_ft")
    p.add_argument("--runs", type=int, default=20, help="timed batch-1 runs per mode")
    p.add_argument("--batch", type=int, default=8, help="batch for the throughput figure")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", default="", help="also write the JSON here")
    return p


def parse_weights(entries: Sequence[str]) -> Dict[str, str]:
    """``NAME=SPEC`` entries -> {name: spec}."""
    weights = {}
    for entry in entries:
        name, sep, spec = entry.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--weights takes NAME=SPEC (e.g. mobilenet_v2=FILE), got '{entry}'")
        weights[name] = spec
    return weights


def state_dict_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (the ONNX graph's for a session)."""
    onnx_bytes = getattr(model, "onnx_bytes", None)
    if onnx_bytes is not None:
        return int(onnx_bytes)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "state.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def interleaved_latency_ms(models: Dict[str, nn.Module], x: torch.Tensor, runs: int,
                           rounds: int = 5) -> Dict[str, Tuple[float, float]]:
    """Median batch-1 (wall, process CPU) milliseconds per model, measured round-robin.

    The CPU time of this process is far less sensitive to other processes on a
    shared machine than the wall time; with ``--threads 1`` it is the compute
    time of one inference.
    """
    wall: Dict[str, List[float]] = {name: [] for name in models}
    cpu: Dict[str, List[float]] = {name: [] for name in models}
    per_round = max(1, runs // rounds)
    with torch.no_grad():
        for model in models.values():
            for _ in range(3):
                model(x)
        for _ in range(rounds):
            for name, model in models.items():
                for _ in range(per_round):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    model(x)
                    cpu[name].append((time.process_time() - start_cpu) * 1000.0)
                    wall[name].append((time.perf_counter() - start) * 1000.0)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]))
            for name in models}


def throughput_fps(model: nn.Module, batch: torch.Tensor, runs: int = 3) -> float:
    """Images per second at ``len(batch)`` (best of ``runs``)."""
    best = float("inf")
    with torch.no_grad():
        model(batch)
        for _ in range(runs):
            start = time.perf_counter()
            model(batch)
            best = min(best, time.perf_counter() - start)
    return len(batch) / best


def compare_backbone(name: str, weights: str, modes: Sequence[str], frames: torch.Tensor,
                     eval_frames: Optional[torch.Tensor], args: argparse.Namespace
                     ) -> List[Dict[str, Any]]:
    """Rows (one per mode) for one backbone."""
    reference = create_model(name, output_dim=0, weights=weights).eval()
    models: Dict[str, nn.Module] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    skipped: List[Dict[str, Any]] = []
    for mode in modes:
        compress_mode, options = MODES[mode]
        options = dict(options)
        if compress_mode == "prune":
            options["amount"] = args.prune_amount
            options["finetune_steps"] = args.finetune_steps if mode == "prune_ft" else 0
        started = time.perf_counter()
        try:
            if mode == "ort_fp32":
                model, report = _ort_fp32(reference, frames, args.threads)
            else:
                backend = "onnxruntime" if mode in ORT_MODES else "torch"
                model, report = compress(reference, compress_mode, options, frames,
                                         backend=backend, threads=args.threads)
                if backend == "onnxruntime":
                    model.onnx_bytes = report.get("onnx_bytes_after")
        except ConfigError as exc:  # e.g. structured pruning of resnet18_fpn: a row saying why
            skipped.append({"backbone": name, "mode": mode, "skipped": str(exc)})
            continue
        fidelity = (feature_fidelity(reference, model, eval_frames)
                    if eval_frames is not None and mode != "fp32"
                    else report.get("fidelity", {}))
        models[mode] = model
        rows[mode] = {"backbone": name, "mode": mode, "method": report.get("method", ""),
                      "parameters": (report["parameters_after"]
                                     if getattr(model, "runs_onnxruntime", False)
                                     else parameter_count(model)),
                      "size_mb": state_dict_bytes(model) / 1e6,
                      "prepare_s": time.perf_counter() - started,
                      "fidelity": fidelity, "details": {k: v for k, v in report.items()
                                                        if k not in ("fidelity",)}}
    x = frames[:1]
    latency = interleaved_latency_ms(models, x, args.runs)
    batch = frames[:args.batch] if len(frames) >= args.batch else frames[:1].repeat(args.batch, 1, 1, 1)
    for mode, model in models.items():
        rows[mode]["latency_ms"], rows[mode]["cpu_ms"] = latency[mode]
        rows[mode]["throughput_fps"] = throughput_fps(model, batch)
    base = rows.get("fp32")
    for row in rows.values():
        row["speedup"] = base["latency_ms"] / row["latency_ms"] if base else float("nan")
        row["speedup_cpu"] = base["cpu_ms"] / row["cpu_ms"] if base else float("nan")
    return list(rows.values()) + skipped


def _ort_fp32(reference: nn.Module, frames: torch.Tensor, threads: int
              ) -> Tuple[nn.Module, Dict[str, Any]]:
    """The uncompressed encoder exported and run by ONNX Runtime (the INT8 path's baseline)."""
    import copy

    from ..compression.ort_quantize import OrtEncoder
    from ..core.backends import OnnxRuntimeEncoder, export_encoder_onnx

    input_hw = (int(frames.shape[-2]), int(frames.shape[-1]))
    graph, token_uv, token_level = export_encoder_onnx(copy.deepcopy(reference).float(),
                                                       input_hw)
    runner = OnnxRuntimeEncoder.from_onnx(graph, token_uv, token_level, torch.device("cpu"),
                                          threads)
    model = OrtEncoder(reference, runner, "fp32_ort").eval()
    model.onnx_bytes = len(graph)
    report: Dict[str, Any] = {"method": "onnxruntime fp32", "engine": "onnxruntime",
                              "parameters_after": parameter_count(reference)}
    _, held_out = split_frames(frames)
    if held_out is not None and len(held_out) >= 2:
        report["fidelity"] = feature_fidelity(reference, model, held_out)
    return model, report


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Fixed-width table of the rows."""
    header = (f"{'backbone':<16} {'mode':<19} {'params':>10} {'MB':>7} {'ms':>7} {'cpu ms':>7} "
              f"{'img/s':>7} {'x fp32':>6} {'x cpu':>6} "
              + " ".join(f"{k[:8]:>8}" for k in FIDELITY_KEYS))
    lines = [header, "-" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['backbone']:<16} {row['mode']:<19} skipped: {row['skipped'][:90]}")
            continue
        fid = " ".join(f"{row['fidelity'][k]:8.4f}" if k in row["fidelity"] else f"{'-':>8}"
                       for k in FIDELITY_KEYS)
        lines.append(f"{row['backbone']:<16} {row['mode']:<19} {row['parameters']:>10,} "
                     f"{row['size_mb']:7.2f} {row['latency_ms']:7.2f} {row['cpu_ms']:7.2f} "
                     f"{row['throughput_fps']:7.1f} {row['speedup']:6.2f} "
                     f"{row['speedup_cpu']:6.2f} {fid}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """All rows for all backbones."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"unknown --modes {unknown}; known: {', '.join(MODES)}")
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # the speed-up needs the baseline in the same run
    weights = parse_weights(args.weights)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    frames = load_calibration_frames(args.frames, args.count, (args.size, args.size))
    eval_frames = (load_calibration_frames(args.eval_frames, args.eval_count,
                                           (args.size, args.size))
                   if args.eval_frames else None)
    rows: List[Dict[str, Any]] = []
    for name in backbones:
        rows += compare_backbone(name, weights.get(name, ""), modes, frames, eval_frames, args)
        print(format_table([r for r in rows if r["backbone"] == name]), file=sys.stderr,
              flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    status, rows = run_guarded("compare_compression", lambda: run(args))
    if status:
        return status
    print(format_table(rows))
    document = json.dumps({"threads": torch.get_num_threads(), "size": args.size,
                           "rows": rows}, indent=1, default=str)
    print(document)
    if args.json:
        Path(args.json).write_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
