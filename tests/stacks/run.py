"""``make test-stacks``: the torch-free tests in fresh environments built as a device
integrator builds them.

Each stack is a new virtual environment made with one of the machine's interpreters (pyenv's,
under ``$(pyenv root)/versions``), into which pip installs this checkout's wheel with the
stack's extras under the stack's constraints file (``tests/stacks/<name>.txt``), plus pytest.
Then ``pytest -m torch_free`` runs against that *installed* package: ``--import-mode=append``
keeps the checkout behind site-packages, and ``tests/conftest.py`` refuses to run if
``cminet`` still comes from the checkout. ``CMINET_STACK`` tells the tests which stack they
are in, so a feature the stack promises fails instead of skipping.

    python tests/stacks/run.py                 # every stack
    python tests/stacks/run.py jetpack6        # one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = REPO / ".stacks"
# What the report lists for each stack (distribution names as pip prints them).
REPORTED = ("numpy", "opencv-python-headless", "onnxruntime", "openvino", "click", "tqdm", "nibabel", "pydicom",
            "highdicom", "nvidia-pytriton", "tritonclient")


@dataclass(frozen=True)
class Stack:
    name: str
    python: str  # "3.10": the newest 3.10.x here; "newest": the newest CPython here
    extras: str
    summary: str

    @property
    def constraints(self) -> Path:
        return HERE / f"{self.name}.txt"


STACKS = {s.name: s for s in (
    Stack("jetpack6", "3.10", "volume,openvino",
          "JetPack 6: Python 3.10, numpy 1.26, OpenCV 4.8, every other dependency at its declared minimum"),
    Stack("newest", "newest", "volume,openvino", "the newest Python here and the newest wheels"),
    Stack("serve", "3.11", "serve,volume", "cminet[serve,volume] in one environment (PyTriton holds numpy < 2)"),
)}


def interpreters() -> dict[tuple[int, int, int], Path]:
    """CPython interpreters under pyenv's versions folder, by version."""
    root = os.environ.get("PYENV_ROOT")
    if not root:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = str(Path.home() / ".pyenv")
    found = {}
    for folder in Path(root, "versions").glob("*"):
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", folder.name)
        if match and (folder / "bin" / "python").is_file():
            found[tuple(int(g) for g in match.groups())] = folder / "bin" / "python"
    if not found:
        sys.exit(f"test-stacks: no CPython interpreters under {root}/versions (set PYENV_ROOT)")
    return found  # type: ignore[return-value]


def pick_python(stack: Stack) -> Path:
    available = interpreters()
    if stack.python == "newest":
        return available[max(available)]
    major, minor = (int(p) for p in stack.python.split("."))
    matching = [v for v in available if v[:2] == (major, minor)]
    if not matching:
        found = ", ".join(".".join(map(str, v)) for v in sorted(available))
        sys.exit(f"test-stacks: {stack.name} needs Python {stack.python}; this machine has {found}")
    return available[max(matching)]


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(a) for a in argv), flush=True)
    return subprocess.run([str(a) for a in argv], check=True, **kwargs)


def build_wheel() -> Path:
    """One wheel of the checkout for every stack (pure Python, so any interpreter builds it)."""
    out = WORK / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, REPO])
    (wheel,) = out.glob("cminet-*.whl")
    return wheel


def test_stack(stack: Stack, wheel: Path, pytest_args: list[str]) -> dict:
    started = time.monotonic()
    venv = WORK / stack.name
    shutil.rmtree(venv, ignore_errors=True)
    python = pick_python(stack)
    run([python, "-m", "venv", venv])
    bin_dir = venv / "bin"
    pip = [bin_dir / "python", "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "install", "--quiet", "--upgrade", "pip"])
    run([*pip, "install", "--quiet", "-c", stack.constraints, f"cminet[{stack.extras}] @ {wheel.as_uri()}",
         "pytest"])
    run([*pip, "check"])
    listed = json.loads(subprocess.run([*pip, "list", "--format", "json"], capture_output=True, text=True,
                                       check=True).stdout)
    versions = {p["name"].lower(): p["version"] for p in listed}
    installed = time.monotonic()
    env = dict(os.environ, CMINET_STACK=stack.name)
    env.pop("PYTHONPATH", None)
    # The checkout is on sys.path only behind site-packages (append), so `import cminet`
    # is the installed wheel; `tests` itself still comes from the checkout.
    # Only the modules that hold torch_free tests: the others import torch to be collected at all.
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                     if "pytest.mark.torch_free" in p.read_text())
    proc = subprocess.run([bin_dir / "pytest", "-m", "torch_free", "--import-mode=append", "-p", "no:cacheprovider",
                           "-q", "-o", "addopts=-ra", *pytest_args, *modules], cwd=REPO, env=env)
    return {"stack": stack.name, "summary": stack.summary, "python": str(python), "extras": stack.extras,
            "versions": {name: versions[name] for name in REPORTED if name in versions},
            "install_s": round(installed - started, 1), "test_s": round(time.monotonic() - installed, 1),
            "passed": proc.returncode == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", nargs="*", help=f"some of {', '.join(STACKS)} (default: every stack)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-k doctor -x'")
    args = parser.parse_args()
    unknown = [name for name in args.stacks if name not in STACKS]
    if unknown:
        parser.error(f"unknown stack(s) {', '.join(unknown)}; choose from {', '.join(STACKS)}")
    WORK.mkdir(exist_ok=True)
    wheel = build_wheel()
    results = [test_stack(STACKS[name], wheel, args.pytest_args.split()) for name in (args.stacks or STACKS)]
    (WORK / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\ndevice stacks:")
    for r in results:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        print(f"  {r['stack']:<9} {'passed' if r['passed'] else 'FAILED'}  install {r['install_s']:.0f} s, "
              f"tests {r['test_s']:.0f} s  ({Path(r['python']).parent.parent.name}: {versions})")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
