"""``launch up world=carla084``: the launcher drives a 0.8.4 world (our carla084_server, started here as a
user would start a real 0.8.4 server) and a short PPO run trains through it; plus its command lines."""
from __future__ import annotations

import pytest

from launch import commands
from launch.config import load_config
from launch.doctor import check_world_needs
from carla_client import registry
from tests.test_carla084_process import start_server
from tests.test_launch import TINY, launch_run  # noqa: F401  (launch_run is a fixture)


def test_world_carla084_command_lines():
    config = load_config(overrides=["world=carla084", "carla.port=3000", "carla.executable=/x/CarlaUE4.sh",
                                    "clients.count=2",
                                    "clients.extra_args=--legacy-client,wire"])
    argv = commands.client_argv(config, 1, "/sim/python")
    assert argv[argv.index("--world") + 1] == "carla084"
    assert argv[argv.index("--port") + 1] == "3003" and "--tm-port" not in argv
    assert argv[-2:] == ["--legacy-client", "wire"]
    assert commands.carla_server_argv(config, 0)[1:3] == ["-carla-server", "-carla-world-port=3000"]
    with pytest.raises(ValueError, match="builtin, carla, carla084"):
        load_config(overrides=["world=carla0.7"])


def test_doctor_checks_the_worlds_python_range_and_client_libraries(sim_python):
    from launch.doctor import OK, Row
    rows = check_world_needs(registry.get("carla084"), sim_python,
                             Row(OK, "sim interpreter", f"Python 3.6.15 at {sim_python}"))
    assert [r.status for r in rows] == ["ok", "ok"]
    assert "google.protobuf" in rows[1].detail
    too_new = check_world_needs(registry.get("carla084"), sim_python,
                                Row(OK, "sim interpreter", "Python 3.13.0 at x"))
    assert too_new[0].status == "FAIL" and "3.5 to 3.12" in too_new[0].detail


@pytest.mark.slow
@pytest.mark.crossversion
@pytest.mark.timeout(300)
def test_launch_up_trains_ppo_through_a_0_8_4_world(launch_run, sim_python):  # noqa: F811
    server = start_server(sim_python)
    try:
        run = launch_run(["world=carla084", f"carla.port={server.port}", "carla.host=127.0.0.1",
                          "tensorboard.enabled=false"],
                         ["total_timesteps=2048", *TINY, "checkpoint_every=1024"], clients=1)
        assert run.finish(240) == 0, run.text()[-3000:]
        assert (run.run_dir / "model.zip").exists()
        client_log = run.log("carla_client-0")
        assert "0.8.4 server" in client_log and "wire client" in client_log
        assert "--world carla084" in run.text() or "carla084" in client_log
        run.assert_nothing_left()
    finally:
        server.close()
