"""``vision_node``: the lifecycle node that turns an RGB-D stream into features.

The ROS edge only: parameters, QoS, subscriptions, message conversion and
publishing. Scheduling, accounting and the models live in ``core`` and
``models``. Camera callbacks store the newest frame and return; an inference
thread processes it (see ``core.runner``).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional, Union

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float32MultiArray, Header
from visualization_msgs.msg import MarkerArray

from ..compression.live import compression_status
from ..core.compressed_codec import decode_compressed_color, decode_compressed_depth
from ..core.config import SPECS, VisionConfig, check_value, validate
from ..core.errors import InputError, VisionError
from ..core.frames import CameraIntrinsics, FeatureResult, RgbdFrame  # noqa: F401
from ..core.image_codec import align_depth_to_rgb
from ..core.head_worker import HeadsWorker
from ..core.perception import HeadsResult, PerceptionPipeline, PerceptionResult
from ..core.render import colorize_depth, draw_objects, overlay_attention
from ..core.runner import InferenceWorker
from ..core.scheduler import FrameSkipper, FrameSync, PendingFrame
from ..core.stats import FrameStats
from .conversions import (depth_m_to_image_msg, feature_table_to_pointcloud2,
                          features_to_multiarray, image_msg_to_depth_m, image_msg_to_rgb,
                          ns_to_stamp, rgb_to_image_msg, stamp_to_ns)
from .outputs import (camera_info_to_intrinsics, depth_camera_info, object_table_to_markers,
                      object_table_to_pointcloud2)
from .params import declare_all, read_all
from .qos import keep_last

#: Frames not processed, by reason (the others are counted as events).
_SKIP_EVENTS = {"busy", "out_of_order"}


class VisionNode(LifecycleNode):
    """Lifecycle node ``vision``: configure builds the model, activate starts the stream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vision", **kwargs)
        self._param_errors = declare_all(self)
        self._cfg: Optional[VisionConfig] = None
        self._pipeline: Optional[PerceptionPipeline] = None
        self._worker: Optional[InferenceWorker] = None
        self._heads: Optional[HeadsWorker] = None
        self._frame_index = 0
        self._sync: Optional[FrameSync] = None
        self._skipper: Optional[FrameSkipper] = None
        self._stats = FrameStats()
        self._intrinsics: Optional[CameraIntrinsics] = None
        self._subs: List[Any] = []
        self._pubs: Dict[str, Any] = {}
        self._diag_pub = None
        self._diag_timer = None
        self._last_warn: Dict[str, float] = {}
        self._active = False
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        if self._param_errors:
            log.error("rejected parameter values: " + "; ".join(self._param_errors))
            return TransitionCallbackReturn.FAILURE
        try:
            cfg = validate(read_all(self))
            log.info(f"loading encoder '{cfg.backbone}' (weights={cfg.weights or 'random'}, "
                     f"device={cfg.device}, precision={cfg.precision}, "
                     f"input={cfg.input_size[0]}x{cfg.input_size[1]})")
            pipeline = PerceptionPipeline.from_config(cfg)
            pipeline.warmup()
        except VisionError as exc:
            log.error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._cfg, self._pipeline = cfg, pipeline
        out_qos = keep_last(cfg.qos_output_reliability, cfg.qos_output_depth)
        topics = {"features": (Float32MultiArray, "~/features"),
                  "tokens": (PointCloud2, "~/features/tokens"),
                  "depth": (Image, "~/depth"),
                  "depth_info": (CameraInfo, "~/depth/camera_info"),
                  "depth_colored": (Image, "~/depth/colored"),
                  "detections": (PointCloud2, "~/detections"),
                  "detections_image": (Image, "~/detections/image"),
                  "markers": (MarkerArray, "~/detections/markers"),
                  "attention": (Image, "~/attention/image")}
        if pipeline.depth is None:
            for key in ("depth", "depth_info", "depth_colored"):
                topics.pop(key)
        if pipeline.detection is None:
            for key in ("detections", "detections_image", "markers"):
                topics.pop(key)
        if not pipeline.attention_available:
            topics.pop("attention")
        self._pubs = {key: self.create_lifecycle_publisher(msg_type, name, out_qos)
                      for key, (msg_type, name) in topics.items()}
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
        enc = pipeline.encoder
        log.info(f"configured: {cfg.backbone} -> {enc.output_dim} floats on "
                 f"{enc.target.device} ({enc.target.precision}, {enc.backend}); depth "
                 f"{cfg.depth_model}, detection {cfg.detection_model}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._cfg
        self._stats = FrameStats()
        self._skipper = FrameSkipper(cfg.target_fps, cfg.skip_frames)
        # Depth nobody uses would cost a copy of every depth image and a wait for it.
        use_depth = cfg.sync_use_depth and self._pipeline.needs_depth
        self._sync = FrameSync(cfg.sync_slop_s, cfg.sync_depth_wait_s, use_depth,
                               on_event=self._on_sync_event)
        clock_ns = self._clock_ns
        self._worker = InferenceWorker(self._sync, self._decode, self._process,
                                       self._publish, self._stats, self._warn, clock_ns)
        self._heads = None
        self._frame_index = 0
        if cfg.heads_thread and self._pipeline.has_heads:
            self._heads = HeadsWorker(self._pipeline.process_heads, self._publish_heads,
                                      self._stats, self._warn, clock_ns, cfg.heads_threads,
                                      cfg.heads_nice)
        in_qos = keep_last(cfg.qos_image_reliability, cfg.qos_image_depth)
        rgb_type, rgb_topic = _input("camera/color/image_raw", cfg.input_rgb_transport, self)
        self._subs = [
            self.create_subscription(rgb_type, rgb_topic, self._on_rgb, in_qos),
            self.create_subscription(CameraInfo, "camera/color/camera_info", self._on_info,
                                     in_qos),
        ]
        if cfg.sync_use_depth and not use_depth:
            self.get_logger().info("no stage uses depth (depth.model none, no detector, an "
                                   "RGB encoder): camera/depth/image_raw not subscribed")
        if use_depth:
            depth_type, depth_topic = _input("camera/depth/image_raw",
                                             cfg.input_depth_transport, self)
            self._subs.append(self.create_subscription(depth_type, depth_topic,
                                                       self._on_depth, in_qos))
        if self._heads is not None:
            self._heads.start()
        self._worker.start()
        self._active = True
        self.get_logger().info("active: waiting for camera/color/image_raw")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_stream()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_stream()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_stream()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_stream(self) -> None:
        self._active = False
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._heads is not None:
            self._heads.stop()
            self._heads = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self._pipeline = None

    # -- parameters -----------------------------------------------------------
    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        changes: Dict[str, Any] = {}
        for p in params:
            spec = SPECS.get(p.name)
            if spec is None:
                continue
            value = list(p.value) if isinstance(spec.default, list) else p.value
            reason = check_value(p.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if self._active and not spec.dynamic:
                return SetParametersResult(
                    successful=False,
                    reason=f"{p.name} cannot change while active: deactivate, cleanup, set it, "
                           "configure, activate")
            changes[p.name] = value
        if self._cfg is not None and changes:
            try:
                new_cfg = self._cfg.replace(**changes)
            except VisionError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if self._active:
                self._apply_live(new_cfg)
            if self._pipeline is not None:
                self._pipeline.reconfigure(new_cfg)
            self._cfg = new_cfg
        return SetParametersResult(successful=True)

    def _apply_live(self, cfg: VisionConfig) -> None:
        if self._skipper is not None:
            self._skipper.configure(cfg.target_fps, cfg.skip_frames)
        if self._sync is not None:
            self._sync.set_timing(cfg.sync_slop_s, cfg.sync_depth_wait_s)

    # -- input ------------------------------------------------------------------
    def _on_rgb(self, msg: Image) -> None:
        self._stats.count("received")
        stamp = stamp_to_ns(msg.header.stamp)
        if not self._skipper.admit(stamp):
            self._stats.skip("rate")
            return
        self._sync.put_rgb(msg, stamp)

    def _on_depth(self, msg: Image) -> None:
        self._stats.count("depth_received")
        self._sync.put_depth(msg, stamp_to_ns(msg.header.stamp))

    def _on_info(self, msg: CameraInfo) -> None:
        intrinsics = camera_info_to_intrinsics(msg)
        if intrinsics is not None:
            self._intrinsics = intrinsics

    def _on_sync_event(self, reason: str) -> None:
        if reason in _SKIP_EVENTS:
            self._stats.skip(reason)
        else:
            self._stats.count(reason)
            if reason == "stamp_reset":
                self._skipper.reset()
                if self._pipeline is not None:
                    self._pipeline.reset()
                self._warn("input stamps jumped backwards: scheduler reset", key=reason)

    def _decode(self, pending: PendingFrame) -> RgbdFrame:
        """Runs on the worker thread: message -> numpy (InputError on bad input)."""
        cfg = self._cfg
        msg = pending.rgb
        rgb = (decode_compressed_color(msg.format, msg.data)
               if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg))
        depth_m = None
        if pending.depth is not None:
            try:
                depth_msg = pending.depth
                depth_m = (decode_compressed_depth(depth_msg.format, depth_msg.data,
                                                   cfg.depth_min_m, cfg.depth_max_m)
                           if isinstance(depth_msg, CompressedImage) else
                           image_msg_to_depth_m(depth_msg, cfg.depth_min_m, cfg.depth_max_m))
                depth_m = align_depth_to_rgb(depth_m, rgb.shape[:2])
            except InputError as exc:
                # A bad depth image does not cost the colour frame its features.
                self._stats.count(f"depth_{exc.reason}")
                self._warn(f"ignoring depth of frame {pending.stamp_ns}: {exc}", key=exc.reason)
        return RgbdFrame(rgb=rgb, stamp_ns=pending.stamp_ns, frame_id=msg.header.frame_id,
                         depth_m=depth_m, intrinsics=self._intrinsics)

    # -- output -----------------------------------------------------------------
    def _wanted(self, key: str) -> bool:
        """A publisher exists and, for the images only rendered on demand, has subscribers."""
        pub = self._pubs.get(key)
        return pub is not None and pub.get_subscription_count() > 0

    def _clock_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _process(self, frame: RgbdFrame) -> PerceptionResult:
        """Runs on the worker thread: every stage due on this frame, or only the
        encoder when the heads have their own thread."""
        if self._heads is not None:
            result = self._pipeline.process_features(frame, self._wanted("attention"))
        else:
            result = self._pipeline.process(frame, want_attention=self._wanted("attention"))
        for key, n in result.events.items():
            self._stats.count(key, n)
        return result

    def _publish(self, result: PerceptionResult, frame: RgbdFrame) -> None:
        if not self.context.ok():
            return  # shutting down (Ctrl-C): the workers stop next
        features = result.features
        header = frame_header(features)
        self._pubs["features"].publish(features_to_multiarray(features.pooled, features.backbone))
        if self._cfg.publish_tokens:
            self._pubs["tokens"].publish(feature_table_to_pointcloud2(
                features.pooled, features.tokens, features.token_uv_px, features.token_level,
                header))
        if result.depth is not None:
            self._publish_depth(result, frame, header)
        if result.objects is not None:
            self._publish_objects(result, frame, header)
        if result.attention is not None and self._wanted("attention"):
            self._pubs["attention"].publish(
                rgb_to_image_msg(overlay_attention(frame.rgb, result.attention), header))
        if self._heads is not None:
            self._frame_index += 1
            self._heads.offer(frame, self._frame_index)

    def _publish_heads(self, result: HeadsResult, frame: RgbdFrame) -> None:
        """Runs on the heads thread: depth and detections of one frame."""
        if not self.context.ok():
            return
        for key, n in result.events.items():
            self._stats.count(key, n)
        header = Header(stamp=ns_to_stamp(frame.stamp_ns), frame_id=frame.frame_id)
        if result.depth is not None:
            self._publish_depth(result, frame, header)
        if result.objects is not None:
            self._publish_objects(result, frame, header)

    def _publish_depth(self, result: Union[PerceptionResult, HeadsResult], frame: RgbdFrame,
                       header: Header) -> None:
        depth_m = result.depth.depth_m
        self._pubs["depth"].publish(depth_m_to_image_msg(depth_m, header))
        if frame.intrinsics is not None:
            self._pubs["depth_info"].publish(depth_camera_info(
                frame.intrinsics, depth_m.shape[1], depth_m.shape[0], header))
        if self._wanted("depth_colored"):
            self._pubs["depth_colored"].publish(
                rgb_to_image_msg(colorize_depth(depth_m, self._cfg.depth_min_m,
                                                self._cfg.depth_max_m), header))
        if result.depth.fit_residual_m == result.depth.fit_residual_m:  # not NaN
            self._stats.observe("depth_fit_residual_mm", 1e3 * result.depth.fit_residual_m)

    def _publish_objects(self, result: Union[PerceptionResult, HeadsResult], frame: RgbdFrame,
                         header: Header) -> None:
        table = result.objects
        self._pubs["detections"].publish(object_table_to_pointcloud2(table, header))
        self._stats.observe("objects", float(len(table)))
        if self._wanted("detections_image"):
            self._pubs["detections_image"].publish(
                rgb_to_image_msg(draw_objects(frame.rgb, table), header))
        if self._wanted("markers"):
            self._pubs["markers"].publish(object_table_to_markers(
                table, header, self._cfg.detection_marker_lifetime_s))

    def _warn(self, text: str, key: str = "") -> None:
        """Log a warning at most every 2 s per kind, so bad streams do not flood the log."""
        key = key or text.split(":")[-1][:40]
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= 2.0:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def _stop_on_failed_compression(self) -> None:
        """A live-calibrated encoder that failed its guard: log the figure, deactivate."""
        live = getattr(self._pipeline.encoder, "live", None) if self._pipeline else None
        if self._active and live is not None and live.state == "failed":
            self.get_logger().error(f"compressed encoder failed its guard, deactivating: "
                                    f"{live.error}")
            self.trigger_deactivate()

    def _publish_diagnostics(self) -> None:
        cfg = self._cfg
        if cfg is None or self._diag_pub is None:
            return
        self._stop_on_failed_compression()
        snap = self._stats.snapshot()
        level, message = DiagnosticStatus.OK, "ok"
        since = self._stats.seconds_since_input()
        if not self._active:
            level, message = DiagnosticStatus.WARN, "inactive"
        elif since is None or since > cfg.diagnostics_stale_s:
            level, message = DiagnosticStatus.WARN, "no camera frames"
        elif self._worker is None or not self._worker.running:
            level, message = DiagnosticStatus.ERROR, "inference worker stopped"
        elif self._heads is not None and not self._heads.running:
            level, message = DiagnosticStatus.ERROR, "heads thread stopped"
        else:
            expected = min(cfg.target_fps, snap["input_rate_hz"])
            if cfg.skip_frames > 0:
                expected = snap["input_rate_hz"] / (cfg.skip_frames + 1)
            if snap["output_rate_hz"] < 0.9 * expected:
                level = DiagnosticStatus.WARN
                message = (f"output {snap['output_rate_hz']:.1f} Hz below "
                           f"{expected:.1f} Hz")
            elif snap["age_ms_p99"] > cfg.diagnostics_max_age_ms:
                level = DiagnosticStatus.WARN
                message = (f"latency p99 {snap['age_ms_p99']:.0f} ms over "
                           f"{cfg.diagnostics_max_age_ms:g} ms")
        compression = compression_status(self._pipeline) if self._pipeline else {}
        if compression.get("compression_state", "").startswith("failed"):
            level = DiagnosticStatus.ERROR
            message = f"compression {compression['compression_state']}"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pipeline",
                                  message=message,
                                  hardware_id=str(self._pipeline.encoder.target.device)
                                  if self._pipeline else "")
        values = {"backbone": cfg.backbone, "device": cfg.device, "precision": cfg.precision,
                  "target_fps": f"{cfg.target_fps:g}", "skip_frames": str(cfg.skip_frames),
                  "compression": cfg.compression_mode,
                  "heads": "own thread" if self._heads is not None else "inline"}
        values.update(compression)
        values.update({k: _fmt(v) for k, v in sorted(snap.items())})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def log_summary(self) -> None:
        """Frame accounting, logged at shutdown."""
        items = ", ".join(f"{k}={v}" for k, v in self._stats.summary_items())
        self.get_logger().info(f"frame accounting: {items}")


class RosLogHandler(logging.Handler):
    """Forwards the core's Python ``logging`` records to the node's ROS logger."""

    def __init__(self, node: LifecycleNode) -> None:
        super().__init__(level=logging.INFO)
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name.split('.')[-1]}: {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


def _input(base_topic: str, transport: str, node: LifecycleNode):
    """Message type and topic of an image input, image_transport style.

    A compressed transport subscribes to ``<resolved base topic>/<transport>``,
    so remapping the base topic moves the compressed one with it.
    """
    if transport == "raw":
        return Image, base_topic
    return CompressedImage, f"{node.resolve_topic_name(base_topic)}/{transport}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def frame_header(result: FeatureResult) -> Header:
    """std_msgs/Header with the source frame's stamp and frame id."""
    return Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)


def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run robot_vision_ros vision_node``."""
    rclpy.init(args=args)
    node = VisionNode()
    package_log = logging.getLogger("robot_vision_ros")
    package_log.setLevel(logging.INFO)
    package_log.addHandler(RosLogHandler(node))
    package_log.propagate = False
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.log_summary()
        node._stop_stream()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
