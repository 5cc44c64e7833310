#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter: $PYTHON if set, else python3.12 / python3.13 /
# python3 on PATH, else a 3.12+ installed through pyenv. Exits 1 with advice when none exists.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for candidate in ${PYTHON:-} python3.12 python3.13 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if ok "$path"; then echo "$path"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -V); do
    path="$(pyenv root)/versions/$version/bin/python"
    if ok "$path"; then echo "$path"; exit 0; fi
  done
fi
echo "error: Python >= 3.12 not found; install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
exit 1
