"""Wire protocol: round trips, byte-exact layouts against hand-packed frames, rejection reasons,
and garbage or mutated frames that must never raise anything but ProtocolError."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melissa_nb.errors import REJECTION_REASONS, ProtocolError
from melissa_nb.protocol import (
    DATA_HEADER_SIZE,
    LAUNCHER_MESSAGES,
    MAX_CLIENT_RANKS,
    Alive,
    ConfidenceInterval,
    ConnectionReply,
    ConnectionRequest,
    DataMessage,
    DataValidator,
    Drop,
    Hello,
    Job,
    Options,
    Server,
    SimuStatus,
    Stop,
    TextRequest,
    Timeout,
    data_frame_size,
    decode_launcher_message,
    encode_data_frame,
    encode_data_header,
    sobol_member,
)

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.integers(0, 2**31 - 1)
small_ids = st.integers(0, 1000)
text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")


def c_text(max_bytes: int, min_size: int = 1) -> st.SearchStrategy[str]:
    """Strings without NUL that fit `max_bytes` UTF-8 bytes."""
    return st.text(text_chars, min_size=min_size, max_size=max_bytes).filter(
        lambda s: len(s.encode()) <= max_bytes
    )


finite = st.floats(allow_nan=False)
addresses = st.lists(c_text(60), min_size=1, max_size=5).map(tuple)


@st.composite
def data_messages(draw: st.DrawFn) -> DataMessage:
    nb_vectors = draw(st.sampled_from([1, 3, 5]))
    vect_size = draw(st.integers(1, 40))
    values = draw(
        st.lists(
            st.floats(allow_nan=True, allow_infinity=True),
            min_size=nb_vectors * vect_size,
            max_size=nb_vectors * vect_size,
        )
    )
    return DataMessage(
        draw(ids),
        draw(ids),
        draw(small_ids),
        draw(c_text(127)),
        np.array(values).reshape(nb_vectors, vect_size),
    )


launcher_messages = st.one_of(
    st.builds(Job, ids, c_text(30, 0), st.lists(finite, max_size=6).map(tuple)),
    st.builds(Drop, ids, c_text(30, 0)),
    st.just(Stop()),
    st.builds(Timeout, ids),
    st.builds(SimuStatus, ids, st.sampled_from([1, 2])),
    st.builds(Server, ids, c_text(60)),
    st.just(Alive()),
    st.builds(ConfidenceInterval, c_text(20), c_text(40), finite),
    st.builds(Options, c_text(200, 0)),
    st.just(Hello()),
)
text_requests = st.one_of(
    st.just(TextRequest("options")),
    st.just(TextRequest("test_timeout")),
    st.builds(TextRequest, st.just("simu_info"), ids),
)


def same_data(a: DataMessage, b: DataMessage) -> bool:
    return (
        (a.time_stamp, a.simu_id, a.client_rank, a.field_name)
        == (b.time_stamp, b.simu_id, b.client_rank, b.field_name)
        and a.values.shape == b.values.shape
        and a.values.tobytes() == b.values.tobytes()
    )


# --- round trips ---------------------------------------------------------------------------------


@BOUNDED
@given(st.integers(1, MAX_CLIENT_RANKS), ids)
def test_connection_request_round_trip(size: int, simu_id: int) -> None:
    request = ConnectionRequest(size, simu_id)
    assert ConnectionRequest.decode(request.encode()) == request


@pytest.mark.parametrize("size", [MAX_CLIENT_RANKS + 1, 2**31 - 1])
def test_connection_request_with_implausibly_many_ranks_is_refused(size: int) -> None:
    with pytest.raises(ProtocolError) as error:
        ConnectionRequest.decode(struct.pack("<ii", size, 0))
    assert error.value.reason == "bad_value" and str(MAX_CLIENT_RANKS) in str(error.value)


@BOUNDED
@given(st.booleans(), small_ids, small_ids, small_ids, addresses, st.sampled_from([64, 128, 256]))
def test_connection_reply_round_trip(sobol, learning, nb_parameters, verbose, table, width) -> None:
    reply = ConnectionReply(sobol, learning, nb_parameters, verbose, table, width)
    frame = reply.encode()
    assert len(frame) == 20 + width * len(table)
    assert ConnectionReply.decode(frame, width) == reply
    assert ConnectionReply.decode(frame, entry_width=None) == reply


@BOUNDED
@given(data_messages())
def test_data_message_round_trip(message: DataMessage) -> None:
    decoded = DataMessage.decode(message.encode(), nb_vectors=(1, 3, 5))
    assert same_data(decoded, message)
    assert decoded.nb_vectors == message.nb_vectors
    assert decoded.vect_size == message.vect_size


@BOUNDED
@given(launcher_messages)
def test_launcher_message_round_trip(message) -> None:
    frame = message.encode()
    assert decode_launcher_message(frame) == message
    assert type(message).decode(frame) == message


@BOUNDED
@given(text_requests)
def test_text_request_round_trip(request: TextRequest) -> None:
    assert TextRequest.decode(request.encode()) == request


def test_every_launcher_type_is_in_the_table() -> None:
    expected = {
        1: Job,
        2: Drop,
        3: Stop,
        4: Timeout,
        5: SimuStatus,
        6: Server,
        7: Alive,
        8: ConfidenceInterval,
        9: Options,
        10: Hello,
    }
    assert dict(LAUNCHER_MESSAGES) == expected


# --- zero copy -----------------------------------------------------------------------------------


def test_decoded_values_are_a_view_of_the_frame() -> None:
    values = np.random.default_rng(1).random((4, 1000))
    frame = encode_data_frame(7, 2, 1, "temperature", values)
    message = DataMessage.decode(frame, nb_vectors=4)
    assert np.shares_memory(message.values, np.frombuffer(frame, dtype=np.uint8))
    assert np.array_equal(message.values, values)
    # a write into the frame shows through the view: no copy was made
    frame[DATA_HEADER_SIZE : DATA_HEADER_SIZE + 8] = struct.pack("<d", -5.0)
    assert message.values[0, 0] == -5.0


def test_encode_data_frame_takes_strided_columns_in_one_copy() -> None:
    group = np.arange(5 * 12, dtype=float).reshape(5, 12)
    frame = encode_data_frame(0, 3, 0, "u", group[:, 4:9])
    assert np.array_equal(DataMessage.decode(frame, 5).values, group[:, 4:9])


# --- byte-exact layouts against hand-packed frames -----------------------------------------------


def test_connection_request_layout() -> None:
    assert ConnectionRequest(3, 17).encode() == struct.pack("<ii", 3, 17)


def test_connection_reply_layout() -> None:
    table = ("tcp://node-a:2004", "tcp://10.0.0.2:2005")
    expected = struct.pack("<5i", 2, 1, 0, 4, 2) + b"".join(
        struct.pack("128s", a.encode()) for a in table
    )
    assert ConnectionReply(True, 0, 4, 2, table, entry_width=128).encode() == expected


def test_data_message_layout() -> None:
    values = np.array([[1.5, -2.0, 3.25], [0.0, 1e300, -1e-300]])
    expected = struct.pack("<4i128s", 9, 12, 3, 3, b"pressure") + struct.pack(
        "<6d", *values.ravel()
    )
    assert DataMessage(9, 12, 3, "pressure", values).encode() == expected
    assert len(expected) == 144 + 48 == data_frame_size(3, nb_vectors=2)


def test_data_header_helper_matches_the_frame_head() -> None:
    frame = encode_data_frame(1, 2, 3, "x", np.zeros(4))
    assert bytes(frame[:DATA_HEADER_SIZE]) == encode_data_header(1, 2, 3, 4, "x")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            Job(5, "job-7", (0.5, 2.0)),
            struct.pack("<ii", 1, 5) + b"job-7\0" + struct.pack("<2d", 0.5, 2.0),
        ),
        (Drop(6, "j"), struct.pack("<ii", 2, 6) + b"j\0"),
        (Stop(), struct.pack("<i", 3)),
        (Timeout(11), struct.pack("<ii", 4, 11)),
        (SimuStatus(4, 2), struct.pack("<iii", 5, 4, 2)),
        (Server(1, "node12"), struct.pack("<ii", 6, 1) + b"node12\0"),
        (Alive(), struct.pack("<i", 7)),
        (
            ConfidenceInterval("sobol", "heat", 0.125),
            struct.pack("<i", 8) + b"sobol\0heat\0" + struct.pack("<d", 0.125),
        ),
        (Options("-p 2 -t 10"), struct.pack("<i", 9) + b"-p 2 -t 10\0"),
        (Hello(), struct.pack("<i", 10)),
    ],
)
def test_launcher_layout(message, expected: bytes) -> None:
    assert message.encode() == expected


def test_text_request_layout() -> None:
    assert TextRequest("simu_info", 42).encode() == b"simu_info 42\0"
    assert TextRequest("options").encode() == b"options\0"
    assert TextRequest.decode(b"test_timeout") == TextRequest("test_timeout")


# --- tolerated variants --------------------------------------------------------------------------


def test_field_name_bytes_after_the_nul_are_ignored() -> None:
    header = struct.pack("<4i", 0, 1, 0, 2) + b"temp\0garbage-from-c".ljust(128, b"\xff")
    message = DataMessage.decode(header + struct.pack("<2d", 1.0, 2.0))
    assert message.field_name == "temp"
    assert message.values.tolist() == [[1.0, 2.0]]


def test_legacy_hello_zero_and_options_without_nul() -> None:
    assert decode_launcher_message(struct.pack("<i", 0)) == Hello()
    assert decode_launcher_message(struct.pack("<i", 9) + b"-p 3") == Options("-p 3")


def test_job_parameter_count_checked_when_given() -> None:
    frame = Job(1, "a", (1.0, 2.0, 3.0)).encode()
    assert decode_launcher_message(frame, nb_parameters=3).parameters == (1.0, 2.0, 3.0)
    with pytest.raises(ProtocolError) as error:
        decode_launcher_message(frame, nb_parameters=2)
    assert error.value.reason == "bad_size"
    with pytest.raises(ProtocolError) as error:
        Job.decode(frame[:-3])
    assert error.value.reason == "bad_size"


def test_reply_width_inferred_from_frame_length() -> None:
    frame = ConnectionReply(False, 0, 0, 0, ("tcp://a:1", "tcp://b:2", "tcp://c:3"), 128).encode()
    assert ConnectionReply.decode(frame, entry_width=None).entry_width == 128
    with pytest.raises(ProtocolError) as error:
        ConnectionReply.decode(frame)  # the default width 256 does not match
    assert error.value.reason == "bad_size"


# --- rejections with their reasons ---------------------------------------------------------------

VALID_DATA = DataMessage(2, 3, 1, "temp", np.arange(6.0)).encode()


def data_frame_with(**changes) -> bytes:
    fields = {"time_stamp": 2, "simu_id": 3, "client_rank": 1, "vect_size": 6, "name": b"temp"}
    fields.update(changes)
    header = struct.pack(
        "<4i128s",
        fields["time_stamp"],
        fields["simu_id"],
        fields["client_rank"],
        fields["vect_size"],
        fields["name"],
    )
    return header + VALID_DATA[DATA_HEADER_SIZE:]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (VALID_DATA[:100], "short_frame"),
        (VALID_DATA[:-8], "bad_size"),
        (VALID_DATA + b"\0" * 8, "bad_size"),
        (VALID_DATA + b"\0" * 3, "bad_size"),
        (data_frame_with(vect_size=0), "bad_size"),
        (data_frame_with(vect_size=-6), "bad_size"),
        (data_frame_with(vect_size=5), "bad_size"),
        (data_frame_with(time_stamp=-1), "bad_value"),
        (data_frame_with(simu_id=-2), "bad_value"),
        (data_frame_with(client_rank=-3), "bad_value"),
        (data_frame_with(name=b"x" * 128), "unterminated_field"),
        (data_frame_with(name=b""), "bad_string"),
        (data_frame_with(name=b"\xff\xfe\0"), "bad_string"),
    ],
)
def test_data_rejections(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as error:
        DataMessage.decode(frame)
    assert error.value.reason == reason
    assert reason in REJECTION_REASONS


@pytest.mark.parametrize(
    ("decode", "frame", "reason"),
    [
        (ConnectionRequest.decode, b"\1\0\0\0", "short_frame"),
        (ConnectionRequest.decode, struct.pack("<3i", 1, 2, 3), "bad_size"),
        (ConnectionRequest.decode, struct.pack("<2i", 0, 2), "bad_value"),
        (ConnectionRequest.decode, struct.pack("<2i", 1, -2), "bad_value"),
        (ConnectionReply.decode, struct.pack("<5i", 1, 2, 0, 0, 0) + b"\0" * 256, "bad_value"),
        (ConnectionReply.decode, struct.pack("<5i", 0, 0, 0, 0, 0), "bad_value"),
        (
            ConnectionReply.decode,
            struct.pack("<5i", 1, 0, 0, 0, 0) + b"a" * 256,
            "unterminated_string",
        ),
        (ConnectionReply.decode, struct.pack("<5i", 1, 0, 0, 0, 0) + b"\0" * 256, "bad_string"),
        (decode_launcher_message, b"\1\0", "short_frame"),
        (decode_launcher_message, struct.pack("<i", 11), "unknown_type"),
        (decode_launcher_message, struct.pack("<i", -1), "unknown_type"),
        (decode_launcher_message, struct.pack("<ii", 1, 3) + b"no-nul", "unterminated_string"),
        (decode_launcher_message, struct.pack("<iii", 5, 1, 3), "bad_value"),
        (decode_launcher_message, struct.pack("<ii", 4, 1) + b"x", "bad_size"),
        (decode_launcher_message, struct.pack("<i", 4), "short_frame"),
        (Timeout.decode, Alive().encode(), "unknown_type"),
        (TextRequest.decode, b"simu_info x", "bad_request"),
        (TextRequest.decode, b"simu_info 1 2", "bad_request"),
        (TextRequest.decode, b"options 1", "bad_request"),
        (TextRequest.decode, b"\0", "bad_request"),
        (TextRequest.decode, b"launch", "bad_request"),
    ],
)
def test_other_rejections(decode, frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as error:
        decode(frame)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: ConnectionReply(False, 0, 0, 0, ("a" * 128,), entry_width=128), "bad_string"),
        (lambda: ConnectionReply(False, 0, 0, 0, ()), "bad_value"),
        (lambda: DataMessage(0, 0, 0, "f" * 128, np.zeros(1)), "bad_string"),
        (lambda: DataMessage(0, 0, 0, "a\0b", np.zeros(1)), "bad_string"),
        (lambda: DataMessage(2**31, 0, 0, "a", np.zeros(1)), "bad_value"),
        (lambda: DataMessage(0, 0, 0, "a", np.zeros((2, 0))), "bad_size"),
        (lambda: SimuStatus(1, 3), "bad_value"),
        (lambda: Server(0, ""), "bad_string"),
        (lambda: TextRequest("simu_info"), "bad_request"),
    ],
)
def test_invalid_messages_cannot_be_built(build, reason: str) -> None:
    with pytest.raises(ProtocolError) as error:
        build()
    assert error.value.reason == reason


# --- context checks ------------------------------------------------------------------------------


def test_validator_accepts_valid_study_messages() -> None:
    validator = DataValidator(("u", "v"), nb_timesteps=4, nb_samples=3, client_comm_size=2)
    message = validator.decode(DataMessage(3, 2, 1, "v", np.ones(5)).encode())
    assert (message.field_name, message.time_stamp, message.vect_size) == ("v", 3, 5)
    assert validator.vect_sizes == {}  # a size is fixed only once the server keeps the data
    validator.remember(message.field_name, message.client_rank, message.vect_size)
    assert validator.vect_sizes == {("v", 1): 5}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (DataMessage(0, 0, 0, "w", np.ones(5)), "unknown_field"),
        (DataMessage(4, 0, 0, "u", np.ones(5)), "timestep_out_of_range"),
        (DataMessage(0, 3, 0, "u", np.ones(5)), "simu_id_out_of_range"),
        (DataMessage(0, 0, 2, "u", np.ones(5)), "client_rank_out_of_range"),
        (DataMessage(1, 1, 0, "u", np.ones(6)), "vect_size_changed"),
        (DataMessage(0, 0, 0, "u", np.ones((3, 5))), "bad_size"),
    ],
)
def test_validator_rejections(message: DataMessage, reason: str) -> None:
    validator = DataValidator(("u", "v"), nb_timesteps=4, nb_samples=3, client_comm_size=2)
    kept = validator.decode(DataMessage(0, 0, 0, "u", np.ones(5)).encode())
    validator.remember(kept.field_name, kept.client_rank, kept.vect_size)
    with pytest.raises(ProtocolError) as error:
        validator.decode(message.encode())
    assert error.value.reason == reason
    assert validator.vect_sizes == {("u", 0): 5}


def test_validator_sobol_groups_and_single_members() -> None:
    p = 2
    validator = DataValidator(("u",), nb_timesteps=2, nb_samples=3, sobol=True, nb_parameters=p)
    assert validator.accepted_vector_counts == (1, p + 2)
    group = validator.decode(DataMessage(0, 2, 0, "u", np.ones((p + 2, 4))).encode())
    assert (group.nb_vectors, group.simu_id) == (p + 2, 2)
    member = validator.decode(DataMessage(0, 11, 0, "u", np.ones(4)).encode())
    assert sobol_member(member.simu_id, p) == (2, 3)
    for simu_id, rows in ((3, p + 2), (12, 1)):
        with pytest.raises(ProtocolError) as error:
            validator.decode(DataMessage(0, simu_id, 0, "u", np.ones((rows, 4))).encode())
        assert error.value.reason == "simu_id_out_of_range"
    with pytest.raises(ProtocolError) as error:
        validator.decode(DataMessage(0, 0, 0, "u", np.ones((2, 4))).encode())
    assert error.value.reason == "bad_size"


# --- garbage and mutations never raise anything but ProtocolError --------------------------------


def decoders():
    validator = DataValidator(("temp", "u"), 5, 10, sobol=True, nb_parameters=2)
    return [
        ConnectionRequest.decode,
        ConnectionReply.decode,
        lambda b: ConnectionReply.decode(b, entry_width=None),
        lambda b: ConnectionReply.decode(b, entry_width=16),
        DataMessage.decode,
        lambda b: DataMessage.decode(b, (1, 4)),
        validator.decode,
        decode_launcher_message,
        lambda b: decode_launcher_message(b, nb_parameters=2),
        TextRequest.decode,
        *(message.decode for message in LAUNCHER_MESSAGES.values()),
    ]


def decode_or_reject(frame: bytes) -> None:
    for decode in decoders():
        try:
            decode(frame)
        except ProtocolError as error:
            assert error.reason in REJECTION_REASONS


@BOUNDED
@given(st.binary(max_size=700))
def test_garbage_only_raises_protocol_error(frame: bytes) -> None:
    decode_or_reject(frame)


@BOUNDED
@given(st.integers(-5, 12), st.binary(max_size=80))
def test_garbage_after_a_plausible_type_only_raises_protocol_error(kind: int, body: bytes) -> None:
    decode_or_reject(struct.pack("<i", kind) + body)


valid_frames = st.one_of(
    data_messages().map(lambda m: m.encode()),
    launcher_messages.map(lambda m: m.encode()),
    text_requests.map(lambda m: m.encode()),
    st.builds(ConnectionRequest, st.integers(1, MAX_CLIENT_RANKS), ids).map(lambda m: m.encode()),
    st.builds(ConnectionReply, st.booleans(), small_ids, small_ids, small_ids, addresses).map(
        lambda m: m.encode()
    ),
)


@BOUNDED
@given(valid_frames, st.data())
def test_mutated_valid_frames_only_raise_protocol_error(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "extend", "int"]))
        if action == "flip" and mutated:
            at = data.draw(st.integers(0, len(mutated) - 1))
            mutated[at] = data.draw(st.integers(0, 255))
        elif action == "truncate":
            del mutated[data.draw(st.integers(0, len(mutated))) :]
        elif action == "extend":
            mutated += data.draw(st.binary(min_size=1, max_size=16))
        elif action == "int" and len(mutated) >= 4:
            at = data.draw(st.integers(0, (len(mutated) - 4) // 4)) * 4
            mutated[at : at + 4] = struct.pack("<i", data.draw(st.integers(-(2**31), 2**31 - 1)))
    decode_or_reject(bytes(mutated))


def test_nan_parameters_survive_bit_exact() -> None:
    frame = Job(0, "", (math.nan, -math.inf)).encode()
    assert Job.decode(frame).encode() == frame


def test_docs_protocol_table_lists_every_rejection_reason() -> None:
    """docs/protocol.md's rejection table and REJECTION_REASONS name the same reasons."""
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = text.split("## Validation and rejection reasons", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert sorted(documented) == sorted(REJECTION_REASONS)
    assert len(documented) == len(set(documented))


def test_an_unlisted_rejection_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="REJECTION_REASONS"):
        ProtocolError("no_such_reason", "detail")
