#!/usr/bin/env bash
# The one install path, used by README, .ci/run and the Docker images.
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to engine,bot,dev
# Creates ./.venv unless SPOOKY_NO_VENV=1 (the Docker images install into their own Python).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-engine,bot,dev}"
if [ "${SPOOKY_NO_VENV:-0}" != "1" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
editable="-e"
[ "${SPOOKY_EDITABLE:-1}" = "1" ] || editable=""
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c constraints.txt $editable ".[${extras}]"
case ",${extras}," in
  *,engine,*)
    # Only taming's model modules are used; its metadata asks for pytorch-lightning, which we
    # never import, so it is installed without dependencies (einops, numpy come from the extra).
    python -m pip install --quiet --no-deps taming-transformers-rom1504==0.0.6 ;;
esac
echo "installed spookygan[${extras}]"
