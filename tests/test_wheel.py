"""The wheel: built from this checkout, installed in a fresh venv, run from elsewhere.

Proves what an installed copy needs without the checkout: `python -m loadtest`
imports (no `tests.` import left in a shipped module), and a one-session load
test against a server spawned from the installed copy itself (its `static/`
and `models/` shipped as package data) passes its checks. Only the media
sources (the recorded answers, the photos) come from the checkout, as
arguments, since data stays out of the wheel.

Dependencies come from pip's configured index (and its cache), into a fresh
venv: about 80 s on a 2-core machine. The test skips only when pip cannot
reach an index or the photos beside the checkout are missing; a wheel that
does not build, install or run fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from loadtest.prepare import DEFAULT_CACHE, PHOTOS_DIR, SPEECH_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(900)

# pip's words when the index, not the project, is the problem.
_UNREACHABLE = ("Could not find a version that satisfies", "No matching distribution found",
                "Failed to establish a new connection", "Temporary failure in name resolution",
                "Network is unreachable")


def _run(argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _pip_failed(step: str, proc: subprocess.CompletedProcess[str]) -> None:
    output = proc.stdout + proc.stderr
    if any(words in output for words in _UNREACHABLE):
        pytest.skip(f"{step}: pip cannot get a distribution from its index: {output[-800:]}")
    pytest.fail(f"{step} failed ({proc.returncode}):\n{output[-4000:]}")


def _project_copy(dst: Path) -> Path:
    """What setuptools packages, copied out so the build writes nothing here."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dst.mkdir()
    for name in ("pyproject.toml", "README.md", *(f"{m}.py" for m in config["py-modules"])):
        shutil.copy2(REPO / name, dst / name)
    for package in config["packages"]:
        shutil.copytree(REPO / package, dst / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything that would import the checkout instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv with the wheel (and the loadtest extra) installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = _project_copy(root / "src")
    built = _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q",
                  "-w", str(root / "dist")], cwd=root, timeout=300)
    if built.returncode != 0:
        _pip_failed("pip wheel", built)
    (wheel,) = (root / "dist").glob("interview_media_server-*.whl")
    made = _run([sys.executable, "-m", "venv", str(root / "venv")], cwd=root, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"python -m venv is not usable here: {made.stderr[-500:]}")
    python = root / "venv" / "bin" / "python"
    started = time.monotonic()
    install = _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[loadtest]"],
                   cwd=root, timeout=600, env=_clean_env())
    if install.returncode != 0:
        _pip_failed("pip install", install)
    print(f"dependencies installed in {time.monotonic() - started:.0f} s")
    return python


def test_the_wheel_ships_the_kit_and_the_server_files(installed: Path, tmp_path: Path):
    probe = ("import json, loadtest, testing, server, engine.detector as d; "
             "print(json.dumps({'loadtest': loadtest.__file__, 'testing': testing.__file__, "
             "'server': server.__file__, 'static': str(server.STATIC_DIR / 'client.js'), "
             "'model': str(d.DEFAULT_NANODET_PATH)}))")
    proc = _run([str(installed), "-c", probe], cwd=tmp_path, timeout=120, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    site = installed.parents[1] / "lib"
    for name, path in json.loads(proc.stdout).items():
        assert Path(path).is_relative_to(site), (name, path)  # the installed copy, not the checkout
        assert Path(path).is_file(), (name, path)


def test_installed_loadtest_help(installed: Path, tmp_path: Path):
    proc = _run([str(installed), "-m", "loadtest", "--help"], cwd=tmp_path, timeout=120,
                env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m loadtest" in proc.stdout


@pytest.mark.skipif(not PHOTOS_DIR.is_dir(), reason=f"real photos not found at {PHOTOS_DIR}")
def test_installed_loadtest_runs_one_session_on_an_installed_server(installed: Path, tmp_path: Path):
    out = tmp_path / "out"
    argv = [str(installed), "-m", "loadtest", "--spawn-server", "--sessions", "1",
            "--duration", "20", "--settle", "8", "--no-plots", "--out", str(out),
            "--media", str(DEFAULT_CACHE), "--speech-dir", str(SPEECH_DIR),
            "--photos-dir", str(PHOTOS_DIR),
            # A short greeting leaves time in 20 s for an answer and its reply.
            "--server-env", "INTERVIEWER_GREETING=Hello, I'm Serin."]
    proc = _run(argv, cwd=tmp_path, timeout=300, env=_clean_env(HF_HUB_OFFLINE="1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), output  # 1: an SLO broke (this machine is shared)
    assert "Traceback" not in output and "never retrieved" not in output, output
    document = json.loads((out / "result.json").read_text())
    assert Path(document["server"]["script"]).is_relative_to(installed.parents[1] / "lib")
    (run,) = document["runs"]
    assert run["sessions"] == 1 and run["errors"] == [], run["errors"]
    assert run["rows"]["found"] == 1 and run["rows"]["lost"] == 0, run["rows"]
    (candidate,) = run["candidates"]
    assert candidate["answers"], candidate  # the installed ASR heard them
    for answer in candidate["answers"]:
        assert answer["transcript"] and answer["wer"] <= 0.35, answer
    frames = run["frames"]
    if frames["available"]:  # the shipped detector model saw the camera
        assert frames["video_samples"]["analysed"] > 0, frames
