"""Fuzzed image messages: whatever arrives, the node's frame handler never raises; bad ones are counted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from ros_fakes import CHANNELS, compressed_message, header, random_pixels  # noqa: E402

from fpseg_core import FPSeg  # noqa: E402
from fpseg_core.runtime.controller import FrameResult, Rejection, SegmentationController  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = [*CHANNELS, "yuv422", "16UC1", "mono16", "RGB8", "", "bgr8 "]
ODD_VALUES = st.sampled_from([None, -1, 2**33, 1.5, "4", True, [], b"\x00"])


@pytest.fixture(scope="module")
def controllers(tiny_checkpoint: Path) -> dict[str, SegmentationController]:
    model = FPSeg.from_checkpoint(tiny_checkpoint)
    return {"raw": SegmentationController(model), "compressed": SegmentationController(model, compressed_input=True)}


@st.composite
def image_messages(draw) -> SimpleNamespace:
    """Mostly near-valid Image messages with one or more fields bent, plus some entirely random ones."""
    encoding = draw(st.sampled_from(ENCODINGS))
    height, width = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    row = width * CHANNELS.get(encoding, 3)
    step = row + draw(st.sampled_from([0, 0, 0, 1, 3, -1, -row]))
    size = step * height + draw(st.sampled_from([0, 0, 0, 1, -1, 7]))
    data = draw(st.one_of(st.binary(min_size=max(size, 0), max_size=max(size, 0)),
                          st.lists(st.integers(-3, 300), max_size=40), st.binary(max_size=200)))
    msg = SimpleNamespace(header=header(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 999_999_999))),
                          height=height, width=width, encoding=encoding, is_bigendian=draw(st.integers(0, 1)),
                          step=step, data=data)
    for field in draw(st.lists(st.sampled_from(["height", "width", "step", "data", "encoding", "header"]),
                               max_size=2)):
        setattr(msg, field, draw(ODD_VALUES))
    return msg


@FUZZ
@given(msg=image_messages())
def test_no_image_message_escapes_the_handler(controllers: dict, msg: SimpleNamespace) -> None:
    controller = controllers["raw"]
    rejected = controller.rejected_frames
    outcome = controller.handle(msg)
    if isinstance(outcome, FrameResult):
        assert outcome.labels.shape == (msg.height, msg.width)
        assert outcome.header is msg.header
        assert controller.rejected_frames == rejected
    else:
        assert isinstance(outcome, Rejection) and outcome.malformed, outcome
        assert controller.rejected_frames == rejected + 1


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.integers(0, 10_000).map(lambda n: _png_prefix(n))))
def test_no_compressed_message_escapes_the_handler(controllers: dict, data: bytes) -> None:
    controller = controllers["compressed"]
    rejected = controller.rejected_frames
    outcome = controller.handle(SimpleNamespace(header=header(), format="png", data=data))
    assert (isinstance(outcome, Rejection) and outcome.malformed) or isinstance(outcome, FrameResult)
    assert controller.rejected_frames == rejected + isinstance(outcome, Rejection)


def _png_prefix(length: int) -> bytes:
    """A real PNG cut after `length` bytes (a truncated transfer)."""
    return compressed_message(random_pixels(12, 10, 3)).data[:length]
