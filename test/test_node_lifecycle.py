"""Cross-process: lifecycle reconfigure without a restart, a camera that stops and
comes back, and input stamps that jump backwards."""
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, Header

from robot_vision_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg

from ros_probe import Probe, running, wait_for_log

REMAPS = {"camera/color/image_raw": "/life/rgb", "camera/depth/image_raw": "/life/depth",
          "camera/color/camera_info": "/life/info"}
PARAMS = {"backbone": "realtime", "output_dim": 32, "input_size": [64, 64],
          "diagnostics.stale_s": 0.5}


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _call(probe, client, request):
    assert client.wait_for_service(timeout_sec=30)
    future = client.call_async(request)
    assert probe.spin_until(future.done, 120), "no answer from the lifecycle service"
    return future.result()


def _transition(probe, client, transition_id):
    return _call(probe, client, ChangeState.Request(
        transition=Transition(id=transition_id))).success


def _newest_status(probe):
    for msg in reversed(probe.received["/diagnostics"]):
        for status in msg.status:
            if status.name.startswith("vision"):
                return status
    return None


def _level(status):
    level = status.level
    return level if isinstance(level, int) else int.from_bytes(level, "little")


def test_camera_stop_resume_and_lifecycle_reconfigure(ros):
    probe = Probe("lifecycle_probe")
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(DiagnosticArray, "/diagnostics")
    features = probe.received["/vision/features"]
    change = probe.create_client(ChangeState, "/vision/change_state")
    get_state = probe.create_client(GetState, "/vision/get_state")
    params = AsyncParameterClient(probe, "/vision")
    with running("vision_node", params=PARAMS, remaps=REMAPS) as node:
        with running("sim_camera", params={"rate_hz": 30.0}, remaps=REMAPS):
            assert probe.spin_until(lambda: len(features) >= 5, 120), node.log()
        assert len(features[-1].data) == 32

        # The camera stopped: a warning on /diagnostics, not an error, node alive.
        probe.clear()
        assert probe.spin_until(
            lambda: _newest_status(probe) is not None
            and _newest_status(probe).message == "no camera frames", 10), node.log()
        assert _level(_newest_status(probe)) == _level(DiagnosticStatus(
            level=DiagnosticStatus.WARN))
        assert node.poll() is None

        with running("sim_camera", params={"rate_hz": 30.0}, remaps=REMAPS):
            probe.clear()
            assert probe.spin_until(lambda: len(features) >= 5, 30), "no resume"

            # Reconfigure to another backbone through the lifecycle, same process.
            assert _transition(probe, change, Transition.TRANSITION_DEACTIVATE)
            probe.spin_for(0.5)
            probe.clear()
            probe.spin_for(1.0)
            assert len(features) == 0, "an inactive node must not publish"
            assert _transition(probe, change, Transition.TRANSITION_CLEANUP)
            future = params.set_parameters([Parameter("backbone", value="mobilenet_v3_small"),
                                            Parameter("output_dim", value=48)])
            assert probe.spin_until(future.done, 10)
            assert all(r.successful for r in future.result().results)
            assert _transition(probe, change, Transition.TRANSITION_CONFIGURE)
            assert _transition(probe, change, Transition.TRANSITION_ACTIVATE)
            state = _call(probe, get_state, GetState.Request()).current_state
            assert state.label == "active"
            probe.clear()
            assert probe.spin_until(lambda: len(features) >= 3, 30), node.log()
            assert len(features[-1].data) == 48
            assert features[-1].layout.dim[0].label == "mobilenet_v3_small"
        assert node.poll() is None
        assert wait_for_log(node, "configured: mobilenet_v3_small", 5)
    probe.destroy_node()


def test_stamps_jumping_backwards_reset_instead_of_stalling(ros):
    probe = Probe("stamp_probe")
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(DiagnosticArray, "/diagnostics")
    features = probe.received["/vision/features"]
    pub = probe.create_publisher(Image, "/life/rgb",
                                 QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    image = np.zeros((120, 160, 3), np.uint8)

    def send(t_s):
        msg = rgb_to_image_msg(image, Header(stamp=ns_to_stamp(int(t_s * 1e9)), frame_id="c"))
        pub.publish(msg)
        probe.spin_for(0.1)

    with running("vision_node", params=PARAMS, remaps=REMAPS) as node:
        assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 120), node.log()
        assert wait_for_log(node, "active", 120), node.log()
        for i in range(5):
            send(1000.0 + i / 10)  # a bag playing ...
        assert probe.spin_until(lambda: len(features) >= 3, 10), node.log()
        probe.clear()
        for i in range(5):
            send(10.0 + i / 10)  # ... restarting from its beginning
        assert probe.spin_until(lambda: len(features) >= 3, 10), node.log()
        probe.spin_until(lambda: float(probe.diagnostics().get("stamp_reset", 0)) >= 1, 3)
        assert float(probe.diagnostics().get("stamp_reset", 0)) >= 1
        assert "jumped backwards" in node.log()
    probe.destroy_node()
