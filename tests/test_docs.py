"""The README and docs/ run as written (issue 13, item 9): every `nbcnn` command and every
Python block they show is run, in the order shown, in a scratch folder holding a copy of
`configs/` and `docs/`; shown output lines must appear in the real output. Links point at
files in the repository, and every test that docs/guarantees.md names exists.

Conventions the documents follow (and this file enforces):
- a shell command is a line of a ```bash block, or a `$ ` line of a ```console block (the
  lines after it, up to the next `$ `, are its output; `...` stands for lines left out);
- a ```python block runs unless the line before its fence is `<!-- fragment -->` (a piece of
  a larger file, such as a plugin's method);
- a block whose fence follows a `<!-- needs the network: ... -->` line downloads a dataset: it
  is skipped here, and the test file that line names runs it against a local server;
- `pip install`, `python3 -m venv` and `pytest` lines are what `.ci/run` itself runs, and are
  checked against it instead.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
# Lines that set up the environment: CI runs them (see test_ci_runs_the_readme_test_command).
SETUP = ("python3 -m venv", "pip install", ".venv/bin/pip install", "python -m pytest")
SETUP_ALSO = (".venv/bin/python -m pytest",)
NETWORK_MARK = "<!-- needs the network"


@dataclass
class Step:
    """One thing a document shows: a shell command (with its shown output) or Python code."""

    kind: str  # "shell" or "python"
    text: str
    line: int
    output: list[str] = field(default_factory=list)


def steps(document: str, network: bool = False) -> list[Step]:
    """The commands and Python blocks of ``document``, in order: those that run offline, or
    with ``network`` those of the blocks marked NETWORK_MARK instead."""
    source = (ROOT / document).read_text()
    found = []
    for match in FENCE.finditer(source):
        indent, lang, body = match.groups()
        line = source.count("\n", 0, match.start()) + 1
        before = source[: match.start()].rstrip().rsplit("\n", 1)[-1]
        body = "\n".join(row[len(indent) :] for row in body.splitlines())
        if before.startswith(NETWORK_MARK) != network:
            continue
        if lang == "python" and "<!-- fragment" not in before:
            found.append(Step("python", body, line))
        elif lang == "bash":
            for row in body.splitlines():
                if row.strip() and not row.lstrip().startswith("#"):
                    found.append(Step("shell", row.strip(), line))
        elif lang == "console":
            for row in body.splitlines():
                if row.startswith("$ "):
                    found.append(Step("shell", row[2:].strip(), line))
                elif found and found[-1].kind == "shell" and found[-1].line == line:
                    found[-1].output.append(row)
    return found


def _is_setup(command: str) -> bool:
    return command.startswith(SETUP + SETUP_ALSO)


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] in ("nbcnn", ".venv/bin/nbcnn"):
        return [sys.executable, "-m", "nbcnn.cli", *words[1:]]
    if words[0] in ("python", "python3", ".venv/bin/python"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"the docs show a command this test cannot run: {command!r}")


def _sandbox(tmp_path: Path) -> dict[str, str]:
    """A scratch folder with the repository's configs and docs, and an environment whose
    dataset cache is inside it (nothing is downloaded: the tests serve no real datasets)."""
    for name in ("configs", "docs"):
        shutil.copytree(ROOT / name, tmp_path / name)
    # docs/pictures.md works on copies of its pictures in the current folder.
    shutil.copy(ROOT / "docs/images/china.png", tmp_path / "china.png")
    shutil.copy(ROOT / "docs/images/digit.png", tmp_path / "digit.png")
    _keras_weights_file(tmp_path / "mnist.weights.h5")
    env = dict(os.environ, NBCNN_HOME=str(tmp_path / ".nbcnn"), MPLBACKEND="Agg")
    env.pop("NBCNN_DATASETS_URL", None)
    return env


def _keras_weights_file(target: Path) -> None:
    """What Keras 3's ``save_weights`` writes for configs/mnist_convnet.yaml (random weights)."""
    from test_keras_import import keras_weights, write_keras3

    import nbcnn

    model = nbcnn.load_model(ROOT / "configs/mnist_convnet.yaml").initialize(0)
    keys = [layer.name for layer in model.layers]  # Keras 3 stores layers by these names
    write_keras3(target, keys, keras_weights(model))


def _run_document(document: str, tmp_path: Path) -> None:
    env = _sandbox(tmp_path)
    run = functools.partial(
        subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    for step in steps(document):
        where = f"{document}:{step.line}"
        if step.kind == "python":
            done = run([sys.executable, "-c", step.text])
            assert done.returncode == 0, f"{where}: python block failed:\n{done.stderr[-2000:]}"
            continue
        for command in step.text.split(" && "):
            if _is_setup(command):
                continue
            done = run(_argv(command))
            assert done.returncode == 0, f"{where}: `{command}` failed:\n{done.stderr[-2000:]}"
            printed = " ".join(done.stdout.split())
            for row in step.output:
                if row.strip() and row.strip() != "...":
                    assert " ".join(row.split()) in printed, (
                        f"{where}: `{command}` no longer prints {row.strip()!r}"
                    )


def _trains(document: str) -> bool:
    return any(
        re.search(r"\bnbcnn (train|featuremaps|filters|export|evaluate|predict|sweep)\b", s.text)
        or "fit" in s.text
        for s in steps(document)
    )


@pytest.mark.parametrize(
    "document",
    [pytest.param(d, marks=[pytest.mark.slow] if _trains(d) else []) for d in DOCUMENTS],
)
def test_every_command_of_the_document_runs_as_shown(document, tmp_path):
    _run_document(document, tmp_path)


def test_the_readme_starts_with_the_two_commands():
    first = steps("README.md")[:2]
    assert [s.kind for s in first] == ["shell", "shell"]
    assert "nbcnn train configs/digits.yaml" in first[0].text
    assert "pytest" in first[1].text


def test_ci_runs_the_readme_test_command():
    test_command = steps("README.md")[1].text
    install_and_test = test_command.split(" && ", 2)[-1]  # after creating the venv
    assert install_and_test in (ROOT / ".ci/run").read_text()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_links_point_into_the_repository(document):
    source = (ROOT / document).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", source):
        if re.match(r"[a-z]+://", target):
            continue
        assert (ROOT / document).parent.joinpath(target).exists(), f"{document}: {target}"
    assert "shared/" not in source.replace("shared libraries", ""), (
        f"{document} cites a file outside the repository"
    )


def test_every_test_the_guarantees_name_exists():
    cited = re.findall(r"`([\w/-]+\.py)::(test_\w+)", (ROOT / "docs/guarantees.md").read_text())
    assert len(cited) > 20, "docs/guarantees.md names too few tests: has its format changed?"
    missing = []
    for file, name in cited:
        paths = [ROOT / "tests" / file, *ROOT.glob(f"plugins/*/tests/{file}")]
        if not any(p.exists() and f"def {name}(" in p.read_text() for p in paths):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"
