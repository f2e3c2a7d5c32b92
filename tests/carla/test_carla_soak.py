"""Soak: 2,000 ticks of CarlaWorld on the hardened fake with random delays, lags, duplicates, stale
frames and events, checking every tick's observation and every event's attribution (issue 8).

For each tick the backend records when it collected events (``events_cutoff``: start, end); the fake
records when each event reached the callback (before, after). An event is due in the first tick of
its own episode, at or after its frame, whose collection started after the event was delivered.
"""
import random

import pytest

from carla_client.carla_backend import CarlaWorld
from carla_client.sensors import parse_sensors
from tests import fake_carla
from tests.carla.support import NEUTRAL, assert_restored

TICKS = 2000
SENSORS = parse_sensors([
    {"name": "camera", "type": "sensor.camera.rgb", "width": 8, "height": 6},
    {"name": "lidar", "type": "sensor.lidar.ray_cast", "channels": 4},
    {"name": "collision", "type": "sensor.other.collision"},
    {"name": "lane_invasion", "type": "sensor.other.lane_invasion"},
])


def event_for(carla, kind, frame, ident):
    """An event whose report carries ``ident`` (collision: the other actor; lane: the marking)."""
    if kind == "sensor.other.collision":
        return fake_carla.collision(carla, frame, other="vehicle.id%d" % ident)
    return fake_carla.Obj(frame=frame, crossed_lane_markings=[fake_carla.Obj(type="id%d" % ident)])


def ident_of(record):
    if record["type"] == "collision":
        return int(record["other"][len("vehicle.id"):])
    return int(record["markings"][0][len("id"):])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_every_observation_and_event_is_attributed_right(carla):
    rng = random.Random(8)
    server = fake_carla.FakeServer(carla, seed=8)
    server.delays = {"sensor.camera": (0.0, 0.02), "sensor.lidar": (0.0, 0.02),
                     "sensor.other": (0.0, 0.03)}
    server.lags = {"sensor.other": (0, 3)}  # events up to three frames late
    server.duplicate = 0.1
    server.stale = 0.1
    world = CarlaWorld(sensors=SENSORS, carla_module=server.module, timeout=5.0)
    ticks = []  # (frame, episode, cutoff, reset, events)
    scheduled = {}  # ident -> (kind, frame)
    episode = -1
    world.start()
    try:
        steps_left = 0
        for _ in range(TICKS):
            upcoming = server.frame + 1
            for kind in ("sensor.other.collision", "sensor.other.lane_invasion"):
                for _ in range(rng.choice((0, 0, 0, 0, 0, 1, 1, 2))):
                    ident = len(scheduled)
                    scheduled[ident] = (kind, upcoming)
                    server.events.setdefault(upcoming, []).append(
                        (kind, event_for(carla, kind, upcoming, ident)))
            if steps_left == 0:
                episode += 1
                tick = world.reset(seed=episode, options={})
                steps_left = rng.randint(5, 120)
                reset = True
            else:
                tick = world.step(NEUTRAL)
                steps_left -= 1
                reset = False
            assert tick.frame == upcoming
            assert (tick.observation["camera"] == tick.frame % 256).all(), tick.frame
            assert tick.observation["lidar"][0, 0] == tick.frame, tick.frame
            ticks.append((tick.frame, episode, world.events_cutoff, reset, tick.events))
        server.join()
    finally:
        world.close()
    assert_restored(server)

    reset_frame = {}  # episode -> its reset's frame
    for frame, ep, _, reset, events in ticks:
        if reset:
            reset_frame[ep] = frame
            assert events == [], "a reset's tick reports no event"
    episode_of_frame = {}
    for frame, ep, _, _, _ in ticks:
        episode_of_frame[frame] = ep

    delivered = {}
    for e in server.emitted_events():
        ident = int(e.data.other_actor.type_id[len("vehicle.id"):]) if e.type.endswith(
            "collision") else int(e.data.crossed_lane_markings[0].type[len("id"):])
        assert ident not in delivered, "the fake delivered an event twice"
        delivered[ident] = e

    reported = {}
    late = 0
    for index, (frame, ep, cutoff, _, events) in enumerate(ticks):
        for record in events:
            ident = ident_of(record)
            assert ident not in reported, "event %d reported twice" % ident
            reported[ident] = frame
            kind, event_frame = scheduled[ident]
            assert record["frame"] == event_frame and kind.endswith(record["type"])
            assert ident in delivered, "reported before CARLA delivered it"
            assert reset_frame[ep] < event_frame <= frame, "attributed to another episode"
            assert record["late"] == (event_frame < frame)
            late += record["late"]
            # it was in the queue by this tick's collection, and not yet by the previous one's
            assert delivered[ident].before <= cutoff[1]
            if event_frame < frame:
                previous_cutoff = ticks[index - 1][2]
                assert delivered[ident].after >= previous_cutoff[0], (
                    "event %d was delivered in time for frame %d but reported in %d"
                    % (ident, ticks[index - 1][0], frame))

    orphans = 0
    for ident, e in delivered.items():
        if ident in reported:
            continue
        orphans += 1
        ep = episode_of_frame[e.frame]
        # never reported: it arrived after the last collection of its episode (or on a reset's
        # frame, which belongs to no episode, or after the run's last tick)
        if reset_frame[ep] == e.frame:
            continue
        last = max(i for i, t in enumerate(ticks) if t[1] == ep)
        assert e.after >= ticks[last][2][0], "event %d lost: delivered in time for frame %d" % (
            ident, ticks[last][0])

    stats = world.stats()
    assert stats["late_events"] == late
    assert stats["orphaned_events"] == orphans, "every event not reported is counted"
    assert len(reported) > 200 and late > 50 and orphans > 0, (len(reported), late, orphans)
    assert stats["discarded_frames"] > 100 and stats["sensor_timeouts"] == 0
    assert len(ticks) == TICKS and episode > 10
