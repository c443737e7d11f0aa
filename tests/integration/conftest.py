"""Fixtures shared by the integration tests."""

from tests.redis_server import redis_server  # noqa: F401 - a fixture: a redis-server of the test's own
