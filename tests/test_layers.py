"""The package's import graph: each package imports only the layers below it, through public
names, with no cycle. Run alone with ``python -m pytest tests/test_layers.py -v``.

    distributions -> families -> core -> guides, objectives -> blr, evidence, diagnostics,
    samplers

(families are pure maths with no Pyro traces, so they sit below core, whose Gaussian-guide view
uses the Gaussian family's maps.)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pyro_blr"
RANK = {
    "distributions": 0,
    "families": 1,
    "core": 2,
    "guides": 3,
    "objectives": 3,
    "blr": 4,
    "evidence": 4,
    "diagnostics": 4,
    "samplers": 4,
}
ALLOWED_SAME_RANK = {("evidence", "objectives")}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_blr"):
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pyro_blr"):
                    yield alias.name, []


MODULES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers_through_public_names(path):
    package = path.relative_to(ROOT).parts[0]
    for module, names in _imports(path):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else None
        if target == package:
            continue
        assert target in RANK, f"{path.name} imports {module}: not a layer"
        lower = RANK[target] < RANK[package] or (package, target) in ALLOWED_SAME_RANK
        assert lower, f"{package}/{path.name} imports {module}, a layer not below it"
        private = [n for n in names if n.startswith("_")] + [p for p in parts if p[:1] == "_"]
        assert not private, f"{package}/{path.name} imports private {private} from {module}"


def test_the_top_level_reexports_only_the_public_api():
    import pyro_blr

    assert set(pyro_blr.__all__) == {
        "BLR",
        "IVON",
        "VON",
        "VOGN",
        "OGN",
        "SGD",
        "RMSprop",
        "Adam",
        "Newton",
        "ExpFamilyRule",
        "MixtureRule",
        "AutoExpFamily",
        "AutoFlow",
        "AutoMixture",
        "RenyiELBO",
        "RobbinsMonro",
        "SGLD",
        "jaakkola_jordan_evidence",
        "log_evidence",
        "loo_sensitivity",
        "merge",
        "psis_diagnostic",
        "removal_sensitivity",
        "sgd_evidence",
        "to_inference_data",
    }
