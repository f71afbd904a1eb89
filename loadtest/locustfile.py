"""Locust entry point: `locust -f loadtest/locustfile.py --host localhost:8000 [--protocol grpc] [--profile P.npz]`.

The users live in the recgen package (`generator/check/locust_users.py`) so `recgen loadtest` can run them from an
installed package too; this file only exposes them to locust.
"""

from generator.check.locust_users import TritonUser

__all__ = ["TritonUser"]
