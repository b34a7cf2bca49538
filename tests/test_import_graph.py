"""The house has floors: no import circle in r2gen/ (imports inside functions count), and nothing imports the top floor.

`r2gen.checkpoint` <-> `r2gen.models.module` is the one circle left (the module writes the checkpoint format, the
format's reader rebuilds the module); this test lets it be and fails on any other, so no new one can land.
"""

from pathlib import Path

from tests.helpers.import_graph import edges, sccs

ROOT = Path(__file__).resolve().parents[1]
KNOWN = {frozenset({"r2gen.checkpoint", "r2gen.models.module"})}


def test_no_import_circle_but_the_known_one():
    circles = [frozenset(c) for c in sccs(edges(ROOT)) if len(c) > 1]
    assert set(circles) <= KNOWN, [sorted(c) for c in circles if c not in KNOWN]


def test_nothing_in_r2gen_imports_the_console_scripts():
    graph = edges(ROOT)
    importers = sorted(m for m, targets in graph.items() if "r2gen.cli" in targets and not m.endswith("__main__"))
    assert importers == [], importers


def test_the_error_boundary_is_on_the_ground_floor():
    """It imports only the error types, the config check and `r2gen.conf` (the folder of YAML files)."""
    graph = edges(ROOT)
    assert graph["r2gen.boundary"] <= {"r2gen.errors", "r2gen.config_check", "r2gen.conf"}, graph["r2gen.boundary"]
    assert graph["r2gen.config_check"] <= {"r2gen.errors", "r2gen.conf"}, graph["r2gen.config_check"]
