#!/usr/bin/env bash
# Print the path of a working Python 3.10 interpreter, or nothing. Used by `make setup`.
# Order: $SPIKEDET_PY310, pyenv's 3.10.x installs, a python3.10 on PATH that really runs.
works() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }
cands=("${SPIKEDET_PY310:-}")
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10\.[0-9]+$' | sort -t. -k3 -n -r); do
    cands+=("$(PYENV_VERSION=$v pyenv which python3.10 2>/dev/null)" "$root/versions/$v/bin/python3.10")
  done
fi
for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*; do cands+=("$d/bin/python3.10"); done
cands+=("$(command -v python3.10 2>/dev/null)" /usr/bin/python3.10 /usr/local/bin/python3.10)
for c in "${cands[@]}"; do if works "$c"; then echo "$c"; exit 0; fi; done
exit 0
