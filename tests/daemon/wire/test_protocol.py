"""The v1 ZMQ wire format: round trips, every malformed case, and a fuzz test."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refscope.daemon.errors import RefscopeError
from refscope.daemon.frames import Frame
from refscope.daemon.wire.protocol import (
    DTYPES,
    OutputFields,
    REASON_CODES,
    ProtocolError,
    ProtocolLimits,
    decode_enhanced,
    decode_frame,
    encode_enhanced,
    encode_frame,
)

SRC = "zmq:tcp://127.0.0.1:5555"


def _header(**overrides: object) -> dict:
    header = {"v": 1, "seq": 7, "dtype": "uint16", "shape": [16, 24], "pixel_size_m": 5e-9, "role": "lr"}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not _DROP}


_DROP = object()


def _message(header: dict, buffer: bytes | None = None) -> list[bytes]:
    if buffer is None:
        dtype = DTYPES.get(header.get("dtype"), np.dtype("<u2"))  # type: ignore[arg-type]
        shape = header.get("shape", [16, 24])
        buffer = bytes(int(np.prod(shape)) * dtype.itemsize) if isinstance(shape, list) else b""
    return [json.dumps(header).encode(), buffer]


def _expect(parts: object, reason: str, *, limits: ProtocolLimits = ProtocolLimits(), needle: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(parts, source=SRC, limits=limits)  # type: ignore[arg-type]
    assert info.value.reason_code == reason, str(info.value)
    assert info.value.reason_code in REASON_CODES
    assert str(info.value).startswith(SRC)
    assert needle in str(info.value)
    return info.value


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_round_trip_each_dtype(dtype: str, rng: np.random.Generator) -> None:
    data = (rng.random((20, 33)) * 200).astype(dtype)
    parts = encode_frame(data, seq=12, pixel_size_m=4.9e-9, role="hr", stage_xy_m=(1e-3, -2e-3), t=1718000000.5)
    assert len(parts) == 2 and all(isinstance(p, bytes) for p in parts)
    frame = decode_frame(parts, source=SRC)
    assert isinstance(frame, Frame)
    assert frame.data.dtype == np.dtype(dtype) and frame.data.shape == (20, 33)
    np.testing.assert_array_equal(frame.data, data)
    assert not frame.data.flags.writeable
    assert frame.seq == 12 and frame.role == "hr" and frame.source == f"{SRC}#12"
    assert math.isclose(frame.pixel_size_nm or 0, 4.9)
    assert frame.stage_xy_m == (1e-3, -2e-3) and frame.t == 1718000000.5
    assert frame.field_of_view_nm == pytest.approx((20 * 4.9, 33 * 4.9))
    assert frame.metadata["header"]["dtype"] == dtype


def test_big_endian_and_non_contiguous_input_are_sent_little_endian_c_order() -> None:
    data = np.arange(32 * 16, dtype=">u2").reshape(32, 16)[:, ::2]
    frame = decode_frame(encode_frame(data, seq=0, pixel_size_m=1e-9, role="auto"), source=SRC)
    np.testing.assert_array_equal(frame.data, data)
    header = json.loads(encode_frame(data, seq=0, pixel_size_m=1e-9, role="lr")[0])
    assert header == {"v": 1, "seq": 0, "dtype": "uint16", "shape": [32, 8], "pixel_size_m": 1e-9, "role": "lr"}


def test_missing_t_uses_receipt_time() -> None:
    parts = encode_frame(np.zeros((8, 8), np.uint8), seq=1, pixel_size_m=1e-9, role="lr")
    assert decode_frame(parts, source=SRC, received_at=123.0).t == 123.0


def test_hand_written_header_as_in_the_docstring_decodes() -> None:
    img = np.ascontiguousarray(np.arange(768 * 1024).reshape(768, 1024) % 65536, dtype="<u2")
    header = {"v": 1, "seq": 3, "dtype": "uint16", "shape": list(img.shape), "pixel_size_m": 4.9e-9, "role": "lr", "t": 5.0}
    frame = decode_frame([json.dumps(header).encode(), img.tobytes()], source=SRC)
    np.testing.assert_array_equal(frame.data, img)


def test_zero_copy_memoryview_parts() -> None:
    parts = encode_frame(np.ones((8, 9), np.float32), seq=1, pixel_size_m=1e-9, role="lr")
    frame = decode_frame([memoryview(parts[0]), bytearray(parts[1])], source=SRC)
    assert frame.data.sum() == 72


@pytest.mark.parametrize(
    ("parts", "reason", "needle"),
    [
        ([], "part_count", "0 part"),
        ([b"{}"], "part_count", "1 part"),
        ([b"{}", b"", b""], "part_count", "3 part"),
        ([b"\xff\xfe", b""], "bad_json", "UTF-8 JSON"),
        ([b"{not json", b""], "bad_json", "JSON"),
        ([b"[1, 2]", b""], "not_object", "list"),
        ([b"42", b""], "not_object", "int"),
        ([b"[" * 5000 + b"]" * 5000, b""], "bad_json", ""),
    ],
)
def test_malformed_structure(parts: list[bytes], reason: str, needle: str) -> None:
    _expect(parts, reason, needle=needle)


def test_not_a_sequence() -> None:
    _expect(object(), "part_count")


def test_header_too_large_is_refused_before_parsing() -> None:
    big = json.dumps({**_header(), "pad": "x" * 70_000}).encode()
    _expect([big, b""], "header_too_large", needle="65536")
    _expect(_message(_header()), "header_too_large", limits=ProtocolLimits(max_header_bytes=10))


@pytest.mark.parametrize("field", ["v", "seq", "dtype", "shape", "pixel_size_m", "role"])
def test_missing_field_is_named(field: str) -> None:
    _expect(_message(_header(**{field: _DROP})), "missing_field", needle=repr(field))


@pytest.mark.parametrize(
    ("overrides", "reason", "needle"),
    [
        ({"v": 2}, "bad_version", "version 2"),
        ({"v": 0}, "bad_version", "version 0"),
        ({"v": "1"}, "bad_type", "'v'"),
        ({"v": True}, "bad_type", "'v'"),
        ({"seq": -1}, "bad_value", "'seq'"),
        ({"seq": 1.5}, "bad_type", "'seq'"),
        ({"seq": True}, "bad_type", "'seq'"),
        ({"seq": "3"}, "bad_type", "'seq'"),
        ({"dtype": "int32"}, "bad_dtype", "int32"),
        ({"dtype": "complex64"}, "bad_dtype", "complex64"),
        ({"dtype": 16}, "bad_type", "'dtype'"),
        ({"shape": [16]}, "bad_shape", "2 entries"),
        ({"shape": [16, 24, 1]}, "bad_shape", "2 entries"),
        ({"shape": [16, 24.0]}, "bad_type", "'shape'"),
        ({"shape": "16x24"}, "bad_type", "'shape'"),
        ({"shape": [4, 24]}, "bad_shape", "8..16384"),
        ({"shape": [16, 16385]}, "bad_shape", "8..16384"),
        ({"shape": [-16, 24]}, "bad_shape", ""),
        ({"shape": [10**12, 10**12]}, "bad_shape", ""),
        ({"pixel_size_m": "5nm"}, "bad_type", "'pixel_size_m'"),
        ({"pixel_size_m": None}, "bad_type", "'pixel_size_m'"),
        ({"pixel_size_m": 0}, "bad_value", "'pixel_size_m'"),
        ({"pixel_size_m": -1e-9}, "bad_value", "'pixel_size_m'"),
        ({"role": "enhanced"}, "bad_value", "role"),
        ({"role": 1}, "bad_type", "'role'"),
        ({"stage_xy_m": [1.0]}, "bad_type", "'stage_xy_m'"),
        ({"stage_xy_m": ["a", "b"]}, "bad_type", "'stage_xy_m'"),
        ({"t": "yesterday"}, "bad_type", "'t'"),
    ],
)
def test_bad_fields(overrides: dict, reason: str, needle: str) -> None:
    header = _header(**overrides)
    buffer = bytes(16 * 24 * 2) if reason != "buffer_size" else None
    _expect(_message(header, buffer), reason, needle=needle)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_pixel_size(token: str) -> None:
    text = json.dumps(_header(pixel_size_m=1.0)).replace("1.0", token)
    error = _expect([text.encode(), bytes(16 * 24 * 2)], "bad_value", needle="pixel_size_m")
    if token == "NaN":
        assert "NaN" in str(error)


def test_non_finite_stage_and_time() -> None:
    text = json.dumps(_header(stage_xy_m=[1.0, 2.0])).replace("2.0", "NaN")
    _expect([text.encode(), bytes(16 * 24 * 2)], "bad_value", needle="stage_xy_m")
    text = json.dumps(_header(t=1.0)).replace("1.0", "Infinity")
    _expect([text.encode(), bytes(16 * 24 * 2)], "bad_value", needle="'t'")


def test_too_many_pixels_with_a_tighter_limit() -> None:
    limits = ProtocolLimits(max_pixels=100 * 100)
    _expect(_message(_header(shape=[101, 100]), b""), "too_many_pixels", limits=limits, needle="10100")


@pytest.mark.parametrize("delta", [-2, -1, 1, 1000])
def test_buffer_size_mismatch(delta: int) -> None:
    error = _expect(_message(_header(), bytes(16 * 24 * 2 + delta)), "buffer_size", needle=f"expected {16 * 24 * 2}")
    assert "#7" in str(error)  # the message names the message by seq


def test_absurd_shape_is_refused_without_allocating() -> None:
    # 16384 x 16384 float64 would need 2 GiB; a 10-byte buffer must be refused cheaply.
    _expect(_message(_header(shape=[16384, 16384], dtype="float64"), b"0123456789"), "buffer_size")


def test_unknown_fields_are_kept_in_metadata() -> None:
    frame = decode_frame(_message(_header(detector="ETD")), source=SRC)
    assert frame.metadata["header"]["detector"] == "ETD"


def test_protocol_error_is_a_refscope_error() -> None:
    assert issubclass(ProtocolError, RefscopeError)


def test_encoder_refuses_what_the_decoder_would_refuse() -> None:
    good = np.zeros((16, 16), np.uint16)
    with pytest.raises(ProtocolError) as info:
        encode_frame(good, seq=0, pixel_size_m=float("nan"), role="lr")
    assert info.value.reason_code == "bad_value"
    with pytest.raises(ProtocolError) as info:
        encode_frame(good, seq=-1, pixel_size_m=1e-9, role="lr")
    assert info.value.reason_code == "bad_value"
    with pytest.raises(ProtocolError) as info:
        encode_frame(good, seq=0, pixel_size_m=1e-9, role="xx")
    assert info.value.reason_code == "bad_value"
    with pytest.raises(ProtocolError) as info:
        encode_frame(good.astype(np.int32), seq=0, pixel_size_m=1e-9, role="lr")
    assert info.value.reason_code == "bad_dtype"
    with pytest.raises(ProtocolError) as info:
        encode_frame(np.zeros((4, 16), np.uint8), seq=0, pixel_size_m=1e-9, role="lr")
    assert info.value.reason_code == "bad_shape"
    with pytest.raises(ProtocolError) as info:
        encode_frame(np.zeros((16, 16, 3), np.uint8), seq=0, pixel_size_m=1e-9, role="lr")
    assert info.value.reason_code == "bad_shape"
    # numpy scalars are fine
    parts = encode_frame(good, seq=np.int64(3), pixel_size_m=np.float32(2e-9), role="lr", t=np.float64(1.0))
    assert decode_frame(parts, source=SRC).seq == 3


# ------------------------------------------------------------------------------------------ output stream


@pytest.mark.parametrize("confidence", [None, "low"])
def test_enhanced_round_trip(confidence: str | None, rng: np.random.Generator) -> None:
    data = rng.random((40, 48)).astype(np.float32)
    parts = encode_enhanced(data, OutputFields(seq=5, pixel_size_m=2.45e-9, model="sparse", model_version="abc#3", latency_s=0.31, source_seq=42, t=1718000000.25), confidence=confidence)
    header = json.loads(parts[0])
    assert header["role"] == "enhanced" and header["v"] == 1
    assert ("confidence" in header) == (confidence is not None)
    out = decode_enhanced(parts)
    np.testing.assert_array_equal(out.data, data)
    assert (out.seq, out.source_seq, out.model, out.model_version) == (5, 42, "sparse", "abc#3")
    assert out.pixel_size_m == 2.45e-9 and out.latency_s == 0.31 and out.t == 1718000000.25
    assert out.confidence == confidence


def test_enhanced_decoder_rejects_input_messages_and_vice_versa() -> None:
    frame_parts = encode_frame(np.zeros((8, 8), np.uint8), seq=1, pixel_size_m=1e-9, role="lr")
    with pytest.raises(ProtocolError) as info:
        decode_enhanced(frame_parts)
    assert info.value.reason_code == "bad_value"
    enhanced = encode_enhanced(np.zeros((8, 8), np.float32), OutputFields(seq=1, pixel_size_m=1e-9, model="m", model_version="1", latency_s=0.0, source_seq=1, t=0.0))
    with pytest.raises(ProtocolError) as info:
        decode_frame(enhanced, source=SRC)
    assert info.value.reason_code == "bad_value"
    header = json.loads(enhanced[0])
    del header["model"]
    with pytest.raises(ProtocolError) as info:
        decode_enhanced([json.dumps(header).encode(), enhanced[1]])
    assert info.value.reason_code == "missing_field" and "'model'" in str(info.value)
    with pytest.raises(ProtocolError) as info:
        encode_enhanced(np.zeros((8, 8), np.float32), OutputFields(seq=1, pixel_size_m=1e-9, model="m", model_version="1", latency_s=-1.0, source_seq=1, t=0.0))
    assert info.value.reason_code == "bad_value"


# ------------------------------------------------------------------------------------------ fuzzing

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
_field_values = {
    "v": st.one_of(st.just(1), _json_values),
    "seq": st.one_of(st.integers(-5, 2**64), _json_values),
    "dtype": st.one_of(st.sampled_from(sorted(DTYPES) + ["int32", "<u2", ""]), _json_values),
    "shape": st.one_of(st.lists(st.integers(-10, 20000), max_size=3), _json_values),
    "pixel_size_m": st.one_of(st.floats(), st.integers(-3, 3), _json_values),
    "role": st.one_of(st.sampled_from(["lr", "hr", "auto", "enhanced", "LR"]), _json_values),
    "stage_xy_m": st.one_of(st.lists(st.floats(), max_size=3), _json_values),
    "t": st.one_of(st.floats(), _json_values),
}


@st.composite
def _headers(draw: st.DrawFn) -> bytes:
    header = {name: draw(strategy) for name, strategy in _field_values.items() if draw(st.integers(0, 9)) > 0}
    if draw(st.booleans()):
        header["shape"] = draw(st.lists(st.integers(8, 40), min_size=2, max_size=2))
    return json.dumps(header).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.one_of(st.binary(max_size=200), _headers()),
    buffer=st.one_of(st.binary(max_size=64), st.integers(0, 40 * 40 * 8).map(bytes)),
    extra_parts=st.lists(st.binary(max_size=8), max_size=2),
    drop=st.booleans(),
)
def test_fuzz_only_protocol_errors(header: bytes, buffer: bytes, extra_parts: list[bytes], drop: bool) -> None:
    parts = [header] if drop else [header, buffer, *extra_parts]
    for decoder in (lambda p: decode_frame(p, source=SRC), decode_enhanced):
        try:
            result = decoder(parts)
        except ProtocolError as exc:
            assert exc.reason_code in REASON_CODES
        else:
            assert result.data.ndim == 2


def test_the_stem_sender_example_sends_frames_the_daemon_decodes(tmp_path) -> None:
    """deploy/stem_zmq_sender.py (the documented STEM scan generator sender) on 127.0.0.1, an ephemeral port."""
    import importlib.util

    import zmq

    from refscope.daemon.wire.protocol import decode_frame

    path = Path(__file__).resolve().parents[3] / "deploy" / "stem_zmq_sender.py"
    spec = importlib.util.spec_from_file_location("stem_zmq_sender", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        assert module.send(f"tcp://127.0.0.1:{port}", 2, period_s=0.0, context=context) == 3
        received = []
        while len(received) < 3 and pull.poll(10000):
            received.append(decode_frame(pull.recv_multipart(), source="zmq:test"))
    finally:
        pull.close(linger=0)
        context.term()
    assert [f.role for f in received] == ["hr", "lr", "lr"]
    assert received[1].pixel_size_nm == pytest.approx(0.05) and received[0].pixel_size_nm == pytest.approx(0.025)
    assert received[1].data.dtype == np.uint16 and received[1].data.shape == (128, 128)
