# Sourced by scripts/demo.sh and scripts/test.sh: make sure uv (and, when asked, mosquitto) exist.
# Works on a fresh Debian 12 machine with Python 3.11, as root or as a user with sudo.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
export PATH="$HOME/.local/bin:$PATH"

apt_install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_uv() {
  command -v uv >/dev/null 2>&1 && return 0
  echo "bootstrap: installing uv from PyPI" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv
  command -v uv >/dev/null 2>&1 || { echo "bootstrap: uv not found after install" >&2; exit 1; }
}

ensure_mosquitto() {
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then return 0; fi
  echo "bootstrap: installing mosquitto with apt-get" >&2
  apt_install mosquitto
  # The tests start their own broker on a free port; the packaged service is not needed.
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
