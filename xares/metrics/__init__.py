"""Scoring of generated text against references (one score in [0, 1] per task)."""

from xares.metrics.asr import iCER, iWER
from xares.metrics.base import Metric, MetricUnavailableError
from xares.metrics.caption import DATE, FENSE, TokenF1
from xares.metrics.classification import Accuracy, mAP
from xares.metrics.normalise import normalise_text
from xares.metrics.registry import METRICS, UnknownMetricError, build_metric, register_metric

__all__ = [
    "DATE",
    "FENSE",
    "METRICS",
    "Accuracy",
    "Metric",
    "MetricUnavailableError",
    "TokenF1",
    "UnknownMetricError",
    "build_metric",
    "iCER",
    "iWER",
    "mAP",
    "normalise_text",
    "register_metric",
]
