"""The ``synthetic:`` download source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.synthetic.graph import build_model

if TYPE_CHECKING:
    from ssdtool.download.sources import Body


class SyntheticSource:
    """The ``synthetic:`` download source: builds the twin a URL names, in memory, for the download to verify
    and install like any fetched file (registered by name in :mod:`ssdtool.download.sources`, so downloading
    imports onnx only when such a URL is fetched)."""

    local = True

    def __init__(self, options: object, cancel: object) -> None:
        del options, cancel  # building takes about a second and needs neither timeouts nor interruption

    def open(self, url: str, offset: int, file: object) -> Body:
        from ssdtool.download.sources import AttemptFailed, bytes_body
        from ssdtool.errors import SsdtoolError

        del offset, file  # a build always starts at byte zero
        try:
            data = build_model(url).SerializeToString()
        except SsdtoolError:
            raise
        except Exception as exc:
            raise AttemptFailed(f"building the synthetic model failed: {type(exc).__name__}: {exc}") from None
        return bytes_body(data, mismatch_note=" (the twin differs from the registry's pin; are numpy and onnx the "
                                              "versions the pin was made with?)")

    def close(self) -> None:
        pass
