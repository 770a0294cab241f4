"""Where SUMO is: the ``eclipse-sumo`` wheel's binaries and tools, and running them."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

__all__ = ["SumoError", "binary", "run_tool", "sumo_env", "sumo_home", "tool"]


class SumoError(RuntimeError):
    """A SUMO binary or tool failed, or SUMO is not installed."""


@cache
def sumo_home() -> Path:
    """SUMO_HOME of the installed ``eclipse-sumo`` wheel (``pip install -e '.[bench]'``)."""
    try:
        import sumo
    except ImportError as exc:
        raise SumoError("SUMO is not installed: pip install -e '.[bench]' "
                        "(PyPI eclipse-sumo and sumolib)") from exc
    home = Path(sumo.SUMO_HOME)
    if not (home / "bin" / "sumo").is_file():
        raise SumoError(f"the eclipse-sumo wheel has no bin/sumo under {home}")
    return home


def sumo_env() -> dict[str, str]:
    """The environment SUMO's binaries want: SUMO_HOME, and PROJ's data for the projections."""
    home = sumo_home()
    env = {**os.environ, "SUMO_HOME": str(home)}
    proj = home / "data" / "proj"
    if proj.is_dir():
        env["PROJ_DATA"] = env["PROJ_LIB"] = str(proj)
    return env


def binary(name: str) -> str:
    """Path of one SUMO binary (``sumo``, ``netconvert``, ``duarouter`` …)."""
    path = sumo_home() / "bin" / name
    if not path.is_file():
        raise SumoError(f"no SUMO binary {name} in {path.parent}")
    return str(path)


def tool(name: str) -> str:
    """Path of one of SUMO's Python tools (``randomTrips.py`` …)."""
    path = sumo_home() / "tools" / name
    if not path.is_file():
        raise SumoError(f"no SUMO tool {name} in {path.parent}")
    return str(path)


def run_tool(args: list[str], *, cwd: Path | None = None) -> str:
    """Run a SUMO binary (``args[0]`` a name from bin/) or tool (a ``.py``); its output, or
    SumoError with the tail of what it said."""
    argv = ([sys.executable, tool(args[0]), *args[1:]] if args[0].endswith(".py")
            else [binary(args[0]), *args[1:]])
    proc = subprocess.run(argv, cwd=cwd, env=sumo_env(), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise SumoError(f"{args[0]} exited with {proc.returncode}: {tail}")
    return proc.stdout + proc.stderr
