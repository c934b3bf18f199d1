#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at $AMQP_URI: use it if it does; otherwise start the
# local rabbitmq-server, installing it first when we are root; otherwise say what to run.
set -euo pipefail
URI=${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/}
read -r HOST PORT < <(python3 - "$URI" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 5672)
PY
)
answers() { python3 - "$HOST" "$PORT" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(8) else 1)   # a broker answers the protocol header with connection.start
except OSError:
    sys.exit(1)
PY
}
if answers; then echo "broker: RabbitMQ answers at $HOST:$PORT"; exit 0; fi
case "$HOST" in 127.*|localhost|::1) ;; *) echo "broker: nothing answers at $URI (a remote broker: start it there)"; exit 1;; esac
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if ! command -v rabbitmq-server >/dev/null && ! [ -x /usr/sbin/rabbitmq-server ]; then
  if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    echo "broker: installing rabbitmq-server (apt-get)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "broker: no RabbitMQ at $URI and none installed. Run:"
    echo "  sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached"
    exit 1
  fi
fi
echo "broker: starting the local rabbitmq-server"
PATH=$PATH:/usr/sbin $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 90); do answers && { echo "broker: RabbitMQ answers at $HOST:$PORT"; exit 0; }; sleep 1; done
echo "broker: rabbitmq-server did not answer within 90 s; see /var/log/rabbitmq/"; exit 1
