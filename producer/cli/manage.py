"""`jobctl retry` and `jobctl cancel`: changing a batch. Both need the batch's key."""

from __future__ import annotations

import click

from producer.cli.app import Ctx, cli, echo_json, err, json_option, parse_json_option


@cli.command(short_help="Re-queue a batch's failed (or cancelled) tasks.")
@click.argument("batch")
@click.option("--options", "options_json", metavar="JSON", help="Change options first, e.g. '{\"max_tokens\": 400}'.")
@click.option("--include-cancelled", is_flag=True, help="Re-queue the batch's cancelled tasks too.")
@json_option
@click.pass_obj
def retry(obj: Ctx, batch: str, options_json: str | None, include_cancelled: bool, as_json: bool) -> None:
    """Re-queue BATCH's failed tasks (and its cancelled ones with --include-cancelled).

    --options are merged into each task's own options and checked as at submit, so a task cut off
    at max_tokens can be run again with room to answer.
    """
    options = parse_json_option(options_json, "--options")
    n = obj.client().retry(batch, options, include_cancelled=include_cancelled)
    if as_json:
        echo_json({"batch_id": batch, "requeued": n})
    else:
        err(f"re-queued {n} tasks of {batch}")


@cli.command(short_help="Drop a batch's queued tasks.")
@click.argument("batch")
@json_option
@click.pass_obj
def cancel(obj: Ctx, batch: str, as_json: bool) -> None:
    """Drop BATCH's queued tasks. Running tasks finish; `jobctl retry --include-cancelled` brings them back."""
    n = obj.client().cancel(batch)
    if as_json:
        echo_json({"batch_id": batch, "cancelled": n})
    else:
        err(f"cancelled {n} queued tasks of {batch}")
