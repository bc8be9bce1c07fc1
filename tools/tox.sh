#!/usr/bin/env bash
# tox for this repo's matrix (tox.ini): makes sure tox + tox-uv are there, lets uv see every
# pyenv Python and forbids it to download interpreters, then runs tox with the given arguments.
#   tools/tox.sh -p 2                  the whole env_list, two at a time
#   tools/tox.sh -e parity             upstream parity
# TOX=/path/to/tox uses that tox instead of the tools venv below.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ -z "${TOX:-}" ]]; then
  tools_venv="$root/.tox/.tools-venv"
  if [[ ! -x "$tools_venv/bin/tox" ]] || ! "$tools_venv/bin/python" -c 'import tox_uv' 2>/dev/null; then
    python3 -m venv "$tools_venv"
    "$tools_venv/bin/python" -m pip install -q 'tox>=4.11' 'tox-uv>=1.11'
  fi
  TOX="$tools_venv/bin/tox"
fi

# pyenv keeps one version active; list every installed 3.9-3.13 after it so that its shims
# (python3.9 ... python3.13) answer for uv, while `python3` stays what it was.
if [[ -z "${PYENV_VERSION:-}" ]] && command -v pyenv >/dev/null 2>&1; then
  active=$(pyenv version-name 2>/dev/null | cut -d: -f1 || true)
  others=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|1[0-3])\.[0-9]+$' | sort -V | tr '\n' ':' || true)
  export PYENV_VERSION="${active:+$active:}${others%:}"
fi
export UV_PYTHON_DOWNLOADS=never

exec "$TOX" "$@"
