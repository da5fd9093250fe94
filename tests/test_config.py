"""capfan.config, the TOML schema checker behind every config file: defaults, types, converters,
key paths in messages, and load_file's errors. Messages are asserted in full."""
import math
import os
import subprocess
import sys

import pytest

from capfan import config as C
from capfan.errors import ConfigError


def err(fn, *args) -> str:
    """The message of the ConfigError fn(*args) raises."""
    with pytest.raises(ConfigError) as e:
        fn(*args)
    return str(e.value)


# ------------------------------------------------------------------------------ defaults

SCHEMA = {
    "name": C.Field(str, C.REQUIRED),
    "count": C.Field(int, 5),
    "ratio": C.Field(float, 0.5),
    "arena": C.Field((int, str), "64M", check=C.size),
    "label": C.Field(str, None, check=C.one_of("a", "b")),
    "opts": C.Field(dict, dict),
    "ring": C.Table({"ndesc": C.Field(int, 64), "full": C.Field(str, "block")}),
    "capture": C.Tables({"name": C.Field(str, C.REQUIRED),
                         "ring": C.Table({"ndesc": C.Field((int, str), 1024, check=C.size)})}),
}


def test_defaults_filled_and_converted():
    out = C.validate({"name": "x"}, SCHEMA)
    assert out == {"name": "x", "count": 5, "ratio": 0.5, "arena": 64 << 20, "label": None, "opts": {},
                   "ring": {"ndesc": 64, "full": "block"}, "capture": []}


def test_callable_default_is_fresh_each_time():
    a, b = C.validate({"name": "x"}, SCHEMA), C.validate({"name": "y"}, SCHEMA)
    a["opts"]["k"] = 1
    assert b["opts"] == {}


def test_given_values_go_through_the_converter():
    out = C.validate({"name": "x", "arena": "1G", "label": "b", "capture": [{"name": "c", "ring": {"ndesc": "4k"}}]},
                     SCHEMA)
    assert (out["arena"], out["label"], out["capture"]) == (1 << 30, "b", [{"name": "c", "ring": {"ndesc": 4096}}])


def test_int_accepted_for_float_and_converted():
    out = C.validate({"name": "x", "ratio": 2}, SCHEMA)
    assert out["ratio"] == 2.0 and type(out["ratio"]) is float


def test_int_kept_where_int_is_also_accepted():
    out = C.validate({"t": 3}, {"t": C.Field((int, float), 1.0)})
    assert out["t"] == 3 and type(out["t"]) is int


def test_float_not_accepted_for_int():
    assert err(C.validate, {"name": "x", "count": 2.5}, SCHEMA) == "config key 'count': expected an integer, got 2.5"


@pytest.mark.parametrize("types,value,message", [
    (int, True, "config key 'v': expected an integer, got True"),
    (float, False, "config key 'v': expected a number, got False"),
    ((int, float), True, "config key 'v': expected an integer or a number, got True"),
    ((int, str), True, "config key 'v': expected an integer or a string, got True"),
    (bool, 1, "config key 'v': expected true/false, got 1"),
    (str, 5, "config key 'v': expected a string, got 5"),
    (list, "a", "config key 'v': expected a list, got 'a'"),
    (dict, [1], "config key 'v': expected a table, got [1]"),
])
def test_wrong_type(types, value, message):
    # TOML's true is never the integer 1 (nor 1 a boolean)
    assert err(C.validate, {"v": value}, {"v": C.Field(types, None)}) == message


def test_bool_accepted_where_bool_is_a_type():
    assert C.validate({"v": True}, {"v": C.Field((bool, int), 0)}) == {"v": True}


# ------------------------------------------------------------------------------ key paths

def test_nested_key_paths():
    data = {"name": "x", "capture": [{"name": "a"}, {"name": "b", "ring": {"ndesc": "x"}}]}
    assert err(C.validate, data, SCHEMA) == \
        "config key 'capture[1].ring.ndesc': expected a size like 65536, '64M' or '1G', got 'x'"
    data["capture"][1]["ring"] = {"ndesc": True}
    assert err(C.validate, data, SCHEMA) == \
        "config key 'capture[1].ring.ndesc': expected an integer or a string, got True"


