from gatehouse.db import run_alembic_env
from services.parking.tables import metadata

run_alembic_env(metadata)
