#!/usr/bin/env bash
# `make stop`: stop what `make run` started.
cd "$(dirname "$0")/.."
if [ -f var/run.pid ] && kill -0 "$(cat var/run.pid)" 2>/dev/null; then
  pid=$(cat var/run.pid)
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  echo "stopped"
else
  echo "not running"
fi
rm -f var/run.pid
