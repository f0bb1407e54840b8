# node-opcua, the OPC UA server the driver's interoperability test talks to
# (tests/test_opcua_interop.py): `npm ci` of tests/interop/nodeopcua from its committed lock file.
# Idempotent: skipped when node_modules already matches the lock file.
ensure_nodeopcua() {
  local dir="tests/interop/nodeopcua"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure: installing nodejs and npm with apt-get" >&2
    apt_install nodejs npm
  fi
  if [ -f "$dir/node_modules/.lock-installed" ] \
    && cmp -s "$dir/package-lock.json" "$dir/node_modules/.lock-installed"; then
    return 0
  fi
  echo "ensure: npm ci in $dir (node-opcua)" >&2
  if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    cp "$dir/package-lock.json" "$dir/node_modules/.lock-installed"
  else
    echo "ensure: npm ci failed; the OPC UA interoperability test will fail" >&2
  fi
}
ensure_nodeopcua
