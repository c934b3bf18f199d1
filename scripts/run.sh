#!/usr/bin/env bash
# `make run`: start every process from the Procfile (honcho, in the background), seed the demo
# estate once the services answer, and say where to look. `make stop` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1
mkdir -p var/log var/demo
if [ -f var/run.pid ] && kill -0 "$(cat var/run.pid)" 2>/dev/null; then
  echo "already running (pid $(cat var/run.pid)); \`make stop\` first"; exit 1
fi
[ -s var/demo/agent.secret ] || gatehouse agent register demo-agent --site demo --secret-file var/demo/agent.secret
setsid nohup honcho -f Procfile start >var/log/run.log 2>&1 &
echo $! > var/run.pid
echo "started (pid $(cat var/run.pid)); logs: var/log/run.log"
for _ in $(seq 1 60); do
  if gatehouse status 2>/dev/null | grep -q '"status": "ok"'; then break; fi; sleep 1
done
gatehouse status >/dev/null 2>&1 || { echo "the console did not come up; see var/log/run.log"; tail -20 var/log/run.log; exit 1; }
echo "seeding the demo estate:"
gatehouse demo seed
sleep 1
cat <<TXT

Gatehouse is running: access, edgelink (gRPC :50051), console (http://${CONSOLE_ADDRESS:-127.0.0.1:8080}),
two simulated turnstiles (Modbus TCP :15021 t1 north-gate, :15022 t2 garage-door) and the demo site's agent.

Try it:
  .venv/bin/gatehouse present 10001 --device t1     # Li Wei, resident: granted, t1 unlocks
  .venv/bin/gatehouse sim passage --port 15021      # she walks through: a passage event
  .venv/bin/gatehouse present 30001 --device t2     # contractor with an expired card: denied
  .venv/bin/gatehouse present 99999 --device t1     # unknown card: denied
  .venv/bin/gatehouse sim force --port 15022        # someone forces t2: door_forced
  .venv/bin/gatehouse events                        # what the centre recorded, newest first

Where to look:
  http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/health    each service and agent
  http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/events    recorded access events (JSON, paged)
  var/log/run.log                            every process's log (JSON lines)
Stop everything with: make stop
TXT
