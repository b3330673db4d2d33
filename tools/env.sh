# Sourced by the tool scripts: runs setup and puts the venv first on PATH.
EMBER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMBER_VENV="$("$EMBER_ROOT/tools/setup.sh" | tail -n 1)"
export PATH="$EMBER_VENV/bin:$PATH"
# The cuDNN frontend headers tools/setup.sh unpacked (CMake looks here for them).
export EMBER_CUDNN_FRONTEND_INCLUDE="${EMBER_CACHE:-$HOME/.cache/ember}/cudnn-frontend-$(sed -n 's/^fe_version=//p' "$EMBER_ROOT/tools/setup.sh")/include"
export CCACHE_DIR="${CCACHE_DIR:-${EMBER_CACHE:-$HOME/.cache/ember}/ccache}"
