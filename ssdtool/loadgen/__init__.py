"""MLPerf LoadGen on ssdtool's engines (``ssdtool bench --scenario``; docs/bench.md, "LoadGen scenarios").

* :mod:`~ssdtool.loadgen.limits` - the bounds of every setting, one table (flags, user.conf, the check);
* :mod:`~ssdtool.loadgen.userconf` - ``--user-conf``, LoadGen's format read strictly;
* :mod:`~ssdtool.loadgen.settings` - MLPerf v2.0's settings for ssd-resnet34, their resolution, the check;
* :mod:`~ssdtool.loadgen.qsl` - the query sample library (real images in annotation order, or generated ones);
* :mod:`~ssdtool.loadgen.sut` - the system under test driving one Engine;
* :mod:`~ssdtool.loadgen.accuracy` - the seven-float32 response record and its decoding;
* :mod:`~ssdtool.loadgen.summary` - LoadGen's summary as data;
* :mod:`~ssdtool.loadgen.run` - :func:`run_loadgen`, the one call.

Names are imported on first use, so the command line can read :mod:`~ssdtool.loadgen.limits` without numpy;
``mlperf_loadgen`` is imported only when a test runs (the ``loadgen`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.lazy import lazy_attributes

if TYPE_CHECKING:
    from ssdtool.loadgen.run import LoadGenOptions, LoadGenProgress, run_loadgen
    from ssdtool.loadgen.settings import SettingsOverrides
    from ssdtool.loadgen.summary import LoadGenReport, LoadGenSummary, RunConfig, parse_summary, read_summary

_LAZY = {
    "LoadGenOptions": "ssdtool.loadgen.run", "LoadGenProgress": "ssdtool.loadgen.run",
    "run_loadgen": "ssdtool.loadgen.run",
    "SettingsOverrides": "ssdtool.loadgen.settings",
    "LoadGenReport": "ssdtool.loadgen.summary", "LoadGenSummary": "ssdtool.loadgen.summary",
    "RunConfig": "ssdtool.loadgen.summary", "parse_summary": "ssdtool.loadgen.summary",
    "read_summary": "ssdtool.loadgen.summary",
}

__all__ = ["LoadGenOptions", "LoadGenProgress", "LoadGenReport", "LoadGenSummary", "RunConfig", "SettingsOverrides",
           "parse_summary", "read_summary", "run_loadgen"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
