# Source this to use the built package: venv, colcon install, Fast DDS profile.
# (bash or zsh; the make targets do it for you.)
_RV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
# shellcheck disable=SC1091
. "$_RV_ROOT/.venv/bin/activate"
# shellcheck disable=SC1091
. "$_RV_ROOT/install/setup.sh"
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_RV_ROOT/config/fastdds_large_data.xml}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_HOME=${ROS_HOME:-$_RV_ROOT/build/ros_home}
export ROS_LOG_DIR=${ROS_LOG_DIR:-$ROS_HOME/log}
export PYTHONUNBUFFERED=1
unset _RV_ROOT
