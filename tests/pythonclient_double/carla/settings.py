"""``carla.settings`` double: CarlaSettings, whose str() is the settings file's INI text."""
from carla import sensor as carla_sensor

_SECTIONS = (
    ("CARLA/Server", ("SynchronousMode", "SendNonPlayerAgentsInfo")),
    ("CARLA/QualitySettings", ("QualityLevel",)),
    ("CARLA/LevelSettings", ("PlayerVehicle", "NumberOfVehicles", "NumberOfPedestrians",
                             "WeatherId", "SeedVehicles", "SeedPedestrians",
                             "DisableTwoWheeledVehicles")),
)


class CarlaSettings(object):
    def __init__(self, **kwargs):
        self.SynchronousMode = True
        self.SendNonPlayerAgentsInfo = False
        self.QualityLevel = "Epic"
        self.PlayerVehicle = None
        self.NumberOfVehicles, self.NumberOfPedestrians, self.WeatherId = 20, 30, 1
        self.SeedVehicles = self.SeedPedestrians = None
        self.DisableTwoWheeledVehicles = False
        self._sensors = []
        self.set(**kwargs)

    def set(self, **kwargs):
        for key, value in kwargs.items():
            if not hasattr(self, key):
                raise ValueError("CarlaSettings: no key named %r" % key)
            setattr(self, key, value)

    def add_sensor(self, sensor):
        if not isinstance(sensor, carla_sensor.Sensor):
            raise ValueError("Sensor not supported")
        self._sensors.append(sensor)

    def __str__(self):
        lines = []
        for section, keys in _SECTIONS:
            values = [(k, getattr(self, k)) for k in keys if getattr(self, k) is not None]
            if values:
                lines += ["[%s]" % section] + ["%s=%s" % kv for kv in values] + [""]
        lines += ["[CARLA/Sensor]", "Sensors=" + ",".join(s.SensorName for s in self._sensors), ""]
        for sensor in self._sensors:
            lines.append("[CARLA/Sensor/%s]" % sensor.SensorName)
            for key in sorted(k for k in vars(sensor) if not k.startswith("_")):
                lines.append("%s=%s" % (key, getattr(sensor, key)))
            lines.append("")
        return "\n".join(lines)
