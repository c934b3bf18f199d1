"""Settings from the environment, with the embedded defaults `make run` uses."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    path = Path(os.environ.get("GATEHOUSE_VAR", ROOT / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def amqp_uri() -> str:
    return os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")


def database_url() -> str | None:
    """PostgreSQL when DATABASE_URL is set; None means the embedded SQLite files under var/."""
    return os.environ.get("DATABASE_URL") or None


def edgelink_address() -> str:
    return os.environ.get("EDGELINK_ADDRESS", "127.0.0.1:50051")


def console_address() -> str:
    return os.environ.get("CONSOLE_ADDRESS", "127.0.0.1:8080")


def nameko_config(**extra) -> dict:
    config = {"AMQP_URI": amqp_uri(), "serializer": "json", "max_workers": 10}
    config.update(extra)
    return config
