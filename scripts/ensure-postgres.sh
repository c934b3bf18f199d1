#!/usr/bin/env bash
# Make sure the PostgreSQL the test suite uses ($TEST_POSTGRES_URL) answers and its scratch
# database exists: start the local cluster, or install it when we are root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
check() { "$PY" -m gatehouse.pgcheck "$@"; }
if check --create; then exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    echo "postgres: installing postgresql (apt-get)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  else
    echo "postgres: not installed. Run: sudo apt-get install -y postgresql"; exit 1
  fi
fi
for v in $(ls /etc/postgresql 2>/dev/null); do
  echo "postgres: starting cluster $v/main"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || $SUDO pg_ctlcluster "$v" main start || true
done
for _ in $(seq 1 30); do
  # A fresh Debian cluster asks for passwords over TCP: give the test role one, as postgres.
  check --create && exit 0; sleep 1
done
echo "postgres: could not reach $TEST_POSTGRES_URL"; exit 1
