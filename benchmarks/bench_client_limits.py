"""The ``--server`` client against a misbehaving server (tests/hostile_server.py): peak resident memory (psutil) and
wall time of ``ssdtool detect IMAGE --server URL --server-retries 0`` for each mode, in a child process.

* ``ok``: a correct answer, the baseline memory of a client run;
* ``gzip-bomb`` (1 MB with its Content-Length, inflating to 1 GiB), ``gzip-bomb-chunked`` (the same, chunked:
  inflated up to the cap), ``endless`` (a chunked body that never ends), ``metadata-huge`` (endless metadata):
  refused at the size cap, exit 32; target: peak under 300 MB;
* ``trickle`` (headers, then one body byte a second) and ``trickle-headers`` (one header byte a second), with
  ``--server-timeout 5``: given up on at the deadline, exit 10; target: done within a second of it.

    python benchmarks/bench_client_limits.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.hostile_server import HostileServer, run_measured

TINY = "ssd-resnet34-300-synthetic-tiny"
MODES = ("ok", "gzip-bomb", "gzip-bomb-chunked", "endless", "metadata-huge", "trickle", "trickle-headers")
TIMEOUT = 5.0
MAX_RSS_MB = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    import numpy as np
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "photo.png"
        Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(image)
        for mode in MODES:
            with HostileServer(mode) as server:
                code, stderr, peak, seconds = run_measured(
                    ["detect", str(image), "-m", TINY, "--server", server.url, "--server-retries", "0",
                     "--server-timeout", str(TIMEOUT)], timeout=120)
            message = stderr.strip().splitlines()[0][:110] if stderr.strip() else ""
            rows.append({"mode": mode, "exit_code": code, "peak_rss_mb": round(peak / 2**20, 1),
                         "seconds": round(seconds, 2), "message": message})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'mode':<20}{'exit':>5}{'peak MB':>10}{'seconds':>9}  message")
        for row in rows:
            print(f"{row['mode']:<20}{row['exit_code']:>5}{row['peak_rss_mb']:>10}{row['seconds']:>9}  "
                  f"{row['message']}")
    over = [r["mode"] for r in rows if r["peak_rss_mb"] >= MAX_RSS_MB]
    late = [r["mode"] for r in rows if r["mode"].startswith("trickle") and r["seconds"] > TIMEOUT + 3]
    if over or late:
        print(f"over {MAX_RSS_MB} MB: {over or 'none'}; late: {late or 'none'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
