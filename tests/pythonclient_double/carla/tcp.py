"""``carla.tcp`` double: the exception the PythonClient raises for every network failure."""


class TCPConnectionError(Exception):
    pass
