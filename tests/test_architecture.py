"""The layout is the architecture: the import direction and the privilege boundary are checked here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "policies", "writer", "experiments")


def imports_of(package: str) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path] = names
    return out


def test_import_linter_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_controller_uses_only_the_writers_wire_models() -> None:
    for path, names in imports_of("controller").items():
        bad = {n for n in names if n.split(".")[0] == "writer" and n != "writer.api"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_import_contract_forbids_every_writer_module_but_the_wire_models() -> None:
    # The test above sees direct imports; lint-imports also sees indirect ones, but only of the modules
    # it lists, so a new writer module must join the list.
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c.get("source_modules") == ["controller"]]
    modules = {f"writer.{p.stem}" for p in (ROOT / "writer").glob("*.py") if p.stem != "__init__"}
    assert modules - {"writer.api"} == {m for m in contract["forbidden_modules"] if m.startswith("writer.")}


def test_policies_do_no_io() -> None:
    forbidden = {"os", "socket", "requests", "httpx", "prometheus_api_client", "subprocess", "time", "pathlib", "threading"}
    for path, names in imports_of("policies").items():
        assert not names & forbidden, f"{path.relative_to(ROOT)} imports {names & forbidden}"


def _names_a_cgroup_file(value: str) -> bool:
    v = value.strip()
    return (
        "/sys/fs/cgroup" in v
        or v in {"io.max", "io.weight", "io.stat", "cgroup.procs", "cgroup.subtree_control"}
        or v.startswith("blkio.")
    )


def test_only_the_writer_names_cgroup_files() -> None:
    # String constants that name a cgroup file or the cgroup mount, outside writer/.
    # Help texts and docstrings may talk about io.max; only exact file names count.
    for package in ("controller", "policies", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_cgroup_file(node.value):
                    raise AssertionError(f"{path.relative_to(ROOT)} names a cgroup file: {node.value[:60]!r}")


def test_the_writer_agent_cannot_create_move_or_remove_cgroups() -> None:
    # writer/groups.py (create, move, remove) is for experiments and tests; kubelet makes a node's cgroups.
    for path in (ROOT / "writer").rglob("*.py"):
        if path.name == "groups.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                imported = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            bad = [n for n in imported if n == "writer.groups" or n.startswith("writer.groups.")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_controller_and_experiments_query_prometheus() -> None:
    for package in ("policies", "writer"):
        for path, names in imports_of(package).items():
            assert "prometheus_api_client" not in {n.split(".")[0] for n in names}, path
