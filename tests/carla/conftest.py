"""Fixtures of the CARLA backend's tests: ``carla`` (the real module) and ``server`` (a fake server)."""
import pytest

from tests import fake_carla
from tests.carla.support import require_carla


@pytest.fixture
def carla():
    """The real carla module; skips (or fails under CI=true) without it."""
    return require_carla()


@pytest.fixture
def server(carla):
    return fake_carla.FakeServer(carla)
