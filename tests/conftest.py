"""Fixtures: real RabbitMQ (a private vhost per stack), real SQLite and PostgreSQL databases."""
from __future__ import annotations

import os

import pytest

from tests.stack import Database, Stack, private_vhost

BASE_AMQP = os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture
def vhost_uri():
    with private_vhost(BASE_AMQP) as uri:
        yield uri


@pytest.fixture(params=DATABASES)
def database(request, tmp_path):
    db = Database(request.param, tmp_path)
    yield db
    db.drop()


@pytest.fixture
def migrated(database, monkeypatch):
    """`migrated("parking")`: that service's engine on this test's database (SQLite file or
    PostgreSQL schema), migrated to head; disposed after the test."""
    from gatehouse.db import engine_for, migrate
    for key, value in database.env().items():
        monkeypatch.setenv(key, value)
    if not database.url:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    engines = []

    def open_engine(service: str):
        migrate(service)
        engines.append(engine_for(service))
        return engines[-1]
    yield open_engine
    for engine in engines:
        engine.dispose()


@pytest.fixture
def stack(request, tmp_path, database, vhost_uri):
    s = Stack(tmp_path, database, vhost_uri)
    s.migrate()
    yield s
    s.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for path in sorted(s.logs.glob("*.log")):
            print(f"----- {path.name} -----\n{path.read_text(errors='replace')[-4000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
