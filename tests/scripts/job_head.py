"""A private Ray head with the dashboard's job server, for `ray job submit` tests; stops when stdin closes.

Prints one JSON line {"address", "dashboard"} once the head is up, then waits. Closing stdin (or SIGTERM)
shuts down this head's processes only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from private_cluster import private_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dashboard-port", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through private_cluster's cleanup
    with private_cluster(args.num_cpus, object_store_mb=100, dashboard_port=args.dashboard_port) as cluster:
        print(json.dumps({"address": cluster.address, "dashboard": f"http://127.0.0.1:{args.dashboard_port}"}))
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main()
