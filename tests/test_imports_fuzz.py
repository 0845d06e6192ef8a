"""Whatever bytes an import is given, it yields records or raises a located InputError: never a traceback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.imports import DEFAULT_KINDS, ImportOptions, detect, read_records
from jobs.kinds import KINDS
from jobs.parse import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
SEEDS = [
    (FIXTURES / "csv" / "dkb-girokonto-2024-01.csv").read_bytes(),
    (FIXTURES / "csv" / "us-checking-2024-01.csv").read_bytes(),
    (FIXTURES / "inbox.mbox").read_bytes()[:6000],
    (FIXTURES / "mail" / "reply-thread.eml").read_bytes(),
    (FIXTURES / "attachments" / "mail" / "scan-to-email.eml").read_bytes(),
    (FIXTURES / "attachments" / "mail" / "attachment-only.eml").read_bytes(),
    (FIXTURES / "attachments" / "mail" / "inline-photo-first.eml").read_bytes(),
    (FIXTURES / "checking-ofx1.qfx").read_bytes(),
    (FIXTURES / "creditcard-ofx2.ofx").read_bytes(),
]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "insert", "flip", "delete"]))
        if op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=12)
                | st.sampled_from([b";", b",", b'"', b"\n", b"From ", b"<", b"=?utf-8?q?"])
            )
        elif op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=mangled())
def test_mangled_exports_give_records_or_a_located_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export"
        path.write_bytes(raw)
        try:
            fmt = detect(path)
            if fmt == "tasks":
                return
            for rec in read_records(path, fmt, ImportOptions(context_tokens=2048)):
                assert rec.custom_id and len(rec.custom_id) <= 256
                KINDS[DEFAULT_KINDS[rec.family]].input_model.model_validate(rec.input)
        except InputError as e:
            assert e.problems and str(e)
