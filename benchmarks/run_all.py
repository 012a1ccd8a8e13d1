"""`make bench`: every benchmark, one after the other, each printing its own table."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import audit_cost  # noqa: E402
import classify_throughput  # noqa: E402

if __name__ == "__main__":
    classify_throughput.main(["--images", "4000", "--rss"])
    audit_cost.main(["--images", "300", "--suite", "standard"])
