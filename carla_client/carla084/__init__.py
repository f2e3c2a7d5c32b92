"""CARLA 0.8.4: our client of its TCP + protobuf protocol, its settings file and sensor payloads, the
``--world carla084`` backend (through the installed PythonClient or our own client), and the server
side used by ``python -m carla_client.carla084_server``. See docs/carla084.md.
"""
