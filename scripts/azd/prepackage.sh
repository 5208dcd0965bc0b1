#!/bin/sh
# azd prepackage hook (azure.yaml): the flows file travels inside the package (DUALSYNC_CONFIG=flows.yaml), so
# it is validated before it is packaged; a file that fails `dualsync validate` stops `azd package/deploy/up`.
#
# DUALSYNC_FLOWS_FILE (azd env set DUALSYNC_FLOWS_FILE path/to/flows.yaml): ship that file instead of the
# flows.yaml at the project root; it is validated, then copied over ./flows.yaml (the name the package holds).
# DUALSYNC_PYTHON: the interpreter with dualsync's requirements (default: .venv/bin/python, else python3).
set -eu
cd "$(dirname "$0")/../.."  # the project root, wherever azd starts the hook

flows=${DUALSYNC_FLOWS_FILE:-flows.yaml}
python=${DUALSYNC_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

if [ ! -f "$flows" ]; then
  echo "prepackage: flows file '$flows' not found (set DUALSYNC_FLOWS_FILE, or put flows.yaml at the project root)" >&2
  exit 1
fi
if ! "$python" -m shared.cli validate "$flows"; then
  echo "prepackage: '$flows' is not valid; nothing was packaged" >&2
  exit 1
fi
if [ "$flows" != "flows.yaml" ] && [ "$flows" != "./flows.yaml" ]; then
  cp "$flows" flows.yaml
  echo "prepackage: packaging $flows as flows.yaml"
fi
