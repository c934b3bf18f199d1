#!/usr/bin/env bash
# `make stop`: stop what `make run` started.
cd "$(dirname "$0")/.."
CTL=".venv/bin/supervisorctl -c deploy/supervisord.conf"
if $CTL pid >/dev/null 2>&1; then
  $CTL shutdown >/dev/null && echo "stopped"
else
  echo "not running"
fi
