"""Check that the test PostgreSQL answers; create its role and scratch database when missing.

Used by scripts/ensure-postgres.sh. Exit 0 when the database is usable, 1 otherwise.
"""
import argparse
import os
import shutil
import subprocess
import sys

import psycopg
from sqlalchemy.engine import make_url


def _bootstrap_role(user: str, password: str) -> None:
    # Local superuser access through the postgres OS account (peer auth on Debian).
    if os.geteuid() != 0 or not shutil.which("runuser"):
        return
    sql = (f"DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') THEN "
           f"CREATE ROLE \"{user}\" LOGIN SUPERUSER PASSWORD '{password}'; END IF; END$$;")
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-c", sql],
                   check=False, capture_output=True, cwd="/")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--bootstrap", action="store_true")
    args = parser.parse_args()
    url = make_url(os.environ.get("TEST_POSTGRES_URL",
                                  "postgresql+psycopg://gatehouse:gatehouse@127.0.0.1:5432/gatehouse_test"))
    conninfo = dict(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                    password=url.password or "", connect_timeout=3)
    for attempt in range(2):
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone()
                if not exists and args.create:
                    conn.execute(f'CREATE DATABASE "{url.database}"')
            print(f"postgres: {url.host}:{url.port or 5432}/{url.database} is ready")
            return 0
        except psycopg.OperationalError as exc:
            refused = "refused" in str(exc) or "No such file" in str(exc)
            if attempt == 0 and not refused:
                _bootstrap_role(url.username, url.password or "")
                continue
            print(f"postgres: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
            return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
