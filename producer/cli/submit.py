"""`jobctl keygen` and `jobctl submit`."""

from __future__ import annotations

import click

from producer.cli.app import (
    Ctx,
    cli,
    echo_json,
    err,
    finish,
    json_option,
    parse_json_option,
    queue_option,
)
from producer.safe_text import visible


@cli.command(short_help="Make an encryption key and write it to the key file.")
@click.option("--force", is_flag=True, help="Replace an existing key file (results sealed with it become unreadable).")
@click.option("--if-missing", is_flag=True, help="Do nothing if the key file exists.")
@click.option("--print", "show", is_flag=True, help="Print a new key instead of writing a file.")
@json_option
@click.pass_obj
def keygen(obj: Ctx, force: bool, if_missing: bool, show: bool, as_json: bool) -> None:
    """Make a new encryption key and write it to the key file (mode 0600).

    Give the same key to every worker (JOBCTL_KEY, or the Modal secret). Without it, nobody can
    read the tasks or results, you included: back it up.
    """
    from jobs.crypto import Cipher, generate_key
    from jobs.keyfile import write_key_file

    if show:
        key = generate_key()
        echo_json({"key": key}) if as_json else click.echo(key)
        return
    settings = obj.settings()
    path = settings.default_key_file
    if if_missing and path.exists():
        echo_json({"key_file": str(path), "created": False}) if as_json else err(f"key file exists: {path}")
        return
    key = write_key_file(path, force)
    if as_json:
        echo_json({"key_file": str(path), "created": True, "key_id": Cipher(key).key_id})
    else:
        err(f"wrote a new key to {path}; back it up, and give it to your workers (JOBCTL_KEY)")
    if settings.key is not None:
        # JOBCTL_KEY wins over the key file: without this, the new key would silently go unused.
        err(f"JOBCTL_KEY is set and is used instead of {path}; unset it to use the new key")


def _metadata(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """`--metadata key=value` pairs as a dict (their limits are checked where every submit is: the store)."""
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--metadata")
        out[key.strip()] = value
    from jobs.parse import InputError
    from jobs.store.submit import check_batch_info

    try:
        check_batch_info(None, out)
    except InputError as e:
        raise click.BadParameter("; ".join(p.message for p in e.problems), param_hint="--metadata") from e
    return out


def _columns(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    out: dict[str, str] = {}
    for part in spec.split(","):
        role, sep, header = part.partition("=")
        if not sep or not role.strip() or not header.strip():
            raise click.BadParameter(
                f"{part!r} is not role=header; e.g. --columns "
                "date=Buchungstag,amount=Betrag,description=Verwendungszweck",
                param_hint="--columns",
            )
        out[role.strip().lower()] = header.strip()
    return out


@cli.command(short_help="Validate files and enqueue all their tasks as one batch.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(allow_dash=True))
@queue_option()
@click.option(
    "--kind",
    show_default="email.triage for mail, transaction.categorize for bank records",
    help="Kind for imported mail or bank records.",
)
@click.option("--options", "options_json", metavar="JSON", help="Options for every task (a task's own options win).")
@click.option(
    "--columns", metavar="ROLE=HEADER,...", help="Map a bank CSV's columns: date=...,amount=...,description=..."
)
@click.option("--name", help="A name to find the batch by (`jobctl status --name`).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Metadata for the batch (up to 16 pairs).")
@click.option(
    "--replace", is_flag=True, help="Run tasks whose custom_id exists with other content again, replacing them."
)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the batch to finish (exit 3 if tasks failed).")
@click.option(
    "--timeout", type=float, show_default="wait forever", help="With --wait: give up after this many seconds (exit 4)."
)
@json_option
@click.pass_obj
def submit(
    obj: Ctx,
    paths: tuple[str, ...],
    queue: str | None,
    kind: str | None,
    options_json: str | None,
    columns: str | None,
    name: str | None,
    metadata: tuple[str, ...],
    replace: bool,
    wait_: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Validate PATHS and enqueue all of their tasks as one batch, or none. `-` reads stdin.

    Each PATH is read by its content: a JSON list of tasks (or {"tasks": [...], "options": {...}}),
    JSONL, or OpenAI Batch JSONL; or what you have: an mbox file, a Maildir folder, a folder of
    .eml files or one .eml, a bank CSV, or an OFX/QFX export. Imported records get ids from
    themselves (Message-ID, FITID), so a nightly cron over overlapping exports never runs a
    record twice. Kinds: email.triage, email.summarize, email.extract, email.draft_reply,
    transaction.categorize, transaction.flag, chat, extract.

    Prints the batch id. A task already in the queue with the same custom_id, kind and content is
    a duplicate and not run again (the batch still lists it); the same custom_id with other content
    stops the submit, unless --replace.
    """
    from producer.intake import Intake, read_paths

    if timeout is not None and not wait_:
        raise click.BadParameter("only with --wait", param_hint="--timeout")
    options = parse_json_option(options_json, "--options")
    client = obj.client(queue=queue)
    intake = Intake(client.limits(options), kind, _columns(columns))
    parsed = read_paths(list(paths), intake)
    res = client.submit_parsed(parsed, name=name, metadata=_metadata(metadata), replace=replace)
    if as_json:
        echo_json(res.as_dict())
    else:
        click.echo(res.batch_id)
        notes = []
        if res.duplicates:
            notes.append(f"{res.duplicates} duplicates skipped: already queued or done")
        if res.replaced:
            notes.append(f"{res.replaced} replaced")
        if res.rejected:
            notes.append(f"{res.rejected} lines for endpoints jobctl does not serve, in the errors")
        extra = f" ({'; '.join(notes)})" if notes else ""
        err(f"submitted {res.enqueued} new tasks to queue {visible(res.queue)}{extra}")
    if wait_:
        from producer.cli.read import wait_for_batch

        finish(wait_for_batch(client, res.batch_id, timeout, quiet=as_json))
