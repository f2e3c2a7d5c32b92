"""The ``carla_server`` protobuf messages of CARLA 0.8.4, declared here at run time.

The message and field layout follows the protocol's published facts (names, numbers, types; see
docs/carla084.md); no generated ``_pb2`` module is involved, so any protobuf runtime from 3.19 (the
last for Python 3.6) to today's builds these classes, and no ``protoc`` is needed.
"""
from typing import Any, Dict, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "carla_server"

_F = descriptor_pb2.FieldDescriptorProto
FLOAT, BOOL, STRING = _F.TYPE_FLOAT, _F.TYPE_BOOL, _F.TYPE_STRING
UINT32, UINT64, FIXED32 = _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FIXED32
MESSAGE, ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM
REPEATED = "repeated"

# name -> fields (name, number, type, type name for messages/enums, "repeated" or "", oneof or "")
_MESSAGES = (
    ("Vector3D", (("x", 1, FLOAT), ("y", 2, FLOAT), ("z", 3, FLOAT))),
    ("Rotation3D", (("pitch", 1, FLOAT), ("yaw", 2, FLOAT), ("roll", 3, FLOAT))),
    ("Transform", (("location", 1, MESSAGE, "Vector3D"), ("orientation", 2, MESSAGE, "Vector3D"),
                   ("rotation", 3, MESSAGE, "Rotation3D"))),
    ("BoundingBox", (("transform", 1, MESSAGE, "Transform"), ("extent", 2, MESSAGE, "Vector3D"))),
    ("Sensor", (("id", 1, FIXED32), ("type", 2, ENUM, "Sensor.Type"), ("name", 3, STRING))),
    ("Vehicle", (("transform", 1, MESSAGE, "Transform"), ("bounding_box", 4, MESSAGE, "BoundingBox"),
                 ("forward_speed", 3, FLOAT))),
    ("Pedestrian", (("transform", 1, MESSAGE, "Transform"),
                    ("bounding_box", 4, MESSAGE, "BoundingBox"), ("forward_speed", 3, FLOAT))),
    ("TrafficLight", (("transform", 1, MESSAGE, "Transform"),
                      ("state", 2, ENUM, "TrafficLight.State"))),
    ("SpeedLimitSign", (("transform", 1, MESSAGE, "Transform"), ("speed_limit", 2, FLOAT))),
    ("Agent", (("id", 1, FIXED32),
               ("vehicle", 2, MESSAGE, "Vehicle", "", "agent"),
               ("pedestrian", 3, MESSAGE, "Pedestrian", "", "agent"),
               ("traffic_light", 4, MESSAGE, "TrafficLight", "", "agent"),
               ("speed_limit_sign", 5, MESSAGE, "SpeedLimitSign", "", "agent"))),
    ("RequestNewEpisode", (("ini_file", 1, STRING),)),
    ("SceneDescription", (("player_start_spots", 1, MESSAGE, "Transform", REPEATED),
                          ("sensors", 2, MESSAGE, "Sensor", REPEATED), ("map_name", 3, STRING))),
    ("EpisodeStart", (("player_start_spot_index", 1, UINT32),)),
    ("EpisodeReady", (("ready", 1, BOOL),)),
    ("Control", (("steer", 1, FLOAT), ("throttle", 2, FLOAT), ("brake", 3, FLOAT),
                 ("hand_brake", 4, BOOL), ("reverse", 5, BOOL))),
    ("Measurements", (("platform_timestamp", 1, UINT32), ("game_timestamp", 2, UINT32),
                      ("player_measurements", 3, MESSAGE, "Measurements.PlayerMeasurements"),
                      ("non_player_agents", 4, MESSAGE, "Agent", REPEATED),
                      ("frame_number", 5, UINT64))),
    ("Measurements.PlayerMeasurements", (
        ("transform", 1, MESSAGE, "Transform"), ("acceleration", 3, MESSAGE, "Vector3D"),
        ("forward_speed", 4, FLOAT), ("collision_vehicles", 5, FLOAT),
        ("collision_pedestrians", 6, FLOAT), ("collision_other", 7, FLOAT),
        ("intersection_otherlane", 8, FLOAT), ("intersection_offroad", 9, FLOAT),
        ("autopilot_control", 10, MESSAGE, "Control"),
        ("bounding_box", 12, MESSAGE, "BoundingBox"))),
)

# enum (owner message.name) -> values
_ENUMS = (
    ("Sensor.Type", (("UNKNOWN", 0), ("CAMERA", 1), ("LIDAR_RAY_CAST", 2))),
    ("TrafficLight.State", (("GREEN", 0), ("YELLOW", 1), ("RED", 2))),
)


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="czb_carla084/carla_server.proto",
                                               package=PACKAGE, syntax="proto3")
    declared = {}  # type: Dict[str, Any]
    for name, fields in _MESSAGES:
        outer, _, inner = name.rpartition(".")
        message = declared[outer].nested_type.add() if outer else proto.message_type.add()
        message.name = inner or name
        declared[name] = message
        oneofs = []  # type: list
        for spec in fields:
            field_name, number, kind = spec[:3]
            type_name = spec[3] if len(spec) > 3 else ""
            label = spec[4] if len(spec) > 4 else ""
            oneof = spec[5] if len(spec) > 5 else ""
            field = message.field.add(name=field_name, number=number, type=kind,
                                      label=_F.LABEL_REPEATED if label == REPEATED
                                      else _F.LABEL_OPTIONAL)
            if type_name:
                field.type_name = ".{}.{}".format(PACKAGE, type_name)
            if oneof:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    message.oneof_decl.add(name=oneof)
                field.oneof_index = oneofs.index(oneof)
    for name, values in _ENUMS:
        owner, _, enum_name = name.rpartition(".")
        enum = declared[owner].enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    return proto


def _message_classes() -> Dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    make = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.21
    if make is None:
        make = message_factory.MessageFactory(pool).GetPrototype  # protobuf 3.x
    classes = {}
    for name, _ in _MESSAGES:
        classes[name] = make(pool.FindMessageTypeByName("{}.{}".format(PACKAGE, name)))
    return classes


_CLASSES = _message_classes()

Vector3D = _CLASSES["Vector3D"]
Rotation3D = _CLASSES["Rotation3D"]
Transform = _CLASSES["Transform"]
BoundingBox = _CLASSES["BoundingBox"]
Sensor = _CLASSES["Sensor"]
Agent = _CLASSES["Agent"]
RequestNewEpisode = _CLASSES["RequestNewEpisode"]
SceneDescription = _CLASSES["SceneDescription"]
EpisodeStart = _CLASSES["EpisodeStart"]
EpisodeReady = _CLASSES["EpisodeReady"]
Control = _CLASSES["Control"]
Measurements = _CLASSES["Measurements"]
PlayerMeasurements = _CLASSES["Measurements.PlayerMeasurements"]

#: Sensor.Type values.
SENSOR_UNKNOWN, SENSOR_CAMERA, SENSOR_LIDAR = 0, 1, 2


def transform(location: Sequence[float], rotation: Tuple[float, float, float]) -> Any:
    """A Transform message from (x, y, z) metres and (pitch, yaw, roll) degrees."""
    message = Transform()
    message.location.x, message.location.y, message.location.z = (float(v) for v in location)
    pitch, yaw, roll = (float(v) for v in rotation)
    message.rotation.pitch, message.rotation.yaw, message.rotation.roll = pitch, yaw, roll
    return message
