"""The encoder pipeline: frames in, publishable feature results out (no ROS)."""
import numpy as np
import pytest
import torch

from robot_vision_ros.core.config import validate
from robot_vision_ros.core.device import resolve_device, resolve_target
from robot_vision_ros.core.errors import ConfigError, ModelError
from robot_vision_ros.core.frames import RgbdFrame
from robot_vision_ros.core.pipeline import EncoderPipeline
from robot_vision_ros.core.sim_scene import SimScene


@pytest.fixture(scope="module")
def frames():
    scene = SimScene(width=160, height=120, num_objects=3, seed=5)
    return [RgbdFrame(rgb=f.rgb, depth_m=f.depth_m, stamp_ns=1000 + i, frame_id="cam")
            for i, f in enumerate(scene.render(i) for i in range(4))]


def _pipeline(**params):
    base = {"backbone": "resnet18", "input_size": [64, 96], "output_dim": 32, "device": "cpu"}
    base.update(params)
    return EncoderPipeline.from_config(validate(base))


def test_feature_result_shapes_stamp_and_pixel_token_centres(frames):
    result = _pipeline().process(frames[0])
    assert result.stamp_ns == 1000 and result.frame_id == "cam" and result.backbone == "resnet18"
    assert result.pooled.shape == (32,) and result.pooled.dtype == np.float32
    assert result.tokens.shape == (2 * 3, 32)  # 64x96 input -> 2x3 layer4 grid
    # Token centres are in pixels of the 160x120 source image, not of the 64x96 input.
    assert np.allclose(sorted(set(result.token_uv_px[:, 0])), [160 / 6, 80, 160 * 5 / 6])
    assert np.allclose(sorted(set(result.token_uv_px[:, 1])), [30, 90])
    assert (result.token_level == 1).all()
    assert np.isfinite(result.pooled).all() and result.timings_ms["encoder_ms"] > 0


def test_native_width_when_output_dim_is_zero(frames):
    assert _pipeline(output_dim=0).process(frames[0]).pooled.shape == (512,)


def test_bf16_autocast_on_cpu_is_close_to_fp32(frames):
    p16 = _pipeline(precision="bf16")
    p32 = _pipeline()
    p16.encoder.load_state_dict(p32.encoder.state_dict())
    a, b = p32.process(frames[1]).pooled, p16.process(frames[1]).pooled
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.98 and p16.target.precision == "bf16"


def test_fp16_on_cpu_falls_back_to_fp32():
    assert resolve_target("cpu", "fp16").autocast_dtype is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device("auto").type == "cpu"


def test_rgbd_hybrid_keeps_temporal_history_in_the_pipeline(frames):
    pipe = _pipeline(backbone="rgbd_hybrid", **{"rgbd.use_temporal": True,
                                                "rgbd.temporal_window": 3,
                                                "rgbd.num_slots": 2})
    results = [pipe.process(f) for f in frames]
    assert len(pipe._history) == 2  # window - 1 previous frames
    r = results[-1]
    assert r.pooled.shape == (32,)
    # Slot tokens come last, with no image position and the slot level.
    assert (r.token_level[-2:] == 255).all() and np.isnan(r.token_uv_px[-2:]).all()
    pipe.reset()
    assert len(pipe._history) == 0


def test_rgbd_hybrid_rejects_itself_as_inner_backbone():
    with pytest.raises(ConfigError, match="rgbd.rgb_backbone"):
        validate({"backbone": "rgbd_hybrid", "rgbd.rgb_backbone": "rgbd_hybrid"})


def test_out_of_memory_while_running_drops_the_frame_with_a_clear_error(frames):
    pipe = _pipeline()

    def exhausted(*args, **kwargs):  # fault injection: what CUDA raises when memory runs out
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    pipe._encode = exhausted
    with pytest.raises(ModelError, match="out of memory on cpu running 'resnet18'"):
        pipe.process(frames[0])


