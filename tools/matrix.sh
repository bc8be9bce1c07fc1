#!/usr/bin/env bash
# The full compatibility matrix (tox.ini's env_list, two envs at a time), then docs/compatibility.md.
# Extra arguments go to tox, e.g. tools/matrix.sh -e py39-rq19-redis4,py313-rq30-redis8
# It tests the work tree as it is (tox builds the package from it, pytest reads tests/ from it);
# for exactly the committed state, run it in a clean clone: git clone . /tmp/m && /tmp/m/tools/matrix.sh
# Upstream parity is a separate command: tools/tox.sh -e parity (its summary lands in the table
# when .rq-sdists/parity.json exists).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rm -rf .tox/results .tox/matrix.json
"$root/tools/tox.sh" -p "${TOX_PARALLEL:-2}" --result-json .tox/matrix.json "$@"
status=$?
python3 tools/compat_table.py
exit $status
