"""A pybullet RGB-D scene with exact metric depth, for training and evaluating depth.

:class:`PybulletScene` builds a seeded table-top scene in a DIRECT (headless)
pybullet client: a floor, a table with a random texture and tint, background
walls and several ``pybullet_data`` objects (cubes, spheres, duck, teddy, mug,
lego, jenga, random shapes) at random poses; some objects slide across the
table and the camera slowly orbits while it looks at the table. Frame ``i`` is
rendered with the CPU tiny renderer as RGB, exact planar depth in metres
(pybullet's depth buffer linearised with the near and far planes) and a
segmentation of body ids; :meth:`PybulletSequence.ground_truth` turns the
segmentation into per-object boxes, ids, classes and depths. The same seed
gives the same pixels.

Rendering costs about 35 ms a 320x240 frame and 180 ms a 640x480 frame on two
cores (shadows on), so :func:`render_sequence` caches a sequence in an ``.npz``
file under a cache folder and replays it from there.

pybullet is imported when a scene is built, so the rest of the package works
without it.
"""
from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, ModelError
from .frames import CameraIntrinsics, RgbdFrame
from .ground_truth import GroundTruth, ground_truth_from_labels

PYBULLET_PIN = "pybullet==3.2.7"
#: Bump when the scene changes, so stale cached sequences are not replayed.
SCENE_VERSION = 1
#: Bump when the cached file's contents change (2: object bodies and classes added).
CACHE_FORMAT = 2
DEFAULT_FOV_DEG = 45.0
NEAR_M = 0.1
FAR_M = 12.0
TABLE_TOP_M = 0.625
_TABLE_HALF_XY = (0.7, 0.45)  # usable half extents of the table top (the top is 1.5 x 1.0 m)

# (URDF in pybullet_data, keep its texture, size range of the longest side in metres)
_OBJECTS: Tuple[Tuple[str, bool, Tuple[float, float]], ...] = (
    ("cube_small.urdf", False, (0.06, 0.2)),
    ("sphere2.urdf", False, (0.06, 0.2)),
    ("duck_vhacd.urdf", True, (0.1, 0.22)),
    ("teddy_vhacd.urdf", True, (0.1, 0.25)),
    ("objects/mug.urdf", False, (0.09, 0.16)),
    ("lego/lego.urdf", False, (0.05, 0.15)),
    ("jenga/jenga.urdf", True, (0.1, 0.25)),
    ("random_urdfs/000/000.urdf", False, (0.08, 0.2)),
    ("random_urdfs/001/001.urdf", False, (0.08, 0.2)),
    ("random_urdfs/002/002.urdf", False, (0.08, 0.2)),
    ("random_urdfs/003/003.urdf", False, (0.08, 0.2)),
)
#: Ground-truth class names: ``class_id`` indexes this (the URDF of the object).
CLASS_NAMES = tuple(Path(urdf).stem.replace("_vhacd", "") for urdf, _, _ in _OBJECTS)
_TEXTURES = ("checker_grid.jpg", "tex256.png", "uvmap.png", "table/table.png",
             "jenga/jenga.png", "checker_blue.png")


def _import_pybullet() -> Tuple[ModuleType, str]:
    try:
        import pybullet
        import pybullet_data
    except ImportError as exc:
        raise ModelError(f"the pybullet scene needs pybullet (`pip install {PYBULLET_PIN}`): "
                         f"{exc}") from exc
    return pybullet, pybullet_data.getDataPath()


def linearize_depth(depth_buffer: np.ndarray, near_m: float, far_m: float) -> np.ndarray:
    """OpenGL depth buffer values in [0, 1] -> planar depth in metres (float32).

    Inverts ``z_b = far / (far - near) * (1 - near / z)``; the far plane (no
    surface hit) becomes NaN.
    """
    z_b = np.asarray(depth_buffer, dtype=np.float64)
    depth = far_m * near_m / (far_m - (far_m - near_m) * z_b)
    depth[z_b >= 1.0] = np.nan
    return depth.astype(np.float32)