def _twins(backbone, input_size, **kwargs):
    """Two pipelines over identical copies of one encoder: eager reference and variant."""
    import copy

    from robot_vision_ros.core.pipeline import EncoderPipeline
    from robot_vision_ros.models import create_model
    torch.manual_seed(0)
    encoder = create_model(backbone, output_dim=32)
    target = resolve_target("cpu", "fp32")
    ref = EncoderPipeline(encoder, input_size, target)
    return ref, EncoderPipeline(copy.deepcopy(encoder), input_size, target, **kwargs)


def test_onnxruntime_backend_matches_torch(frames):
    ref, ort_pipe = _twins("mobilenet_v3_small", (64, 96), backend="onnxruntime")
    a, b = ref.process(frames[2]), ort_pipe.process(frames[2])
    assert np.allclose(a.pooled, b.pooled, atol=1e-4, rtol=1e-3)
    assert np.allclose(a.tokens, b.tokens, atol=1e-4, rtol=1e-3)
    assert np.array_equal(a.token_uv_px, b.token_uv_px)


def test_onnxruntime_backend_refuses_rgbd_encoders():
    with pytest.raises(ConfigError, match="backend onnxruntime runs RGB encoders"):
        _pipeline(backbone="rgbd_hybrid", backend="onnxruntime")


def test_torch_compile_gives_the_same_features(frames):
    eager, compiled = _twins("realtime", (64, 64), compile_mode="default")
    a, b = eager.process(frames[3]), compiled.process(frames[3])
    assert np.allclose(a.pooled, b.pooled, atol=1e-4, rtol=1e-3)


def test_compression_int8_passes_the_fidelity_guard_and_reports_it(asset):
    video = str(asset("vtest.avi"))
    pipe = _pipeline(backbone="resnet18", input_size=[64, 64], **{
        "compression.mode": "int8", "compression.calibration": video,
        "compression.calibration_frames": 8, "compression.min_fidelity": 0.9})
    guard = pipe.compression["guard"]
    assert guard["metric"] == "cosine" and guard["value"] >= 0.9 and guard["frames"] == 2
    assert pipe.compression["method"] == "static"
    frame = RgbdFrame(rgb=np.zeros((120, 160, 3), np.uint8), stamp_ns=1)
    assert pipe.process(frame).pooled.shape == (32,)


def test_compression_below_the_fidelity_floor_refuses_with_the_figure(asset):
    video = str(asset("vtest.avi"))
    with pytest.raises(ConfigError) as err:
        _pipeline(backbone="resnet18", input_size=[64, 64], **{
            "compression.mode": "prune", "compression.prune_method": "unstructured",
            "compression.prune_amount": 0.9, "compression.calibration": video,
            "compression.calibration_frames": 8, "compression.min_fidelity": 0.999})
    assert "below compression.min_fidelity = 0.9990" in str(err.value)
    assert "fidelity cosine = 0." in str(err.value)


def test_structured_pruning_of_a_vit_through_the_pipeline(asset):
    video = str(asset("vtest.avi"))
    pipe = _pipeline(backbone="vit_tiny", input_size=[64, 64], **{
        "compression.mode": "prune", "compression.prune_method": "structured",
        "compression.prune_amount": 0.5, "compression.calibration": video,
        "compression.calibration_frames": 8, "compression.min_fidelity": 0.0})
    details = pipe.compression
    assert details["method"] == "structured" and details["amount"] == 0.5
    assert details["parameters_after"] < 0.6 * details["parameters_before"]
    assert 0.0 <= details["guard"]["value"] <= 1.0 + 1e-6  # measured, not assumed
    frame = RgbdFrame(rgb=np.zeros((120, 160, 3), np.uint8), stamp_ns=1)
    result = pipe.process(frame)
    assert result.pooled.shape == (32,) and np.isfinite(result.pooled).all()


def test_compression_guard_needs_calibration_frames():
    with pytest.raises(ConfigError, match="needs compression.calibration"):
        _pipeline(**{"compression.mode": "int8"})
    with pytest.raises(ConfigError, match="needs compression.student"):
        validate({"compression.mode": "distilled"})
