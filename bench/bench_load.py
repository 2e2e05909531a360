"""Load benchmark (issue 6): N dcmtk storescu senders at once push M phantom images each to `ercp-node serve`
(shipped model, Orthanc as the PACS); writes bench/results/load.json.

Per database (SQLite in the data dir; PostgreSQL too when --db-url or ERCP_TEST_DB_URL names a server whose user
may create databases): C-STORE failures, intake throughput (first C-STORE → last storescu done), end-to-end
throughput (first C-STORE → every SEG and SR acknowledged by Orthanc), latency per image (received → both
delivered), and the exactly-once check of the stress suite. Side by side: one sender with the same images.

Usage: python bench/bench_load.py [--senders 8] [--per-sender 100] [--db-url postgresql+psycopg://…] [--no-single]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def one_run(tmp: Path, files: list[Path], groups: int, db_url: str | None) -> dict:
    from helpers import Orthanc

    from stress import harness

    class PACS(Orthanc):
        destination = property(lambda self: f"{self.aet}@127.0.0.1:{self.dicom_port}")

    pacs = PACS(tmp / "orthanc")
    node = harness.NodeProc(tmp / "node", destinations=[pacs.destination], db_url=db_url)
    try:
        node.start()
        per = len(files) // groups
        res = harness.run_load(node, [files[k * per:(k + 1) * per] for k in range(groups)], tmp / "senders")
        res["exactly_once"] = harness.check_exactly_once(node, pacs, files, expected_jobs=len(files))
        res.pop("failed_files") if not res["failed_files"] else None
        return res
    finally:
        node.stop()
        pacs.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--per-sender", type=int, default=100)
    ap.add_argument("--db-url", default=os.environ.get("ERCP_TEST_DB_URL"),
                    help="PostgreSQL server URL (a fresh database is made on it); default $ERCP_TEST_DB_URL")
    ap.add_argument("--no-single", action="store_true", help="skip the one-sender run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = ap.parse_args()

    from stress import harness

    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "note": "2 CPU cores, no GPU; other work may share the cores"},
                     "senders": args.senders, "images_per_sender": args.per_sender,
                     "images": "phantom RF 512x512 8-bit explicit VR little endian, unique UIDs",
                     "model": "shipped default model", "pacs": "Orthanc (dcmtk storescu → ercp-node → Orthanc)",
                     "runs": {}}
    dbs = [("sqlite", None)] + ([("postgresql", args.db_url)] if args.db_url else [])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = harness.synth_base(tmp / "phantom")
        files = harness.clone_images(base, tmp / "images", args.senders * args.per_sender)
        for name, admin in dbs:
            runs = [(f"{args.senders} senders", args.senders)] + ([] if args.no_single else [("1 sender", 1)])
            for label, groups in runs:
                url = harness.pg_create(admin) if admin else None
                t = time.time()
                try:
                    res = one_run(tmp / f"{name}-{groups}", files, groups, url)
                finally:
                    if admin:
                        harness.pg_drop(admin, url)
                print(f"{name}, {label}: {json.dumps(res)}  ({time.time() - t:.0f} s)", flush=True)
                results["runs"].setdefault(name, {})[label] = res
    for name, r in results["runs"].items():
        multi, single = r.get(f"{args.senders} senders"), r.get("1 sender")
        if multi and single:
            r["ratios"] = {f"ingest {args.senders} senders / 1 sender":
                           round(multi["ingest_images_per_s"] / single["ingest_images_per_s"], 2),
                           f"end-to-end {args.senders} senders / 1 sender":
                           round(multi["end_to_end_images_per_s"] / single["end_to_end_images_per_s"], 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
