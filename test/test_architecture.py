"""House rules that keep the package usable without ROS."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "robot_vision_ros"
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "launch", "launch_ros",
               "ament_index_python")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs")


def test_only_ros_package_imports_rclpy_and_messages():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] == "ros":
            continue
        offenders += [f"{path.relative_to(PKG)}: {m}" for m in _imports(path) if _is_ros(m)]
    assert offenders == [], offenders


def test_core_models_tracking_import_with_ros_blocked():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if top in ('rclpy',) or top.endswith('_msgs'):\n"
        "            raise ImportError('ROS import blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib, robot_vision_ros\n"
        "for sub in ('core', 'models', 'tracking', 'compression'):\n"
        "    pkg = importlib.import_module('robot_vision_ros.' + sub)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_no_bare_except_and_no_assert_in_package():
    problems = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and node.type is None:
                problems.append(f"{path.relative_to(PKG)}:{node.lineno} bare except")
            if isinstance(node, ast.Assert):
                problems.append(f"{path.relative_to(PKG)}:{node.lineno} assert")
    assert problems == [], problems


def test_nothing_reaches_a_model_hub():
    forbidden = ("torch.hub.load(", "load_state_dict_from_url", "download_url_to_file",
                 "pretrained=True", "from_pretrained(\"", "hf_hub_download")
    hits = [f"{p.relative_to(PKG)}: {f}" for p in PKG.rglob("*.py")
            for f in forbidden if f in p.read_text()]
    assert hits == [], hits
