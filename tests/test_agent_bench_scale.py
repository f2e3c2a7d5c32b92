"""``python -m agent.bench --scale``: the shape of its JSON records (tiny counts, a few steps).

Speeds are not asserted here (a shared 2-core machine); docs/benchmarks.md has the measurements.
"""
import json
import subprocess
import sys

from agent.bench_scale import KEYS
from launch.interpreters import REPO_ROOT
from launch.procs import child_env


def test_scale_writes_one_record_per_sim_count_with_exactly_the_documented_keys(tmp_path,
                                                                                 sim_python):
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    command = [sys.executable, "-m", "agent.bench", "--scale", "1,2", "--tick-latency-ms", "20",
               "--scale-steps", "5", "--repeats", "1", "--sim-python", sim_python,
               "--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["sims"] for r in records] == [1, 2]
    for record in records:
        assert tuple(record) == KEYS == ("sims", "bridge_vec_steps_per_s", "subproc_steps_per_s",
                                         "ideal_steps_per_s")
        assert record["ideal_steps_per_s"] == record["sims"] * 1000 / 20
        # a 20 ms tick bounds every measurement from above (within timer noise)
        for key in ("bridge_vec_steps_per_s", "subproc_steps_per_s"):
            assert 0 < record[key] <= 1.1 * record["ideal_steps_per_s"]
    assert "| 2 | 100 |" in done.stdout  # the markdown table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
