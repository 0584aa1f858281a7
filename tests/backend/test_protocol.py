"""The wire protocol: round trips, strict rejection with error replies, tolerance of unknown fields."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.protocol import (
    MAGIC,
    MAX_CHUNK_BYTES,
    MSG_TYPES,
    Message,
    ProtocolError,
    decode,
    encode,
    error_reply,
)


def _frames(header=None, content=None, buffers=()):
    h = {"msg_id": "m1", "msg_type": "status", "version": "1.0", "session": "s", "job_id": "job-1", "seq": None}
    h.update(header or {})
    return [MAGIC, json.dumps(h).encode(), json.dumps(content if content is not None else {}).encode(), *buffers]


def test_round_trip_with_binary_frames():
    msg = Message("submit", {"options": {"preset": "draft", "seed": 3}}, [b"\x89PNG...", b"more"], job_id="a.b-c_1", session="s1")
    back = decode(encode(msg))
    assert back.msg_type == "submit" and back.content == msg.content
    assert back.buffers == msg.buffers and back.job_id == "a.b-c_1" and back.msg_id == msg.msg_id


def test_unknown_fields_are_tolerated_and_kept():
    frames = _frames(header={"future": 1}, content={"also_future": [1, 2]})
    msg = decode(frames)
    assert msg.extra_header == {"future": 1} and msg.content["also_future"] == [1, 2]


@pytest.mark.parametrize(
    "frames, ename",
    [
        ([MAGIC, b"{}"], "BadFrames"),
        ([b"OTHER", b"{}", b"{}"], "BadMagic"),
        ([MAGIC, b"not json", b"{}"], "BadJSON"),
        ([MAGIC, b"[1, 2]", b"{}"], "BadJSON"),
        (_frames(header={"version": "9.9"}), "UnsupportedVersion"),
        (_frames(header={"msg_type": "rm_rf"}), "UnknownMessageType"),
        (_frames(header={"job_id": None}), "BadField"),
        (_frames(header={"job_id": "../../etc"}), "BadField"),
        (_frames(header={"seq": "7"}), "BadField"),
        (_frames(header={"msg_type": "resume"}, content={"last_seq": -1}), "BadField"),
        (_frames(header={"msg_type": "resume"}, content={"last_seq": True}), "BadField"),
        (_frames(header={"msg_type": "submit"}, content={"options": {}}), "BadFrames"),
        (_frames(header={"msg_type": "submit"}, content={}), "BadField"),
        (_frames(header={"msg_type": "fetch_chunk"}, content={"offset": 0, "length": MAX_CHUNK_BYTES + 1}), "BadField"),
        ([MAGIC, b"{" + b" " * (1 << 20) + b"}", b"{}"], "MessageTooLarge"),
    ],
)
def test_bad_messages_raise_protocol_errors(frames, ename):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.ename == ename
    reply = decode(encode(error_reply(info.value)))
    assert reply.msg_type == "error" and reply.content["ename"] == ename and reply.content["evalue"]


def test_oversize_binary_frame_is_refused():
    with pytest.raises(ProtocolError, match="over"):
        decode(_frames(header={"msg_type": "submit"}, content={"options": {}}, buffers=[b"x" * 101]), max_binary=100)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_only_ever_raise_protocol_errors(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(MSG_TYPES)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8)), max_size=4),
)
def test_well_framed_but_random_headers_and_contents(msg_type, header, content):
    h = {"msg_id": "x", "msg_type": msg_type, "version": "1.0", "session": "s", **header}
    try:
        decode([MAGIC, json.dumps(h).encode(), json.dumps(content).encode()])
    except ProtocolError:
        pass


@pytest.mark.parametrize("module", ["backend.protocol", "backend.store"])
def test_protocol_and_store_use_only_the_standard_library(module):
    code = (
        f"import sys, json; import {module}; "
        "print(json.dumps(sorted(m for m in ('torch','zmq','numpy','mpod123','bpy') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
