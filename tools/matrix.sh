#!/usr/bin/env bash
# The full compatibility matrix (tox.ini's env_list, two envs at a time), then docs/compatibility.md.
#   tools/matrix.sh                 the matrix, then the table (with the parity section of the
#                                   last parity run, .rq-sdists/parity.json, if there is one)
#   tools/matrix.sh --parity        first upstream parity (tools/tox.sh -e parity: RQ's whole test
#                                   suite with and without the guard), then the matrix and the table
# Other arguments go to tox, e.g. tools/matrix.sh -e py39-rq19-redis4,py313-rq30-redis8
# It tests the work tree as it is (tox builds the package from it, pytest reads tests/ from it);
# for exactly the committed state, run it in a clean clone: git clone . /tmp/m && /tmp/m/tools/matrix.sh
# Exit status: non-zero when parity, a cell or the table (a cell contradicting its name) failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
status=0
if [[ "${1:-}" == "--parity" ]]; then
  shift
  SECONDS=0
  "$root/tools/tox.sh" -e parity || status=$?
  echo "matrix.sh: parity took $((SECONDS / 60)) min"
fi
SECONDS=0
rm -rf .tox/results .tox/matrix.json
mkdir -p .tox/results  # what tox is about to build and test, for the table
echo "commit $(git rev-parse --short HEAD)$(git status --porcelain --untracked-files=no | grep -q . && echo ' plus uncommitted changes')" > .tox/results/_tree.txt
"$root/tools/tox.sh" -p "${TOX_PARALLEL:-2}" --result-json .tox/matrix.json "$@" || status=$?
echo "matrix.sh: the matrix took $((SECONDS / 60)) min"
python3 tools/compat_table.py || status=$?
exit $status
