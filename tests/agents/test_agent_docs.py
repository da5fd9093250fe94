"""The README's agent configuration reference names every key the schema accepts (and no
key the schema does not know), so the documentation cannot drift from the code."""
import re
from pathlib import Path

from capfan import config as C
from capfan.agents import config as agentconfig

README = Path(__file__).resolve().parents[2] / "README.md"


def schema_keys(schema, prefix=""):
    """(table, key) for every value key of the agent schema."""
    for key, spec in schema.items():
        if isinstance(spec, (C.Table, C.Tables)) and key != "ring":
            name = f"[[{key}]]" if isinstance(spec, C.Tables) else f"[{prefix}{key}]"
            for k, s in spec.schema.items():
                if isinstance(s, C.Table) and k != "ring":
                    yield from ((f"[{key}.{k}]", kk) for kk in s.schema)
                else:
                    yield name, k
        elif not isinstance(spec, (C.Table, C.Tables)):
            yield prefix, key


def reference_rows():
    """(table, key) pairs documented in the README's configuration reference table."""
    text = README.read_text()
    section = text[text.index("### Configuration reference"):text.index("### CPU placement")]
    out = set()
    for m in re.finditer(r"^\| `(\[\[?[a-z.]+\]\]?) ([a-z_]+)`((?: / `[a-z_]+`)*) \|", section, re.M):
        out.add((m.group(1), m.group(2)))
        out.update((m.group(1), k) for k in re.findall(r"`([a-z_]+)`", m.group(3)))
    return out


def test_every_agent_config_key_is_documented_and_nothing_else():
    keys = set(schema_keys(agentconfig.SCHEMA))
    documented = reference_rows()
    assert keys - documented == set(), "undocumented keys"
    assert documented - keys == set(), "documented keys the schema does not have"


def test_ring_geometry_keys_are_in_the_ring_row():
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `[[capture]] ring`"))
    assert all(f"{k} =" in row for k in agentconfig.RING), row
