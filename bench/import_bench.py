"""Import benchmark: a ~50 MB mbox of 10,000 messages and a 100,000-row bank CSV, read into records
(jobs.imports), then validated as tasks, against parsing the same tasks from a JSON file
(jobs.parse.parse_bytes). Each measurement runs in a fresh subprocess, so its peak RSS is its own.

    python bench/import_bench.py [--messages 10000] [--rows 100000] [--out figures.json]

make_mbox(path, n) and make_csv(path, n) are reusable, e.g. for an end-to-end submit benchmark.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def measure(what: str, path: Path) -> dict[str, Any]:
    """One measurement, in this process: `import` (records only), `import+validate` (records
    turned into tasks and validated as the kinds' models see them), or `json` (parse_bytes)."""
    from jobs.imports import ImportOptions, detect, read_records
    from jobs.parse import Limits, parse_bytes, parse_objects

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


def _child(what: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", what, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _as_json(source: Path, target: Path) -> None:
    from jobs.imports import ImportOptions, detect, read_records

    records = list(read_records(source, detect(source), ImportOptions(max_file_bytes=1 << 30)))
    target.write_text(json.dumps(_tasks(records), ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out")
    ap.add_argument("--measure", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, make, n in (("mbox", make_mbox, args.messages), ("csv", make_csv, args.rows)):
            src = d / f"bench.{name}"
            size = make(src, n)
            as_json = d / f"{name}-tasks.json"
            _as_json(src, as_json)
            row: dict[str, Any] = {
                "items": n,
                "file_mb": round(size / 1e6, 1),
                "json_mb": round(as_json.stat().st_size / 1e6, 1),
            }
            for what in ("import", "import+validate", "json"):
                row[what] = _child(what, src if what != "json" else as_json)
            row["import+validate_vs_json"] = round(row["import+validate"]["per_s"] / row["json"]["per_s"], 2)
            results[name] = row
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
