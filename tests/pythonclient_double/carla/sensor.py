"""``carla.sensor`` double: sensor definitions for CarlaSettings, and the data read_data returns."""
import numpy as np


class Sensor(object):
    def __init__(self, name, sensor_type):
        self.SensorName = name
        self.SensorType = sensor_type
        self.PositionX, self.PositionY, self.PositionZ = 0.2, 0.0, 1.3
        self.RotationPitch = self.RotationRoll = self.RotationYaw = 0.0

    def set(self, **kwargs):
        for key, value in kwargs.items():
            if not hasattr(self, key):
                raise ValueError("sensor.Sensor: no key named %r" % key)
            setattr(self, key, value)

    def set_position(self, x, y, z):
        self.PositionX, self.PositionY, self.PositionZ = x, y, z

    def set_rotation(self, pitch, yaw, roll):
        self.RotationPitch, self.RotationYaw, self.RotationRoll = pitch, yaw, roll


class Camera(Sensor):
    def __init__(self, name, **kwargs):
        Sensor.__init__(self, name, "CAMERA")
        self.PostProcessing = "SceneFinal"
        self.ImageSizeX, self.ImageSizeY, self.FOV = 720, 512, 90.0
        self.set(**kwargs)

    def set_image_size(self, pixels_x, pixels_y):
        self.ImageSizeX, self.ImageSizeY = pixels_x, pixels_y


class Lidar(Sensor):
    def __init__(self, name, **kwargs):
        Sensor.__init__(self, name, "LIDAR_RAY_CAST")
        self.Channels, self.Range, self.PointsPerSecond = 32, 50.0, 56000
        self.RotationFrequency, self.UpperFovLimit, self.LowerFovLimit = 10.0, 10.0, -30.0
        self.ShowDebugPoints = False
        self.set(**kwargs)


class Image(object):
    def __init__(self, frame_number, width, height, image_type, fov, raw_data):
        self.frame_number, self.width, self.height = frame_number, width, height
        self.type, self.fov, self.raw_data = image_type, fov, raw_data

    @property
    def data(self):
        return np.frombuffer(self.raw_data, dtype=np.uint8).reshape(self.height, self.width, 4)


class PointCloud(object):
    def __init__(self, frame_number, array):
        self.frame_number, self.array = frame_number, array


class LidarMeasurement(object):
    def __init__(self, frame_number, horizontal_angle, channels, point_count_by_channel,
                 point_cloud):
        self.frame_number, self.horizontal_angle, self.channels = (frame_number, horizontal_angle,
                                                                   channels)
        self.point_count_by_channel, self.point_cloud = point_count_by_channel, point_cloud
