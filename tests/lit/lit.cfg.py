# -*- Python -*-
"""lit configuration of fir's FileCheck tests.

Run from the repository root with the environment that has fir installed active:

    lit -sv tests/lit

Tests call `fir-opt` and `filecheck` by their plain names. Both are looked up in the *active* environment
(the directory of the Python interpreter that runs lit, i.e. the virtualenv's bin/) before PATH, so a
stale fir-opt elsewhere on PATH is never picked up by accident.
"""

import os
import re
import shutil
import sys

import lit.formats

config.name = "fir"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".fir", ".mlir"]
config.excludes = ["lit.cfg.py", "Output", "Inputs"]
config.test_source_root = os.path.dirname(os.path.abspath(__file__))
config.test_exec_root = config.test_source_root

# lit runs under the environment's own interpreter: put its bin/ (do not resolve symlinks, a venv's python is
# one) first on the PATH the tests see.
env_bin = os.path.dirname(sys.executable)
search_path = os.pathsep.join(p for p in (env_bin, config.environment.get("PATH", ""), os.environ.get("PATH", "")) if p)
config.environment["PATH"] = search_path

# `%python` runs helper scripts (tools/Inputs/) with the interpreter that runs lit. It is substituted before lit's
# own `%p`, so the two do not clash.
config.substitutions.append(("%python", sys.executable))

# Tests may print non-ASCII source lines in diagnostics.
config.environment["PYTHONIOENCODING"] = "utf-8"
config.environment.pop("FIR_DEBUG", None)
config.environment["FIR_VERIFY_EACH"] = "1"  # compiles verify after every pass in the tests

TOOLS = ("fir-opt", "filecheck")
for tool in TOOLS:
    found = shutil.which(tool, path=search_path)
    if found is None:
        lit_config.fatal(
            f"cannot find '{tool}' in {env_bin} (the environment running lit) or on PATH; "
            "activate the environment where fir is installed (pip install -e '.[dev]') and run lit from there"
        )
    # `fir-opt` and `filecheck` in RUN lines (as whole words, not inside paths or file names) become the
    # absolute paths found above, so `%fir-opt`-style substitutions are not needed.
    config.substitutions.append((r"(?<![\w%/.\-])" + re.escape(tool) + r"(?![\w.\-])", found))
    lit_config.note(f"using {tool}: {found}")
