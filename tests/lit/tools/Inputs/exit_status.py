"""Run a command and show where its output went and how it exited, for FileCheck:

    [stdout]
    ...what the command wrote to stdout...
    [stderr]
    ...what it wrote to stderr...
    [exit status: N]

Usage (in a RUN line): %python %S/Inputs/exit_status.py fir-opt ARGS... | filecheck %s
Standard input is passed through to the command.
"""

import subprocess
import sys

proc = subprocess.run(sys.argv[1:], stdin=sys.stdin, capture_output=True, text=True)
sys.stdout.write("[stdout]\n" + proc.stdout)
if proc.stdout and not proc.stdout.endswith("\n"):
    sys.stdout.write("\n")
sys.stdout.write("[stderr]\n" + proc.stderr)
if proc.stderr and not proc.stderr.endswith("\n"):
    sys.stdout.write("\n")
sys.stdout.write(f"[exit status: {proc.returncode}]\n")