def test_nested_required_key():
    assert err(C.validate, {"name": "x", "capture": [{"name": "a"}, {}]}, SCHEMA) == \
        "config key 'capture[1].name': required key is missing"
    assert err(C.validate, {}, SCHEMA) == "config key 'name': required key is missing"


def test_unknown_key_suggests_the_closest():
    assert err(C.validate, {"name": "x", "cuont": 1}, SCHEMA) == \
        ("config key 'cuont': unknown key in the top level; did you mean 'count'? known keys: arena, capture, "
         "count, label, name, opts, ratio, ring")
    assert err(C.validate, {"name": "x", "ring": {"ndsc": 1}}, SCHEMA) == \
        "config key 'ring.ndsc': unknown key in [ring]; did you mean 'ndesc'? known keys: full, ndesc"
    assert err(C.validate, {"name": "x", "capture": [{"name": "a", "ring": {"size": 1}}]}, SCHEMA) == \
        "config key 'capture[0].ring.size': unknown key in [capture[0].ring]; known keys: ndesc"
    assert err(C.validate, {"x": 1}, {}) == "config key 'x': unknown key in the top level; known keys: none"


def test_unknown_key_is_reported_before_missing_ones():
    # a misspelt required key says "unknown ... did you mean", not "missing"
    assert err(C.validate, {"nam": "x"}, SCHEMA) == \
        ("config key 'nam': unknown key in the top level; did you mean 'name'? known keys: arena, capture, count, "
         "label, name, opts, ratio, ring")


def test_table_and_tables_shapes():
    assert err(C.validate, {"name": "x", "ring": 5}, SCHEMA) == \
        "config key 'ring': expected a table ([ring]), got int"
    assert err(C.validate, {"name": "x", "capture": {"name": "a"}}, SCHEMA) == \
        "config key 'capture': expected an array of tables ([[capture]])"
    assert err(C.validate, {"name": "x", "capture": [1]}, SCHEMA) == \
        "config key 'capture': expected an array of tables ([[capture]])"
    assert err(C.validate, {"name": "x", "capture": [{"name": "a", "ring": []}]}, SCHEMA) == \
        "config key 'capture[0].ring': expected a table ([capture[0].ring]), got list"
    assert err(C.validate, [], SCHEMA) == "config key 'config': expected a table, got list"


def test_tables_min_items():
    schema = {"capture": C.Tables({"x": C.Field(int, 0)}, min_items=1)}
    assert err(C.validate, {}, schema) == "config key 'capture': at least 1 [[capture]] table(s) needed"
    assert C.validate({"capture": [{}]}, schema) == {"capture": [{"x": 0}]}


# ------------------------------------------------------------------------------ checks

@pytest.mark.parametrize("value,n", [
    ("64M", 64 << 20), ("1G", 1 << 30), ("4k", 4096), ("2MiB", 2 << 20), ("8kB", 8192), (" 16 M ", 16 << 20),
    ("65536", 65536), (65536, 65536),
])
def test_size(value, n):
    assert C.size(value, "k") == n


@pytest.mark.parametrize("value,message", [
    (0, "config key 'k': must be above 0, not 0"),
    ("0", "config key 'k': must be above 0, not '0'"),
    ("0G", "config key 'k': must be above 0, not '0G'"),
    ("x", "config key 'k': expected a size like 65536, '64M' or '1G', got 'x'"),
    ("1.5G", "config key 'k': expected a size like 65536, '64M' or '1G', got '1.5G'"),
    ("-1", "config key 'k': expected a size like 65536, '64M' or '1G', got '-1'"),
    ("64T", "config key 'k': expected a size like 65536, '64M' or '1G', got '64T'"),
    ("", "config key 'k': expected a size like 65536, '64M' or '1G', got ''"),
])
def test_size_errors(value, message):
    assert err(C.size, value, "k") == message


