from gatehouse.db import run_alembic_env
from services.patrol.tables import metadata

run_alembic_env(metadata)
