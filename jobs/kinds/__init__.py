"""The registry of task kinds, by name."""

from __future__ import annotations

from jobs.kinds.base import Kind, OutputInvalid
from jobs.kinds.email import DraftReply, Extract, Summarize, Triage
from jobs.kinds.generic import Chat, ExtractKind
from jobs.kinds.transaction import Categorize, Flag

KINDS: dict[str, Kind] = {
    k.name: k for k in (Triage(), Summarize(), Extract(), DraftReply(), Categorize(), Flag(), Chat(), ExtractKind())
}

__all__ = ["KINDS", "Kind", "OutputInvalid"]
