"""The `jobctl` command line. Errors become click exceptions and exit codes here and only here
(producer/cli/app.py); each command module registers its commands on the group:

    app.py       the group, shared options, exit codes, error output
    submit.py    keygen, submit
    read.py      status, results, wait, cost
    manage.py    retry, cancel
    work.py      worker, drain, serve-local
    output.py    tables, plain lines and progress
"""

from producer.cli import manage, read, submit, work
from producer.cli.app import cli, main

__all__ = ["cli", "main", "manage", "read", "submit", "work"]
