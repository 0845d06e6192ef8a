"""Import benchmark: a ~50 MB mbox of 10,000 messages and a 100,000-row bank CSV, against the same
tasks as a JSON file. Each measurement runs in a fresh subprocess, so its peak RSS is its own.

End to end (always), as a user runs `jobctl submit PATH`: producer.intake.read_paths (detect,
read, validate; a large mailbox in worker processes, see jobs/imports/pool.py) then
Client.submit_parsed (encrypt, stage, publish) into a redis-server of the benchmark's own, flushed
before each run. The import and its JSON twin alternate, `--repeat` times each; the figures are
medians, `import_vs_json` is the ratio of the median rates and `pairs` the ratio of each pair run
back to back (this shared 2-core machine's speed swings, so only figures from one run compare).
Peak RSS is this process's (VmHWM); `worker_peak_rss_mb` the largest worker's, whose pages are
partly shared with it.

Parse only (`--parse`, as well): records only (jobs.imports), records validated as tasks, and
parse_bytes of the JSON file, without Redis.

    python bench/import_bench.py [--messages 10000] [--rows 100000] [--repeat 3] [--only mbox|csv] [--parse] [--out F]

make_mbox(path, n) and make_csv(path, n) are reusable.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_NAMES = [
    "Ana Lima",
    "Jürgen Köhler",
    "Zoé Martin",
    "Inès García",
    "Sam O'Neil",
    "Hannah Weiß",
    "Priya Nair",
    "Tomás Ruiz",
]
_SUBJECTS = [
    "Dentist on Friday?",
    "Rechnung Nr. {n} – Fälligkeit",
    "Réunion de lundi – ordre du jour",
    "Your statement is ready",
    "Invoice {n} overdue",
    "Flight change: LH {n}",
    "Dinner Saturday",
    "School trip form",
]
_PARAGRAPH = (
    "Thanks for getting back to me so quickly. As discussed on the phone, the new schedule starts on "
    "the {d}th and we will need the signed form before then. Could you also confirm the amount of "
    "{a},50 EUR and whether the invoice should go to the office or to your home address? "
)
_PDF = b"%PDF-1.4\n" + bytes(random.Random(7).randrange(256) for _ in range(14_000)) + b"\n%%EOF\n"
_PDF_B64 = "\n".join(base64.b64encode(_PDF).decode()[i : i + 76] for i in range(0, len(base64.b64encode(_PDF)), 76))


def _rfc2047(text: str) -> str:
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def _message(i: int, rng: random.Random) -> str:
    name = _NAMES[i % len(_NAMES)]
    subject = _SUBJECTS[i % len(_SUBJECTS)].format(n=1000 + i)
    body = "\n\n".join(_PARAGRAPH.format(d=1 + i % 28, a=20 + i % 900) for _ in range(2 + i % 4))
    head = (
        f"From: {_rfc2047(name)} <person{i % 97}@example.org>\n"
        f"To: Me <me@example.net>\n"
        f"Subject: {_rfc2047(subject)}\n"
        f"Date: Mon, {1 + i % 28:02d} Jan 2024 {i % 24:02d}:{i % 60:02d}:00 +0100\n"
        f"Message-ID: <bench-{i}.{rng.randrange(10**9)}@example.org>\n"
        "MIME-Version: 1.0\n"
    )
    html = "<html><body>" + "".join(f"<p>{p}</p>" for p in body.split("\n\n")) + "</body></html>"
    style = i % 10
    if style < 5:  # text and HTML alternatives
        return (
            head + 'Content-Type: multipart/alternative; boundary="alt"\n\n'
            "--alt\nContent-Type: text/plain; charset=utf-8\n\n"
            f"{body}\n--alt\nContent-Type: text/html; charset=utf-8\n\n{html}\n--alt--\n"
        )
    if style < 7:  # HTML only
        return head + "Content-Type: text/html; charset=utf-8\n\n" + html + "\n"
    if style < 9:  # text with a PDF attachment
        return (
            head + 'Content-Type: multipart/mixed; boundary="mix"\n\n'
            f"--mix\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
            '--mix\nContent-Type: application/pdf; name="invoice.pdf"\n'
            'Content-Disposition: attachment; filename="invoice.pdf"\nContent-Transfer-Encoding: base64\n\n'
            f"{_PDF_B64}\n--mix--\n"
        )
    return head + "Content-Type: text/plain; charset=utf-8\n\n" + body + "\n"


def make_mbox(path: Path, n: int, seed: int = 1) -> int:
    """Write an mbox of `n` messages (half text+HTML, a fifth HTML-only, a fifth with a PDF);
    returns its size in bytes (about 5 KB a message)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(n):
            f.write(f"From person{i % 97}@example.org Mon Jan  1 00:00:00 2024\n")
            f.write(_message(i, rng))
            f.write("\n")
    return path.stat().st_size


