"""``python -m carla_client.client_version``: one JSON line naming this interpreter's CARLA client.

``{"python": "3.7.16", "carla": "0.9.15"}``, or ``"carla": null`` with ``"error"`` saying why it
does not import. ``python -m launch doctor`` runs it under each interpreter it checks.
"""
import json
import sys

from bridge.errors import BridgeError
from carla_client import carla_api


def describe() -> dict:
    found = {"python": "%d.%d.%d" % sys.version_info[:3], "carla": None}
    try:
        found["carla"] = carla_api.module_version(carla_api.import_carla())
    except BridgeError as e:  # CarlaUnavailableError: not installed, or built for another Python
        found["error"] = str(e).split(";")[0]
    return found


if __name__ == "__main__":
    print(json.dumps(describe()), flush=True)
