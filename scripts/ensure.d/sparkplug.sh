# Sourced by scripts/test.sh: the independent Sparkplug B decoder the Sparkplug tests compare
# our messages with (tests/sparkplug_decode/decode.py). pysparkplug pins paho-mqtt<2, which
# conflicts with the project's paho-mqtt 2.x, so it gets a virtual environment of its own,
# outside the repository; the tests only run it, they never download anything.
# Idempotent: when the pinned versions are there it only runs one `python -c`.
SPARKPLUG_DECODER_VENV="${SPARKPLUG_DECODER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent/sparkplug-decoder}"
export SPARKPLUG_DECODER_VENV
ensure_sparkplug_decoder() {
  local py="$SPARKPLUG_DECODER_VENV/bin/python"
  local pins=("pysparkplug==0.6.1" "paho-mqtt==1.6.1" "protobuf==7.36.2")
  if "$py" - "${pins[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
  then return 0; fi
  echo "ensure: installing ${pins[*]} into $SPARKPLUG_DECODER_VENV" >&2
  uv venv --quiet --clear --python 3.11 "$SPARKPLUG_DECODER_VENV"
  uv pip install --quiet --python "$py" "${pins[@]}"
}
ensure_sparkplug_decoder