_SHOPS = ["REWE Markt GmbH", "Bäckerei Rischart", "Stadtwerke München", "DB Vertrieb GmbH", "Allianz Versicherungs-AG"]


def make_csv(path: Path, n: int, seed: int = 1) -> int:
    """Write a German bank export of `n` rows: cp1252, semicolons, preamble lines, DD.MM.YYYY,
    Soll/Haben columns with decimal commas. Returns its size in bytes."""
    rng = random.Random(seed)
    lines = [
        '"Kontonummer:";"DE44 1203 0000 1034 5678 90 / Girokonto";',
        "",
        '"Buchungstag";"Wertstellung";"Auftraggeber / Begünstigter";"Verwendungszweck";"Soll (EUR)";"Haben (EUR)";',
    ]
    for i in range(n):
        day = f"{1 + i % 28:02d}.{1 + (i // 28) % 12:02d}.{2020 + i // 336 % 5}"
        cents = rng.randrange(100, 500_000)
        money = f"{cents // 100:,}".replace(",", ".") + f",{cents % 100:02d}"
        soll, haben = (f"-{money}", "") if i % 7 else ("", money)
        shop = _SHOPS[i % len(_SHOPS)]
        lines.append(f'"{day}";"{day}";"{shop}";"Kartenzahlung {i} Filiale {i % 300}";"{soll}";"{haben}";')
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    return path.stat().st_size


def _tasks(records: list[Any]) -> list[dict[str, Any]]:
    from jobs.imports import DEFAULT_KINDS

    return [{"custom_id": r.custom_id, "kind": DEFAULT_KINDS[r.family], "input": r.input} for r in records]


def measure(what: str, path: Path, redis_url: str | None = None) -> dict[str, Any]:
    """One measurement, in this process: `import` (records only), `import+validate` (records
    turned into tasks and validated as the kinds' models see them), `json` (parse_bytes), or
    `submit` (read_paths then Client.submit_parsed into `redis_url`, whatever the file is)."""
    from jobs.imports import ImportOptions, detect, read_records
    from jobs.parse import Limits, parse_bytes, parse_objects

    if what == "submit":
        return _submit(path, redis_url or "")
    limits = Limits(max_file_bytes=1 << 30)
    t0 = time.perf_counter()
    if what == "json":
        n = len(parse_bytes(path.read_bytes(), path.name, limits))
    else:
        opts = ImportOptions(max_file_bytes=1 << 30)
        fmt = detect(path)
        if what == "import":
            n = sum(1 for _ in read_records(path, fmt, opts))
        else:
            records = list(read_records(path, fmt, opts))
            n = len(parse_objects(_tasks(records), path.name, limits))
    wall = time.perf_counter() - t0
    return {"records": n, "seconds": round(wall, 3), "per_s": round(n / wall, 1), "peak_rss_mb": peak_rss_mb()}


