"""``python -m launch doctor`` names the CARLA client version of each interpreter (issue 8)."""
import sys

from launch import doctor


def test_doctor_names_the_carla_client_of_each_interpreter(sim_python):
    rows = doctor.check_carla_clients([("trainer", sys.executable), ("sim", sim_python)], None)
    trainer, sim = rows
    assert trainer.status == doctor.OK and trainer.check == "trainer: CARLA client"
    assert "carla 0.9.16" in trainer.detail and "Python 3.11" in trainer.detail
    assert sim.status == doctor.OK and sim.detail.startswith("none (Python 3.6"), sim
    # serving CARLA from an interpreter without a client fails, with the fix
    failing = doctor.check_carla_clients([("sim", sim_python)], "sim")[0]
    assert failing.status == doctor.FAIL and "carla==0.9.15" in failing.fix
