"""Ironsight from Python: bulk-label a corpus, then audit an in-memory torch model.

    python examples/label_and_audit.py [--workdir DIR] [--images N] [--audit-images N]

Needs nothing but an installed Ironsight (`make venv`): it draws its own labeled corpus
(ironsight.cluster.synthetic: shapes on textured backgrounds, 64x64 JPEGs), labels it with the
registered demo CNN (random weights: the labels are meaningless, the pipeline is real), and
audits a small network defined below, passed as a `torch.nn.Module`, with the quick suite at
severity 1. Both runs are recorded in the run history (`ironsight history`; set
IRONSIGHT_HOME to keep it elsewhere). One embedded Ray serves both calls.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import ironsight
from ironsight.cluster import synthetic
from ironsight.cluster.raycluster import connect


class TinyNet(nn.Module):
    """A small CNN defined in this script: Ray pickles it by value for its actors.

    It expects normalized pixels (Ironsight puts Normalize(mean, std) in front of it) and
    returns one logit per class.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 64, 64) -> (N, num_classes)
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where data and outputs go (default: a temp dir)")
    parser.add_argument("--images", type=int, default=200, help="corpus size (default: 200)")
    parser.add_argument("--audit-images", type=int, default=64, help="images audited (default: 64)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ironsight-example-"))
    corpus = work / "corpus"
    if not corpus.exists():
        synthetic.write_corpus(str(corpus), args.images, seed=1, rows_per_file=100, row_group_size=50)

    with connect():  # optional: without it each call starts (and stops) its own embedded Ray
        # 1. Bulk labeling, with the spec's keys as keywords (`ironsight classify --help` lists them).
        labels = ironsight.classify(input=str(corpus), output=str(work / "labels"), model="demo_cnn",
                                    random_weights=True, top_k=3, name="example-labels")
        print(labels.summary.render())
        table = labels.table()
        print(f"{table.num_rows} rows labeled into {labels.output}; columns: {', '.join(table.column_names)}")

        # 2. An audit of an in-memory module: its preprocessing and class names come with it.
        torch.manual_seed(0)
        net = TinyNet(len(synthetic.CLASS_NAMES))
        audit = ironsight.audit(
            input=str(corpus), output=str(work / "audit"), name="example-audit",
            module=net, model="tinynet",
            preprocess=ironsight.Preprocess(resize=None, crop=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
            class_names=synthetic.CLASS_NAMES,
            suite="quick", severities=[1], max_images=args.audit_images,
        )
    print(f"clean accuracy of tinynet (untrained): {audit.clean_accuracy:.3f} "
          f"on {audit.report['clean']['n']} images")
    for cell in audit.report["conditions"]:
        print(f"  {cell['name']:<16} severity {cell['severity']}: accuracy {cell['accuracy']:.3f}")
    print(f"report: {audit.paths['html']}")
    print(f"history runs: classify {labels.run_id}, audit {audit.run_id} (`ironsight history`)")


if __name__ == "__main__":
    main()
