"""The `jobctl` command line. Errors become click exceptions and exit codes here and only here
(producer/cli/app.py); each command module registers its commands on the group:

    app.py       the group, shared options, exit codes, error output
    submit.py    keygen, submit
    read.py      status, results, wait, cost
    manage.py    retry, cancel
    work.py      worker, drain, serve-local
    output.py    tables, plain lines and progress
"""

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    # Python's own handler would raise KeyboardInterrupt inside an import and print a traceback.
    if "--json" in sys.argv:
        sys.stderr.write('{"error": {"message": "interrupted", "exit_code": 130}}\n')
    else:
        sys.stderr.write("jobctl: error: interrupted\n")
    os._exit(130)


# Run as `jobctl` (or `python -m producer.cli`, whose sys.argv[0] is "-m" while the package loads):
# a Ctrl-C while the imports below load is one line and exit 130; main() puts Python's handler back.
# Imported from a script or a test, nothing is changed.
if sys.argv and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]) == "jobctl"):
    try:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:
        pass  # not the main thread

from producer.cli import manage, read, submit, work  # noqa: E402
from producer.cli.app import cli, main  # noqa: E402

__all__ = ["cli", "main", "manage", "read", "submit", "work"]
