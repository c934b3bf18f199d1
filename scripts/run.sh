#!/usr/bin/env bash
# `make run`: start every process under supervisor (deploy/supervisord.conf), seed the demo
# estate once the services answer, and say where to look. `make stop` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
CTL=".venv/bin/supervisorctl -c deploy/supervisord.conf"
mkdir -p var/log var/demo
if $CTL pid >/dev/null 2>&1; then
  echo "already running; \`make stop\` first, or see: $CTL status"; exit 1
fi
[ -s var/demo/agent.secret ] || gatehouse agent register demo-agent --site demo --secret-file var/demo/agent.secret
supervisord -c deploy/supervisord.conf
echo "started under supervisor; logs in var/log/"
for _ in $(seq 1 60); do
  if gatehouse status 2>/dev/null | grep -q '"status": "ok"'; then break; fi; sleep 1
done
gatehouse status >/dev/null 2>&1 || { echo "the console did not come up; see var/log/"; $CTL status; exit 1; }
echo "seeding the demo estate:"
gatehouse demo seed | tee var/demo/seed.txt
sleep 2
# the garage: a resident's car in, a visitor in, an unsure read for the operator
for _ in $(seq 1 30); do   # once the agent has the garage's lanes from the centre
  gatehouse camera in1 --plate 皖A12345 | grep -q '"opened": true' && break; sleep 1
done && echo "  garage: resident 皖A12345 drove in"
gatehouse camera in1 --plate 苏E12345 >/dev/null && echo "  garage: visitor 苏E12345 drove in (pays at the exit)"
gatehouse camera in1 --plate 皖A1Z345 --confidence 0.55 >/dev/null && echo "  garage: an unsure read waits for an operator"
# an alarm to look at: someone forces the garage door
gatehouse sim force --port 15022 >/dev/null && echo "  forced garage-door once: a door_forced alarm is raised"
$CTL status
cat <<TXT

Gatehouse is running: access, parking, billing, patrol, notify, edgelink (gRPC :50051), the patrol
handheld server (gRPC :50052), console (http://${CONSOLE_ADDRESS:-127.0.0.1:8080}), two simulated
turnstiles (Modbus TCP :15021 t1 north-gate, :15022 t2 garage-door), a garage with two lanes
(barriers :15031 in1, :15032 out1; displays :15041, :15042), the demo site's agent, a fake payment
provider (:8030), a local SMTP server (:2525, mail in var/mail) and a fake SMS provider (:8025).

Try it:
  .venv/bin/gatehouse present 10001 --device t1     # Li Wei, resident: granted, t1 unlocks
  .venv/bin/gatehouse sim passage --port 15021      # she walks through: a passage event
  .venv/bin/gatehouse present 30001 --device t2     # contractor with an expired card: denied
  .venv/bin/gatehouse present 99999 --device t1     # unknown card: denied
  .venv/bin/gatehouse sim force --port 15022        # someone forces t2: door_forced
  .venv/bin/gatehouse events                        # what the centre recorded, newest first
  .venv/bin/gatehouse present 20002 --device t1     # Zhao Lei, cleaner: only in cleaning hours (Asia/Shanghai)
  .venv/bin/gatehouse present --pin 246810 --device t1               # Wang Fang's PIN
  .venv/bin/gatehouse present --qr "\$(tail -1 var/demo/seed.txt | awk '{print \$NF}')" --device t1   # the visitor pass
  .venv/bin/gatehouse qr p-zhangmin                 # a resident's 5-minute QR code (try it with --qr)
  .venv/bin/gatehouse alarms --site demo            # the forced door; acknowledge: gatehouse ack ID --operator you
  .venv/bin/gatehouse presence --site demo          # who is inside the estate now
  .venv/bin/gatehouse emergency on --site demo --by you --reason drill    # every turnstile free to exit
  .venv/bin/gatehouse import deploy/demo/people.csv --site demo --kind people   # bulk import (CSV or XLSX)
  .venv/bin/gatehouse camera out1 --plate 苏E12345   # the visitor leaves: fee on the display, the exit waits
  .venv/bin/gatehouse pay 苏E12345 --lot demo-garage --by cashier-1   # ... the cashier takes it: the exit opens
  .venv/bin/gatehouse camera out1 --plate 皖A12345   # a resident leaves: free
  curl -s http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/lots/demo-garage/reads   # unsure reads for an operator
  .venv/bin/gatehouse billing arrears --site demo    # who owes what since when (2-1-301 is overdue)
  .venv/bin/gatehouse billing run --site demo --period $(date +%Y-%m)   # this month's run (a progress bar; again: "already billed", --again adds nothing)
  .venv/bin/gatehouse patrol rounds --site demo      # the night route: one round walked, one missed
  .venv/bin/gatehouse patrol walk demo-night --guard p-wangfang --pin 1357 --offline-after 2   # a handheld; then: gatehouse patrol sync
  .venv/bin/gatehouse notify inbox p-wangfang        # what security heard: the forced door, the missed round
  .venv/bin/gatehouse notify mail                    # what reached the local SMTP server (var/mail)

  $CTL stop edgelink     # the centre is gone: cards still work, events wait in the outbox
  $CTL start edgelink    # ... and arrive once each, in order

Where to look:
  http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/health    each service and agent
  http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/events    recorded access events (JSON, paged)
  http://${CONSOLE_ADDRESS:-127.0.0.1:8080}/api/sites/demo/alarms   alarms; every endpoint: docs/access.md
  docs/parking.md, docs/billing.md, docs/patrol.md, docs/notify.md   the other areas and their endpoints
  http://127.0.0.1:8025/requests             what the fake SMS provider received
  var/log/<process>.log                      each process's log (JSON lines)
Stop everything with: make stop
TXT