def _submit(path: Path, redis_url: str) -> dict[str, Any]:
    """`jobctl submit PATH` without the CLI around it: what producer/cli/submit.py calls."""
    from jobs.config import Settings
    from jobs.crypto import generate_key
    from producer.client import Client
    from producer.intake import Intake, read_paths

    settings = Settings.from_env(env={}, redis_url=redis_url, key=generate_key(), queue="bench", home=path.parent)
    client = Client(settings.with_(max_file_bytes=1 << 30))
    t0 = time.perf_counter()
    parsed = read_paths([str(path)], Intake(client.limits()))
    t1 = time.perf_counter()
    result = client.submit_parsed(parsed)
    t2 = time.perf_counter()
    assert result.enqueued == len(parsed) > 0, result
    from jobs.imports import pool

    # Worker processes (a large mailbox) are forked: their resident pages are partly this process's,
    # shared, so adding their peaks to this one's overstates the memory used.
    workers = pool.workers_for(path.stat().st_size) if path.suffix == ".mbox" else 0
    return {
        "tasks": len(parsed),
        "read_validate_s": round(t1 - t0, 3),
        "submit_s": round(t2 - t1, 3),
        "seconds": round(t2 - t0, 3),
        "per_s": round(len(parsed) / (t2 - t0), 1),
        "peak_rss_mb": peak_rss_mb(),
        "workers": workers,
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1) if workers else 0,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts anew at exec; ru_maxrss would
    carry the parent's peak over into a child started by fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(what: str, path: Path, redis_url: str = "") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", what, str(path), redis_url],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"{what} {path.name} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _as_json(source: Path, target: Path) -> None:
    from jobs.imports import ImportOptions, detect, read_records

    records = list(read_records(source, detect(source), ImportOptions(max_file_bytes=1 << 30)))
    target.write_text(json.dumps(_tasks(records), ensure_ascii=False))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def end_to_end(src: Path, as_json: Path, repeat: int, redis_url: str) -> dict[str, Any]:
    """The import and its JSON twin, alternating, each into an empty Redis."""
    conn = redis.Redis.from_url(redis_url)
    runs: dict[str, list[dict[str, Any]]] = {"import": [], "json": []}
    for _ in range(repeat):
        for name, path in (("import", src), ("json", as_json)):
            conn.flushall()
            runs[name].append(_child("submit", path, redis_url))
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        out[name] = {
            "per_s": _median(rows, "per_s"),
            "seconds": _median(rows, "seconds"),
            "read_validate_s": _median(rows, "read_validate_s"),
            "submit_s": _median(rows, "submit_s"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "workers": rows[0]["workers"],
            "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rows),
            "runs_per_s": [r["per_s"] for r in rows],
        }
    out["import_vs_json"] = round(out["import"]["per_s"] / out["json"]["per_s"], 2)
    out["pairs"] = [round(i["per_s"] / j["per_s"], 2) for i, j in zip(runs["import"], runs["json"], strict=True)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs of each (medians are reported)")
    ap.add_argument("--parse", action="store_true", help="also the parse-only figures (no Redis)")
    ap.add_argument("--only", choices=["mbox", "csv"], help="one of the two inputs")
    ap.add_argument("--out")
    ap.add_argument("--measure", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        what, path, *rest = args.measure
        print(json.dumps(measure(what, Path(path), rest[0] if rest else None)))
        return
    from bench.common import free_port, start_redis

    results: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        port = free_port()
        server = start_redis(port, tmp, system=True)
        redis_url = f"redis://127.0.0.1:{port}/0"
        try:
            for name, make, n in (("mbox", make_mbox, args.messages), ("csv", make_csv, args.rows)):
                if args.only and name != args.only:
                    continue
                src = d / f"bench.{name}"
                size = make(src, n)
                as_json = d / f"{name}-tasks.json"
                _as_json(src, as_json)
                row: dict[str, Any] = {
                    "items": n,
                    "file_mb": round(size / 1e6, 1),
                    "json_mb": round(as_json.stat().st_size / 1e6, 1),
                    "end_to_end": end_to_end(src, as_json, args.repeat, redis_url),
                }
                if args.parse:
                    for what in ("import", "import+validate", "json"):
                        row[what] = _child(what, src if what != "json" else as_json)
                    row["import+validate_vs_json"] = round(row["import+validate"]["per_s"] / row["json"]["per_s"], 2)
                results[name] = row
                print(json.dumps({name: row}), file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
