#!/usr/bin/env bash
# Run a command inside the project's environment (see env.sh).
set -eo pipefail
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$@"
