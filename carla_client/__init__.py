"""The sim side: serves a driving world (built-in or CARLA) over the bridge, under the simulator's own Python."""
