"""Developer tool: autogenerate a migration for a service from its tables.

    python -m gatehouse.revision access "add visitors"
"""
import os
import sys
import tempfile

from alembic import command
from alembic.config import Config

from gatehouse.db import engine_for, migrate, migrations_dir


def main(service: str, message: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GATEHOUSE_VAR"] = tmp      # a scratch SQLite database at the current head
        os.environ.pop("DATABASE_URL", None)
        migrate(service)
        engine = engine_for(service)
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir(service)))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
