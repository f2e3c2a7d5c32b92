"""The world-backend registry: the command line, factories, options and plugins all come from it."""
import os
import subprocess
import sys
import textwrap

import pytest

from bridge.errors import SpecError
from carla_client import registry
from carla_client.__main__ import make_backend, parse_args
from carla_client.builtin import BuiltinWorld

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_builtin_kinds_are_registered_in_order():
    assert registry.names()[:2] == ["builtin", "carla"]
    assert registry.get("carla").requires == ("carla",)
    assert registry.get("carla").server_flags == ("--host", "--port", "--tm-port")
    assert not registry.get("builtin").needs_server


def test_an_unknown_world_names_the_known_ones():
    with pytest.raises(SpecError, match="builtin, carla"):
        registry.get("carla0.7")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(SpecError, match="already registered"):
        registry.register(registry.BackendInfo("builtin", "again", "x:y"))


def test_an_option_flag_clashing_with_another_backend_is_refused():
    mine = registry.BackendOption("--shared-flag", "shared", 1, "one meaning", type=int)
    registry.register(registry.BackendInfo("first_user", "s", "x:y", options=(mine,)))
    try:
        registry.register(registry.BackendInfo("same_meaning", "s", "x:y", options=(mine,)))
        clash = registry.BackendOption("--shared-flag", "other_dest", "x", "a different meaning")
        with pytest.raises(SpecError, match="--shared-flag"):
            registry.register(registry.BackendInfo("clashing", "s", "x:y", options=(clash,)))
        assert "clashing" not in registry.names()
    finally:
        registry._REGISTRY.pop("first_user", None)
        registry._REGISTRY.pop("same_meaning", None)


def test_python_ranges():
    info = registry.BackendInfo("legacy", "s", "x:y", python=((3, 5), (3, 12)))
    assert info.python_supported((3, 6, 15)) and info.python_supported((3, 12))
    assert not info.python_supported((3, 13)) and not info.python_supported((2, 7))
    assert info.python_range() == "Python 3.5 to 3.12"
    assert registry.get("builtin").python_range() == "Python >= 3.6"
    assert registry.get("carla").server_argv(2000) == ["-RenderOffScreen", "-carla-rpc-port=2000"]
    assert registry.get("carla").start_hint(2000) == \
        "`./CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000`"
    assert "python -m carla_client.carla084_server --port 2000" in \
        registry.get("carla084").start_hint(2000)


def test_the_command_line_offers_every_world():
    assert parse_args(["--world", "carla"]).world == "carla"
    with pytest.raises(SystemExit):
        parse_args(["--world", "carla0.7"])


def test_make_backend_builds_through_the_factory():
    with make_backend(parse_args(["--world", "builtin", "--seed", "3"])) as world:
        assert isinstance(world, BuiltinWorld) and world.seed == 3


def test_a_factory_that_cannot_be_imported_is_a_clear_error():
    info = registry.BackendInfo("broken", "s", "no_such_module_xyz:make")
    with pytest.raises(SpecError, match="no_such_module_xyz"):
        info.build(None, ())


def test_a_plugin_module_registers_a_backend(tmp_path):
    (tmp_path / "myplugin.py").write_text(textwrap.dedent('''
        from carla_client.registry import BackendInfo, BackendOption, register
        register(BackendInfo("mysim", "a third-party world", "carla_client.worlds:builtin",
                             options=(BackendOption("--mysim-map", "mysim_map", "A", "map"),)))
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]),
               CARLA_CLIENT_BACKENDS="myplugin")
    code = ("from carla_client.__main__ import parse_args, make_backend\n"
            "c = parse_args(['--world', 'mysim', '--mysim-map', 'B'])\n"
            "print(c.world, c.backend_options['mysim_map'], make_backend(c).name)\n")
    out = subprocess.check_output([sys.executable, "-c", code], env=env, timeout=120)
    assert out.decode().split() == ["mysim", "B", "builtin"]