def intrinsics_for(width: int, height: int, fov_deg: float) -> CameraIntrinsics:
    """Pinhole intrinsics of an OpenGL camera with vertical field of view ``fov_deg``."""
    f = (height / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return CameraIntrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def render_rgbd(client: int, eye_m: Sequence[float], target_m: Sequence[float],
                up: Sequence[float], width: int, height: int,
                fov_deg: float = DEFAULT_FOV_DEG, near_m: float = NEAR_M, far_m: float = FAR_M,
                light_direction: Sequence[float] = (1.0, 1.0, 3.0),
                shadow: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view of pybullet client ``client``: (rgb uint8 [H,W,3], depth_m float32, seg int32).

    ``depth_m`` is the distance along the optical axis (what a depth camera
    reports, REP-118), NaN where nothing is hit before ``far_m``; ``seg`` is
    the body id per pixel, -1 for none. Row 0 is the top of the image.
    """
    pb, _ = _import_pybullet()
    view = pb.computeViewMatrix(list(eye_m), list(target_m), list(up))
    proj = pb.computeProjectionMatrixFOV(fov_deg, width / height, near_m, far_m)
    _, _, rgba, depth_buffer, seg = pb.getCameraImage(
        width, height, view, proj, renderer=pb.ER_TINY_RENDERER, shadow=int(shadow),
        lightDirection=list(light_direction), physicsClientId=client)
    rgb = np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3])
    depth_m = linearize_depth(np.asarray(depth_buffer).reshape(height, width), near_m, far_m)
    seg = np.asarray(seg, dtype=np.int32).reshape(height, width)
    return rgb, depth_m, seg


@dataclass
class _MovingObject:
    body: int
    start_xy: np.ndarray
    velocity_xy: np.ndarray  # metres per frame
    z_m: float
    yaw0: float
    yaw_rate: float  # radians per frame


class PybulletScene:
    """A seeded table-top scene; :meth:`render` gives frame ``i`` in any order.

    ``num_objects`` objects lie on the table, ``num_moving`` of them slide
    (bouncing off the table edges). The camera orbits the table at
    ``orbit_deg_per_frame``. Call :meth:`close` (or use ``with``) to free
    the pybullet client.
    """

    def __init__(self, seed: int, width: int = 320, height: int = 240, num_objects: int = 7,
                 num_moving: int = 2, fov_deg: float = DEFAULT_FOV_DEG,
                 orbit_deg_per_frame: float = 0.6) -> None:
        if width < 16 or height < 16:
            raise ConfigError(f"pybullet image size must be at least 16x16, got {width}x{height}")
        if not 0 <= num_moving <= num_objects <= 20:
            raise ConfigError(f"need 0 <= num_moving <= num_objects <= 20, got {num_moving} "
                              f"and {num_objects}")
        if not 10.0 <= fov_deg <= 120.0:
            raise ConfigError(f"fov_deg must be in [10, 120], got {fov_deg}")
        self._pb, self._data_path = _import_pybullet()
        self.seed, self.width, self.height, self.fov_deg = int(seed), width, height, fov_deg
        self.intrinsics = intrinsics_for(width, height, fov_deg)
        self.client = self._pb.connect(self._pb.DIRECT)
        self._pb.setAdditionalSearchPath(self._data_path, physicsClientId=self.client)
        rng = np.random.default_rng(self.seed)
        try:
            self._build(rng, num_objects, num_moving)
        except Exception:
            self.close()
            raise
        self._light = np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(2, 4)])
        self._azimuth0 = rng.uniform(0, 2 * math.pi)
        self._orbit = math.radians(orbit_deg_per_frame) * rng.choice([-1.0, 1.0])
        self._distance_m = rng.uniform(0.9, 1.8)
        self._elevation = math.radians(rng.uniform(25, 60))
        self._target = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1), TABLE_TOP_M])

    # --- building ------------------------------------------------------------------------
    def _texture(self, rng: np.random.Generator) -> int:
        name = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
        return self._pb.loadTexture(os.path.join(self._data_path, name),
                                    physicsClientId=self.client)

    def _build(self, rng: np.random.Generator, num_objects: int, num_moving: int) -> None:
        pb, c = self._pb, self.client
        floor = pb.loadURDF("plane.urdf", physicsClientId=c)
        pb.changeVisualShape(floor, -1, rgbaColor=[*rng.uniform(0.4, 1.0, 3), 1],
                             physicsClientId=c)
        table = pb.loadURDF("table/table.urdf", physicsClientId=c)
        pb.changeVisualShape(table, -1, textureUniqueId=self._texture(rng),
                             rgbaColor=[*rng.uniform(0.5, 1.0, 3), 1], physicsClientId=c)
        for side in range(4):  # walls at random distances make depth beyond the table
            angle = side * math.pi / 2
            dist = rng.uniform(2.0, 4.5)
            half = [0.05, rng.uniform(2.5, 5.0), rng.uniform(1.0, 2.5)]
            shape = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half,
                                         rgbaColor=[*rng.uniform(0.2, 1.0, 3), 1],
                                         physicsClientId=c)
            wall = pb.createMultiBody(baseMass=0, baseVisualShapeIndex=shape,
                                      basePosition=[dist * math.cos(angle),
                                                    dist * math.sin(angle), half[2]],
                                      baseOrientation=pb.getQuaternionFromEuler([0, 0, angle]),
                                      physicsClientId=c)
            if rng.random() < 0.5:
                pb.changeVisualShape(wall, -1, textureUniqueId=self._texture(rng),
                                     physicsClientId=c)
        self._moving: List[_MovingObject] = []
        #: Body id and class (index of :data:`CLASS_NAMES`) of each object; object id k + 1.
        self.object_bodies: List[int] = []
        self.object_classes: List[int] = []
        for k in range(num_objects):
            kind = int(rng.integers(len(_OBJECTS)))
            urdf, textured, (lo, hi) = _OBJECTS[kind]
            body, z_m = self._place(urdf, rng.uniform(lo, hi), rng)
            self.object_bodies.append(int(body))
            self.object_classes.append(kind)
            if not textured or rng.random() < 0.3:
                pb.changeVisualShape(body, -1, rgbaColor=[*rng.uniform(0.05, 1.0, 3), 1],
                                     physicsClientId=c)
            pos, orn = pb.getBasePositionAndOrientation(body, physicsClientId=c)
            if k < num_moving:
                speed = rng.uniform(0.004, 0.012)
                heading = rng.uniform(0, 2 * math.pi)
                self._moving.append(_MovingObject(
                    body, np.array(pos[:2]), speed * np.array([math.cos(heading),
                                                               math.sin(heading)]),
                    z_m, pb.getEulerFromQuaternion(orn)[2], rng.uniform(-0.05, 0.05)))

    def _place(self, urdf: str, size_m: float, rng: np.random.Generator) -> Tuple[int, float]:
        """Load ``urdf`` scaled so its longest side is ``size_m``, resting on the table."""
        pb, c = self._pb, self.client
        probe = pb.loadURDF(urdf, [0, 0, 5], physicsClientId=c)
        lo, hi = (np.array(v) for v in pb.getAABB(probe, physicsClientId=c))
        pb.removeBody(probe, physicsClientId=c)
        scale = size_m / max(float((hi - lo).max()), 1e-6)
        xy = rng.uniform(-1, 1, 2) * _TABLE_HALF_XY
        orn = pb.getQuaternionFromEuler([0, 0, rng.uniform(0, 2 * math.pi)])
        body = pb.loadURDF(urdf, [xy[0], xy[1], 2.0], orn, globalScaling=scale,
                           physicsClientId=c)
        aabb_lo = pb.getAABB(body, physicsClientId=c)[0]
        z_m = 2.0 - aabb_lo[2] + TABLE_TOP_M
        pb.resetBasePositionAndOrientation(body, [xy[0], xy[1], z_m], orn, physicsClientId=c)
        return body, z_m

    # --- rendering -----------------------------------------------------------------------
    def _pose_objects(self, index: int) -> None:
        span = np.array(_TABLE_HALF_XY)
        for obj in self._moving:
            # Reflect the unbounded straight path into the table top (bouncing).
            p = obj.start_xy + obj.velocity_xy * index + span
            p = np.mod(p, 4 * span)
            p = np.where(p > 2 * span, 4 * span - p, p) - span
            orn = self._pb.getQuaternionFromEuler([0, 0, obj.yaw0 + obj.yaw_rate * index])
            self._pb.resetBasePositionAndOrientation(obj.body, [p[0], p[1], obj.z_m], orn,
                                                     physicsClientId=self.client)

    def camera_eye(self, index: int) -> np.ndarray:
        """Camera position (metres, world frame) in frame ``index``."""
        azimuth = self._azimuth0 + self._orbit * index
        horizontal = self._distance_m * math.cos(self._elevation)
        return self._target + np.array([horizontal * math.cos(azimuth),
                                        horizontal * math.sin(azimuth),
                                        self._distance_m * math.sin(self._elevation)])

    def render(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``index``: (rgb uint8 [H,W,3], depth_m float32 [H,W] NaN = no hit, seg int32)."""
        if index < 0:
            raise ConfigError(f"frame index must be >= 0, got {index}")
        self._pose_objects(index)
        return render_rgbd(self.client, self.camera_eye(index), self._target, (0, 0, 1),
                           self.width, self.height, self.fov_deg,
                           light_direction=self._light)

    def close(self) -> None:
        """Disconnect the pybullet client (idempotent)."""
        if getattr(self, "client", None) is not None:
            if self._pb.isConnected(physicsClientId=self.client):
                self._pb.disconnect(physicsClientId=self.client)
            self.client = None

    def __enter__(self) -> "PybulletScene":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty_ids() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class PybulletSequence:
    """``num_frames`` rendered frames of one seed: rgb [N,H,W,3] uint8, depth_m [N,H,W]
    float32 (exact, NaN = no surface), seg [N,H,W] int32 body ids (-1 = none);
    ``object_bodies [K]`` the body id of object ``k + 1``, ``object_classes [K]``
    its class (index of :data:`CLASS_NAMES`)."""

    seed: int
    rgb: np.ndarray
    depth_m: np.ndarray
    seg: np.ndarray
    intrinsics: CameraIntrinsics
    object_bodies: np.ndarray = field(default_factory=_empty_ids)
    object_classes: np.ndarray = field(default_factory=_empty_ids)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def frame(self, index: int, fps: float = 30.0, with_depth: bool = True) -> RgbdFrame:
        """Frame ``index`` as the node would receive it (exact depth as the sensor)."""
        return RgbdFrame(rgb=self.rgb[index], stamp_ns=int(round(index * 1e9 / fps)),
                         frame_id="pybullet_camera",
                         depth_m=self.depth_m[index] if with_depth else None,
                         intrinsics=self.intrinsics)

    def object_labels(self, index: int) -> np.ndarray:
        """``[H, W]`` int32 object id (``k + 1``) seen at each pixel of frame ``index``,
        0 where the table, floor, walls or nothing is seen."""
        seg = self.seg[index]
        bodies = np.asarray(self.object_bodies, np.int64)
        size = int(max(int(seg.max()), int(bodies.max()) if bodies.size else 0)) + 2
        lookup = np.zeros(size, np.int32)  # seg + 1: body -1 (no hit) lands on 0
        lookup[bodies + 1] = np.arange(1, len(bodies) + 1, dtype=np.int32)
        return lookup[seg.astype(np.int64) + 1]

    def ground_truth(self, index: int) -> GroundTruth:
        """Ground truth of frame ``index`` from its segmentation (visible pixels only)."""
        class_of = {k + 1: int(c) for k, c in enumerate(self.object_classes)}
        return ground_truth_from_labels(index, self.object_labels(index), self.depth_m[index],
                                        class_of)


def default_cache_dir() -> Path:
    """``$ROBOT_VISION_CACHE/pybullet`` or ``~/.cache/robot_vision_ros/pybullet``."""
    root = os.environ.get("ROBOT_VISION_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "robot_vision_ros"
    return base / "pybullet"


def _cache_file(cache_dir: Path, seed: int, num_frames: int, width: int, height: int,
                scene_kwargs: dict) -> Path:
    key = repr((SCENE_VERSION, CACHE_FORMAT, seed, num_frames, width, height,
                sorted(scene_kwargs.items())))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_dir / f"seq_s{seed}_n{num_frames}_{width}x{height}_{digest}.npz"


def load_sequence(path: Path) -> PybulletSequence:
    """A sequence written by :func:`render_sequence`'s cache."""
    try:
        with np.load(path) as data:
            k = data["intrinsics"]
            return PybulletSequence(seed=int(data["seed"]), rgb=data["rgb"],
                                    depth_m=data["depth_m"], seg=data["seg"].astype(np.int32),
                                    intrinsics=CameraIntrinsics(float(k[0]), float(k[1]),
                                                                float(k[2]), float(k[3]),
                                                                int(k[4]), int(k[5])),
                                    object_bodies=data["object_bodies"].astype(np.int64),
                                    object_classes=data["object_classes"].astype(np.int64))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path} is not a cached pybullet sequence: {exc}") from exc


def render_sequence(seed: int, num_frames: int, width: int = 320, height: int = 240,
                    cache_dir: Optional[os.PathLike] = None, use_cache: bool = True,
                    **scene_kwargs) -> PybulletSequence:
    """Frames ``0..num_frames-1`` of ``PybulletScene(seed, ...)``, from the cache if there.

    The cache file (``.npz`` under ``cache_dir``, default :func:`default_cache_dir`)
    is keyed by the scene version, seed, frame count, size and ``scene_kwargs``.
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_file(cache, seed, num_frames, width, height, scene_kwargs)
    if use_cache and path.is_file():
        return load_sequence(path)
    rgb = np.empty((num_frames, height, width, 3), np.uint8)
    depth = np.empty((num_frames, height, width), np.float32)
    seg = np.empty((num_frames, height, width), np.int32)
    with PybulletScene(seed, width, height, **scene_kwargs) as scene:
        for i in range(num_frames):
            rgb[i], depth[i], seg[i] = scene.render(i)
        k = scene.intrinsics
        bodies = np.array(scene.object_bodies, np.int64)
        classes = np.array(scene.object_classes, np.int64)
    sequence = PybulletSequence(seed, rgb, depth, seg, k, bodies, classes)
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, seed=seed, rgb=rgb, depth_m=depth, seg=seg.astype(np.int16),
                            object_bodies=bodies, object_classes=classes,
                            intrinsics=np.array([k.fx, k.fy, k.cx, k.cy, k.width, k.height]))
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return sequence
