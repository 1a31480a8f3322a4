"""One owner per concept, checked on the source: who writes files, who names run files."""

import ast
from pathlib import Path

KIT = Path(__file__).resolve().parents[1] / "kit"
# Writing a file: only the CLI (kit/cli/), the run/prediction directories (kit/run.py) and the
# atomic writers (kit/io.py) may; every other module calls them.
WRITERS = {"cli", "run.py", "io.py"}
# methods that write (Path.write_text, cv2.imwrite, fig.savefig, ...); kit.io's functions of the
# same names are plain calls, not methods, and are what the rest should use
WRITE_METHODS = {"imwrite", "savefig", "write_text", "write_bytes", "to_csv", "copyfile",
                 "copytree", "tofile"}  # fmt: skip
# The run directory's and prediction directory's files: named in kit/run.py only.
RUN_FILES = ("best.pt", "last.pt", "regions.csv", "run.json", "predict.json", "metrics.csv",
             "config.yaml")  # fmt: skip


def _modules():
    for path in sorted(KIT.rglob("*.py")):
        rel = path.relative_to(KIT)
        yield rel, ast.parse(path.read_text())


def _owner(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


def _prose(tree) -> set[int]:
    """ids of the string constants that are documentation: docstrings and --help texts."""
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            ids.update(id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant))
    return ids


def test_only_cli_run_and_io_write_files():
    found = []
    for rel, tree in _modules():
        if _owner(rel) in WRITERS:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            method = isinstance(func, ast.Attribute)
            name = func.attr if method else getattr(func, "id", "")
            writes_open = name == "open" and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
                for a in node.args[1:2]
            )  # fmt: skip
            saves = method and name == "save" and getattr(func.value, "id", "") in ("torch", "np")
            if writes_open or saves or (method and name in WRITE_METHODS):
                found.append(f"kit/{rel}:{node.lineno} {name}()")
    assert not found, "write through kit.io or kit.run instead:\n" + "\n".join(found)


def test_run_directory_files_are_named_only_in_run_py():
    found = []
    for rel, tree in _modules():
        if rel == Path("run.py"):
            continue
        docs = _prose(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                names = [n for n in RUN_FILES if n in node.value]
                if names:
                    found.append(f"kit/{rel}:{node.lineno} {names}")
    assert not found, "name these through kit.run.RunDir / PredictionDir:\n" + "\n".join(found)
