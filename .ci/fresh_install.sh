#!/usr/bin/env bash
# A fresh `pip install .` without extras, in a throw-away venv (not part of
# `make test`: it installs torch, a minute or more). Checks that:
#   - the build warns of nothing deprecated (setuptools' license table, say),
#   - matplotlib, scikit-learn and tqdm are not installed,
#   - `conveyor simulate` runs, and `conveyor plot` names the extra it needs.
# Run from anywhere: .ci/fresh_install.sh   (PYTHON=python3.11 to choose one)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# torch pinned to the CPU build, as requirements.txt does: an unpinned one pulls CUDA.
TORCH="$(grep -E '^torch==' "$ROOT/requirements.txt")"

"$PYTHON" -m venv "$TMP/venv"
PIP="$TMP/venv/bin/pip"
# Build from a copy: a build must not depend on (or write into) the work tree.
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar cf -) | (mkdir "$TMP/src" && cd "$TMP/src" && tar xf -)
"$PIP" install -q "$TORCH" 2>"$TMP/torch.err" || { cat "$TMP/torch.err"; exit 1; }
# -v: pip hides the build backend's warnings otherwise.
"$PIP" install -v "$TMP/src" >"$TMP/install.log" 2>&1 || { cat "$TMP/install.log"; exit 1; }
if grep -E "BuildBackendWarning|[Dd]eprecat" "$TMP/install.log"; then
  echo "FAIL: the install printed a warning (above)"; exit 1
fi
for dist in matplotlib scikit-learn tqdm; do
  if "$PIP" show -q "$dist" 2>/dev/null; then echo "FAIL: $dist installed without extras"; exit 1; fi
done
cd "$TMP"
"$TMP/venv/bin/conveyor" simulate -P 4 -M 8 -s 1f1b | grep -q "bubble (formula)    3/11 = 27.3%" \
  || { echo "FAIL: conveyor simulate"; exit 1; }
set +e
err="$("$TMP/venv/bin/conveyor" plot bubble -o b.png 2>&1 >/dev/null)"; rc=$?
set -e
want="conveyor: error: conveyor plot needs matplotlib: pip install 'conveyor[viz]'"
if [ "$rc" != 2 ] || [ "$err" != "$want" ]; then
  echo "FAIL: conveyor plot gave exit $rc and: $err"; exit 1
fi
echo "fresh install OK: no warning, no extras installed, simulate runs, plot names [viz]"