def test_one_of():
    check = C.one_of("block", "drop")
    assert check("drop", "ring.full") == "drop"
    assert err(check, "wait", "ring.full") == "config key 'ring.full': must be one of 'block', 'drop', not 'wait'"
    assert err(check, "Block", "ring.full") == "config key 'ring.full': must be one of 'block', 'drop', not 'Block'"


def test_positive_and_non_negative():
    assert C.positive(0.1, "t") == 0.1 and C.non_negative(0, "t") == 0
    assert err(C.positive, 0, "t") == "config key 't': must be above 0, not 0"
    assert err(C.positive, -2.5, "t") == "config key 't': must be above 0, not -2.5"
    assert err(C.non_negative, -1, "t") == "config key 't': must be 0 or more, not -1"
    # TOML has nan; it compares false with everything, so `value <= 0` let it through
    assert err(C.positive, math.nan, "t") == "config key 't': must be above 0, not nan"
    assert err(C.non_negative, math.nan, "t") == "config key 't': must be 0 or more, not nan"


def test_path_relative_to():
    rel = C.path_relative_to("/etc/capfan")
    assert rel("records", "out") == "/etc/capfan/records"
    assert rel("../x/./y", "out") == "/etc/x/y"
    assert rel("/var/lib/capfan", "out") == "/var/lib/capfan"
    assert err(rel, "", "agent.out") == "config key 'agent.out': must not be empty"


def test_check_applies_to_defaults_but_not_none():
    calls = []
    schema = {"a": C.Field(int, 3, check=lambda v, k: calls.append((v, k)) or v * 2),
              "b": C.Field(int, None, check=lambda v, k: calls.append((v, k)) or v)}
    assert C.validate({}, schema) == {"a": 6, "b": None}
    assert calls == [(3, "a")]


# ------------------------------------------------------------------------------ load_file

def test_load_file(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('[agent]\nname = "x"\n')
    assert C.load_file(str(p)) == {"agent": {"name": "x"}}


def test_load_file_errors(tmp_path):
    assert err(C.load_file, str(tmp_path / "nope.toml")) == f"no config file '{tmp_path}/nope.toml' (pass -c FILE; examples in agents/examples/)"
    assert err(C.load_file, str(tmp_path)) == f"config file '{tmp_path}' is a directory, not a TOML file"
    (tmp_path / "f").write_text("")
    # used to escape as NotADirectoryError (a traceback in the CLI)
    assert err(C.load_file, str(tmp_path / "f" / "a.toml")) == \
        f"cannot read config file '{tmp_path}/f/a.toml': Not a directory"


def test_load_file_syntax_errors(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('[agent]\nname = "x"\nname = "y"\n')
    bad = f"config file {p} is not valid TOML: "
    assert err(C.load_file, str(p)) == bad + "Cannot overwrite a value (at line 3, column 11)"
    p.write_text('[agent\n')
    assert err(C.load_file, str(p)) == bad + "Expected ']' at the end of a table declaration (at line 1, column 7)"
    # used to escape as UnicodeDecodeError (a traceback in the CLI)
    p.write_bytes(b'[agent]\n# latin-1: caf\xe9\nname = "x"\n')
    assert err(C.load_file, str(p)) == bad + "not UTF-8 text (line 2); save it as UTF-8"


def test_load_file_permission_denied(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text("")
    p.chmod(0)
    want = f"cannot read config file '{p}': permission denied (run as its owner or fix its mode)"
    if os.geteuid() != 0:
        assert err(C.load_file, str(p)) == want
        return
    # root reads any file through CAP_DAC_OVERRIDE / DAC_READ_SEARCH: load it in a process without them
    os.chown(p, 65534, 65534)
    code = ("import sys\nfrom capfan import config, errors\ntry:\n    config.load_file(sys.argv[1])\n"
            "except errors.ConfigError as e:\n    print(e)\n")
    drop = "-dac_override,-dac_read_search"
    r = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c", code,
                        str(p)], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == want, r.stderr
