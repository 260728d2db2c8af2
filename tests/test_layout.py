"""The package's import rules, read from the source (no import is executed): the core never imports the toy
world, lower layers never import higher ones, and there are no import cycles (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    ("vpae", "vpae.errors", "vpae.flow", "vpae.randomness", "vpae.conditioning", "vpae.registry"),
    ("vpae.config", "vpae.backbones", "vpae.codecs", "vpae.sampling", "vpae.discriminator", "vpae.data"),
    ("vpae.losses",),
    ("vpae.models", "vpae.export", "vpae.export_native", "vpae.training", "vpae.eval"),
    ("vpae.recipes", "vpae.generate", "vpae.data.prepare", "vpae.data.synthesize", "vpae.data.wan_stack"),
    ("vpae.cli",),
    ("vpae.toy",),
]
"""Bottom to top: a module may import its own layer and the layers below; a module belongs to the layer of the
longest prefix that names it (vpae.data is a contract, vpae.data.prepare a job that uses models and videos).
vpae.toy is a plugin on top (a data source and a model family registered through vpae.registry); only the CLI's
toy-only commands (demo, ablate, caption-bank) import it, inside their functions."""

TOY_ALLOWED = {"vpae.cli"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every vpae module imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "vpae"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "vpae":
                continue
            for a in node.names:  # `from vpae.x import y`: y may be a module or a name in x
                out.add(f"{base}.{a.name}" if (SRC / Path(*f"{base}.{a.name}".split("."))).exists()
                        or (SRC / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").exists() else base)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted((SRC / "vpae").rglob("*.py"))}


def layer_of(mod: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or (p != "vpae" and mod.startswith(p + "."))) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    assert best is not None, f"{mod} is in no layer of tests/test_layout.py: add it to LAYERS"
    return best[1]


def test_every_module_has_a_layer():
    for mod in graph():
        layer_of(mod)


def test_core_never_imports_the_toy_world():
    bad = sorted(f"{m} imports {i}" for m, deps in graph().items() for i in deps
                 if i.startswith("vpae.toy") and not m.startswith("vpae.toy") and m not in TOY_ALLOWED)
    assert not bad, bad


def test_imports_point_down():
    bad = sorted(f"{m} (layer {layer_of(m)}) imports {i} (layer {layer_of(i)})"
                 for m, deps in graph().items() for i in deps
                 if layer_of(i) > layer_of(m) and not (i.startswith("vpae.toy") and m in TOY_ALLOWED))
    assert not bad, bad


def test_no_import_cycles():
    g = graph()
    g = {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of ideas: fold `pkg` -> `pkg.sub` edges
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in g[m]:
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                if not any(b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2
    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: an upward import and a toy import are seen (a metric that cannot fail is no check)."""
    f = SRC / "vpae" / "flow.py"
    assert "vpae.recipes" not in imports_of(f)
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from vpae.toy.world import ToyWorldConfig\n    import vpae.recipes\n")
    tree = ast.parse(fake.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"vpae.toy.world", "vpae.recipes"} <= names
    assert layer_of("vpae.recipes") > layer_of("vpae.flow") and layer_of("vpae.toy.world") == len(LAYERS) - 1
