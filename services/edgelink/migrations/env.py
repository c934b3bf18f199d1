from gatehouse.db import run_alembic_env
from services.edgelink.tables import metadata

run_alembic_env(metadata)
