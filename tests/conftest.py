"""Fixtures: real RabbitMQ (a private vhost per stack), real SQLite and PostgreSQL databases."""
from __future__ import annotations

import os
import subprocess
import urllib.parse
import uuid

import pytest

from tests.stack import Database, Stack, rabbitmqctl

BASE_AMQP = os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
DATABASES = ["sqlite", "postgresql"]


def _local_broker() -> bool:
    return urllib.parse.urlparse(BASE_AMQP).hostname in ("127.0.0.1", "localhost", "::1")


@pytest.fixture
def vhost_uri():
    """A fresh vhost, so no queue or message of another test can leak in."""
    ctl = rabbitmqctl()
    if not (ctl and _local_broker()):
        yield BASE_AMQP
        return
    user = urllib.parse.urlparse(BASE_AMQP).username or "guest"
    vhost = f"gh-test-{uuid.uuid4().hex[:10]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"], check=True,
                   capture_output=True)
    parsed = urllib.parse.urlparse(BASE_AMQP)
    yield parsed._replace(path="/" + vhost).geturl()
    subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(params=DATABASES)
def database(request, tmp_path):
    db = Database(request.param, tmp_path)
    yield db
    db.drop()


@pytest.fixture
def stack(request, tmp_path, database, vhost_uri):
    s = Stack(tmp_path, database, vhost_uri)
    s.migrate()
    yield s
    s.close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for path in sorted(s.logs.glob("*.log")):
            print(f"----- {path.name} -----\n{path.read_text(errors='replace')[-4000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
