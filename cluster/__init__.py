"""Everything that touches Ray and bytes: storage, corpora, decoding, models, predictors, sink.

Importing this package starts nothing: Ray is only initialised by :func:`connect`.
"""

__version__ = "0.1.0"

from ironsight.cluster.errors import GateFailed, InvalidInput, IronsightError, JobFailed  # noqa: E402
from ironsight.cluster.preprocess import Preprocess  # noqa: E402

__all__ = ["GateFailed", "InvalidInput", "IronsightError", "JobFailed", "Preprocess", "__version__"]
