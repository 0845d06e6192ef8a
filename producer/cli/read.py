"""`jobctl status`, `results`, `wait` and `cost`: reading batches back."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from jobs.store import BatchStatus
from producer.cli import output
from producer.cli.app import OK, TASKS_FAILED, Ctx, cli, echo_json, err, finish, json_option, parse_since

STATUSES = ("in_progress", "completed", "failed", "cancelling", "cancelled")
# A queue with work that no worker has drained for this long gets a notice while waiting.
IDLE_NOTICE_SECONDS = 60.0
# How often `wait` reads the batch, and the longest pause between reads while Redis is away.
WAIT_POLL_SECONDS = 1.0


def queue_notes(client: Any, queue: str) -> list[str]:
    """Why a queue may not be draining: no live worker, and what Modal's drainer and cron left in Redis."""
    from jobs.store import queues
    from producer.cost import queue_notes as modal_notes

    conn = client.connection
    depth = queues.depth(conn, queue)
    if not depth.waiting:
        return []
    notes = []
    if not queues.drainers(conn, queue):
        seen = _float(queues.health(conn, queue).get("worker_seen_at"))
        ago = f"last seen {(time.time() - seen) / 60:.0f} min ago" if seen else "none seen yet"
        notes.append(
            f"{depth.waiting} tasks wait in queue {queue} and no worker is draining it ({ago}); run `jobctl worker`, "
            "or check the Modal cron (`jobctl drain --remote`)"
        )
    return notes + modal_notes(conn, queue, cipher=client.cipher)


@cli.command(short_help="Show one batch, or list the recent ones.")
@click.argument("batch", required=False)
@click.option("--limit", default=20, show_default=True, help="How many recent batches to list.")
@click.option("--name", help="Only batches with this name.")
@click.option(
    "--status",
    "status_",
    type=click.Choice(STATUSES),
    metavar="STATE",
    help=f"Only batches in this state: {', '.join(STATUSES)}.",
)
@click.option("--since", help="Only batches created since: 7d, 24h, 30m, or a date (2026-11-01).")
@click.option("--verify", is_flag=True, help="With BATCH: open every result and name any that do not check out.")
@json_option
@click.pass_obj
def status(
    obj: Ctx,
    batch: str | None,
    limit: int,
    name: str | None,
    status_: str | None,
    since: str | None,
    verify: bool,
    as_json: bool,
) -> None:
    """Show one batch (counts, tokens, GPU time and cost, why its queue may not drain), or the recent ones.

    Only batches sealed with your key are shown: on a shared Redis, other users' batches stay hidden.
    """
    client = obj.client()
    if batch:
        st = client.status(batch, verify=verify)
        notes = queue_notes(client, st.queue) if not st.done else []
        if as_json:
            echo_json({**st.as_dict(), "notes": notes})
        else:
            output.status_detail(st, notes)
        return
    states = client.batches(limit, name=name, status=status_, since=parse_since(since))
    hidden = _hidden_batches(client) if not states else ""
    if as_json:
        echo_json([s.as_dict() for s in states])
        if hidden:
            err(hidden)
    else:
        output.status_rows(states, hidden, filtered=bool(name or status_ or since))


# How many of the newest batches `status` looks at to say whose batches it hides.
HIDDEN_SCAN = 200


def _hidden_batches(client: Any) -> str:
    """When no batch of this key is listed: what other keys' batches the Redis holds (a wrong
    JOBCTL_KEY shows an empty list, which must not read as "nothing submitted"). Key ids only."""
    from jobs.store import keys

    conn = client.connection
    ids = conn.zrevrange(keys.BATCHES_INDEX, 0, HIDDEN_SCAN - 1)
    if not ids:
        return ""
    with conn.pipeline(transaction=False) as p:
        for bid in ids:
            p.hget(keys.batch(keys.text(bid)), "key_id")
        found = [keys.text(k) for k in p.execute() if k is not None]
    mine = client.cipher.key_id
    others = sorted({k for k in found if k != mine})
    if not others or mine in found:
        return ""  # this key has batches too: the filters left them out
    n = sum(k != mine for k in found)
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return (
        f"no batches of key {mine}; this Redis holds {n} recent batch{'es' if n != 1 else ''} of key {shown}. "
        "To read them, set JOBCTL_KEY or JOBCTL_KEY_FILE to the key that submitted them"
    )


