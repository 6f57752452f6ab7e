"""MLPerf LoadGen on ssdtool's engines (``ssdtool bench --scenario``; docs/bench.md, "LoadGen scenarios").

* :mod:`~ssdtool.loadgen.settings` - MLPerf v2.0's settings for ssd-resnet34, user.conf, the flags;
* :mod:`~ssdtool.loadgen.qsl` - the query sample library (real images in annotation order, or generated ones);
* :mod:`~ssdtool.loadgen.sut` - the system under test driving one Engine;
* :mod:`~ssdtool.loadgen.accuracy` - the seven-float32 response record and its decoding;
* :mod:`~ssdtool.loadgen.summary` - LoadGen's summary as data;
* :mod:`~ssdtool.loadgen.run` - :func:`run_loadgen`, the one call.

``mlperf_loadgen`` is imported only when a test runs (the ``loadgen`` extra).
"""

from __future__ import annotations

from ssdtool.loadgen.run import LoadGenOptions, LoadGenProgress, run_loadgen
from ssdtool.loadgen.settings import SettingsOverrides
from ssdtool.loadgen.summary import LoadGenReport, LoadGenSummary, RunConfig, parse_summary, read_summary

__all__ = ["LoadGenOptions", "LoadGenProgress", "LoadGenReport", "LoadGenSummary", "RunConfig", "SettingsOverrides",
           "parse_summary", "read_summary", "run_loadgen"]
