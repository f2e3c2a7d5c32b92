"""Test double of CARLA 0.8.4's PythonClient package (see ../README.md)."""
