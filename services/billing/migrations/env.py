from gatehouse.db import run_alembic_env
from services.billing.tables import metadata

run_alembic_env(metadata)
