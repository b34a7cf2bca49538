"""The house has floors: no import circle in r2gen/ (imports inside functions count), nothing imports the top floor,
and the checkpoint format sits below the model that writes it."""

from pathlib import Path

from tests.helpers.import_graph import conftest_importers, edges, sccs

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_circle():
    circles = [sorted(c) for c in sccs(edges(ROOT)) if len(c) > 1]
    assert circles == [], circles


def test_the_checkpoint_format_and_the_model_do_not_import_what_composes_them():
    """`R2GenModule` takes its parts as arguments (`r2gen.build.model` composes them); the format is below both."""
    graph = edges(ROOT)
    assert "r2gen.build" not in graph["r2gen.models.module"], graph["r2gen.models.module"]
    assert {"r2gen.build", "r2gen.models.module"}.isdisjoint(graph["r2gen.checkpoint"]), graph["r2gen.checkpoint"]


def test_nothing_in_r2gen_imports_the_console_scripts():
    graph = edges(ROOT)
    importers = sorted(m for m, targets in graph.items() if "r2gen.cli" in targets and not m.endswith("__main__"))
    assert importers == [], importers


def test_the_error_boundary_is_on_the_ground_floor():
    """It imports only the error types, the config check and `r2gen.conf` (the folder of YAML files)."""
    graph = edges(ROOT)
    assert graph["r2gen.boundary"] <= {"r2gen.errors", "r2gen.config_check", "r2gen.conf"}, graph["r2gen.boundary"]
    assert graph["r2gen.config_check"] <= {"r2gen.errors", "r2gen.conf"}, graph["r2gen.config_check"]


def test_no_test_module_imports_conftest():
    """conftest.py holds fixtures, which pytest hands to tests by name; a helper a test imports is in tests/helpers/."""
    importers = conftest_importers(ROOT)
    assert importers == [], importers
