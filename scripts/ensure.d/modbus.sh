# Modbus peers not written in Python, for tests/test_modbus_interop.py: libmodbus (a C server
# the test compiles with gcc) and mbpoll (a command-line client). Sourced by scripts/test.sh.
if ! { pkg-config --exists libmodbus 2>/dev/null && command -v mbpoll >/dev/null 2>&1 \
       && command -v gcc >/dev/null 2>&1; }; then
  echo "ensure.d/modbus: installing libmodbus-dev, mbpoll and gcc with apt-get" >&2
  apt_install libmodbus-dev mbpoll gcc pkg-config
fi
