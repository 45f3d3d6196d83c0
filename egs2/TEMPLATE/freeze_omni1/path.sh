# Environment of the Freeze-Omni recipes; sourced by freeze_omni.sh (and by hand:
# `. ./path.sh` in a recipe dir gives you the same python and helpers).
# The repository root is found from this file's real location, so recipes reach it through
# their symlink, and copies of a recipe elsewhere work as long as the links point here.
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
export MAIN_ROOT

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    :  # keep the environment the user activated
elif [ -f "${MAIN_ROOT}/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "${MAIN_ROOT}/.venv/bin/activate"
else
    echo "path.sh: no ${MAIN_ROOT}/.venv: run 'make setup' at the repository root" \
         "(using $(command -v python3 || echo 'no python3'))" >&2
fi

export PATH="${PWD}/utils:${PATH}:/usr/lib/sctk/bin"   # sclite: Debian's sctk location
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export LC_ALL=C                  # Kaldi tables are sorted in byte order
export PYTHONIOENCODING=UTF-8    # transcripts are UTF-8 whatever the locale
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per job; jobs parallelize