@cli.command(short_help="Read a batch's results, decrypted with your key.")
@click.argument("batch")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (mode 0600): successes as OpenAI batch JSONL, or every row with --format csv.",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    show_default="-o's name, with .errors.jsonl for .jsonl",
    help="With -o and JSONL: write the failures to this file.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl", "csv"]),
    show_default="table; jsonl with -o or --json",
    help="table (a table on a terminal, one tab-separated line per task elsewhere), jsonl (OpenAI batch "
    "output lines) or csv (one row per task).",
)
@click.option("--fields", show_default="every column", help="With --format csv: the columns to write, comma-separated.")
@json_option
@click.pass_obj
def results(
    obj: Ctx, batch: str, out: Path | None, errors: Path | None, fmt: str | None, fields: str | None, as_json: bool
) -> None:
    """Read a batch's results, decrypted with your key.

    JSONL lines are {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}:
    body is the chat.completion, and for typed kinds choices[0].message.parsed holds the validated
    answer. CSV rows have custom_id, status, error code, the record's main fields (mail: from,
    subject, date; bank: date, description, amount, currency) and the answer's fields.
    A result that does not check out (changed in Redis) is named with the code tampered, replayed
    or missing; the rest still print.
    """
    import json

    from jobs.keyfile import write_private

    client = obj.client()
    fmt = fmt or ("jsonl" if as_json or (out and not fields) else None)
    cols = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    if cols and fmt != "csv":
        raise click.BadParameter("only with --format csv", param_hint="--fields")
    if out:
        _check_target(out, "-o")
        if fmt != "csv":
            errors = errors or out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")
            _check_target(errors, "--errors")
    outcomes = client.results(batch)
    if fmt == "csv":
        from producer.export import write_csv

        rows = list(outcomes)
        if out:
            with write_private(out) as f:
                n = write_csv(rows, f, cols)  # type: ignore[arg-type]  # a text file, as TextIO wants
            click.echo(f"jobctl: wrote {n} rows to {out}", err=True)
        else:
            write_csv(rows, sys.stdout, cols)
        return
    if out and errors:
        # One file after the other, the errors kept aside meanwhile: a write that fails (a full disk)
        # leaves both files as they were, not a new errors file beside the old results.
        n_ok, failures = 0, []
        with write_private(out) as ok_f:
            for o in outcomes:
                if o.ok:
                    ok_f.write(json.dumps(o.line(), ensure_ascii=False) + "\n")
                    n_ok += 1
                else:
                    failures.append(json.dumps(o.line(), ensure_ascii=False) + "\n")
        with write_private(errors) as err_f:
            err_f.writelines(failures)
        click.echo(f"jobctl: wrote {n_ok} results to {out} and {len(failures)} errors to {errors}", err=True)
    elif fmt == "jsonl":
        for o in outcomes:
            click.echo(json.dumps(o.line(), ensure_ascii=False))
    else:
        output.results_rows(outcomes)


# Folders of devices and kernel files: -o never renames a file into these (/dev/stdout, /dev/fd/1...).
_SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")


def _check_target(path: Path, option: str) -> None:
    """-o writes a new file beside `path` and renames it over `path`: right for a file, but a device, a
    FIFO, or /dev/stdout (a symlink in /dev) must not be replaced, which root could do."""
    import os
    import stat

    folder = os.path.realpath(path.parent)
    system = any(folder == d or folder.startswith(d + "/") for d in _SYSTEM_FOLDERS)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError:
        regular = True  # nothing there yet, or a folder we cannot read: writing says what is wrong
    if system or not regular:
        raise click.BadParameter(
            f"{path} is a device or a system file; name a regular file, or leave -o out to print the results",
            param_hint=option,
        )


class _Watch:
    """While waiting: notices when the queue has work and nobody drains it (once per minute at most)."""

    def __init__(self, client: Any):
        self.client = client
        self.started = time.monotonic()
        self.last = 0.0
        self.said: set[str] = set()

    def notes(self, st: BatchStatus) -> list[str]:
        now = time.monotonic()
        if st.done or now - self.started < IDLE_NOTICE_SECONDS or now - self.last < IDLE_NOTICE_SECONDS:
            return []
        self.last = now
        fresh = [n for n in queue_notes(self.client, st.queue) if n not in self.said]
        self.said.update(fresh)
        return fresh


def wait_for_batch(client: Any, batch_id: str, timeout: float | None, quiet: bool = False) -> int:
    """Wait with progress; returns the exit code (0 all succeeded, 3 some failed or were cancelled); timeouts
    raise (exit 4)."""
    watch = _Watch(client)
    with output.Progress(quiet=quiet) as progress:

        def on_progress(st: BatchStatus) -> None:
            progress.update(st)
            for note in watch.notes(st):
                progress.note(note)

        st = client.wait(
            batch_id,
            timeout,
            WAIT_POLL_SECONDS,
            on_progress=on_progress,
            on_note=lambda m: progress.note(f"{m} (Ctrl-C stops)"),
            note_every=progress.every,
        )
    # Failed, expired, missing or cancelled: exit 0 promises an answer for every task, and a cron
    # script that reads it as "all answered" must not get 0 for a batch someone cancelled meanwhile.
    bad = st.failed + st.counts["cancelled"]
    if quiet:
        echo_json(st.as_dict())
    else:
        click.echo(f"jobctl: {output.progress_line(st)}", err=True)
    return OK if bad == 0 else TASKS_FAILED


@cli.command(short_help="Wait until a batch is done: exit 0, or 3 if tasks failed.")
@click.argument("batch")
@click.option("--timeout", type=float, show_default="wait forever", help="Give up after this many seconds (exit 4).")
@json_option
@click.pass_obj
def wait(obj: Ctx, batch: str, timeout: float | None, as_json: bool) -> None:
    """Wait until BATCH has no queued or running task: exit 0 if every task succeeded, 3 if some failed
    or were cancelled.

    A progress bar on a terminal, else a line every 10 seconds. Redis outages are waited out. If
    the queue has work and no worker drains it for a minute, a notice says so.
    """
    finish(wait_for_batch(obj.client(), batch, timeout, quiet=as_json))


@cli.command(short_help="What the GPU drains cost, beside OpenAI's Batch prices.")
@click.option("--since", default="30d", show_default=True, help="A duration (7d, 24h) or a date (2026-11-01).")
@json_option
@click.pass_obj
def cost(obj: Ctx, since: str, as_json: bool) -> None:
    """What the GPU drains cost: container seconds, tokens, the estimated price, and what the same tokens
    would cost at OpenAI's Batch API prices (configurable, see the README)."""
    from producer.cost import summarize

    client = obj.client()
    summary = summarize(client.connection, parse_since(since))
    if as_json:
        echo_json(summary.as_dict() if hasattr(summary, "as_dict") else summary)
    else:
        for line in summary.lines() if hasattr(summary, "lines") else [str(summary)]:
            click.echo(line)


def _float(v: str | None) -> float:
    """A plaintext stamp from Redis, or 0 if it was changed into something else."""
    try:
        f = float(v or 0)
    except ValueError:
        return 0.0
    return f if 0 < f < 1e11 else 0.0
