"""The command groups' tests use the peers of the packages they drive."""

from tests.credentials.conftest import oauth, secret_file
from tests.state.conftest import redis_server, state_key

__all__ = ["oauth", "redis_server", "secret_file", "state_key"]
