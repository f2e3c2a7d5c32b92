"""Kept for existing imports: the compliance suite now ships in the package, carla_client/compliance.py."""
from carla_client.compliance import (NEUTRAL, WorldServerCompliance, assert_matches_spec,  # noqa: F401
                                     drive)
