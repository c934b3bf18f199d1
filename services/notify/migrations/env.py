from gatehouse.db import run_alembic_env
from services.notify.tables import metadata

run_alembic_env(metadata)
