"""Run hand-written device programs on virtual devices, the way fir-run runs what partition makes.

Usage (in a RUN line): %python %S/Inputs/run_partitioned.py FILE [N_DEVICES]

Each piece of FILE (split at `// -----`) holds a logical function @main (for the shapes of its random inputs) and
device programs `of = @main`. For each piece this prints `ok` with the result shapes, or the diagnostic; a Python
exception other than FirError prints `internal error` and makes the exit status 3.
"""

import sys

from xdsl.dialects.func import FuncOp

from fir.syntax.diagnostics import FirError
from fir.syntax.frontend import parse_source
from fir.runtime.inputs import random_inputs
from fir.runtime.virtual_devices import devices_needed, run_partitioned

path = sys.argv[1]
text = open(path, encoding="utf-8").read()
status, line = 0, 0
for piece in text.split("// -----"):
    try:
        module = parse_source(piece, path, None, line)
        main = next(f for f in module.ops if isinstance(f, FuncOp) and f.sym_name.data == "main")
        n = int(sys.argv[2]) if len(sys.argv) > 2 else devices_needed(module)
        results = run_partitioned(module, "main", random_inputs(main, 0), n)
        print("ok", *(r.shape for r in results))
    except FirError as e:
        print(e.render({path: text}).splitlines()[0])
    except Exception as e:  # noqa: BLE001 - the failure under test
        print(f"internal error: {type(e).__name__}: {e}")
        status = 3
    line += piece.count("\n")
sys.exit(status)
