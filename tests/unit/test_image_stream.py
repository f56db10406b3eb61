"""The process-image stream: round trips, and every kind of damage refused with the
manual's "Corrupt or improper checkpoint file" before anything is acted on."""

from __future__ import annotations

import io
import os
import time

import pytest

from mosix_core.image.stream import (
    CHUNK,
    CORRUPT,
    HELD_RECORDS,
    CorruptImage,
    ImageReader,
    ImageWriter,
    Kind,
    read_all,
    relay,
)


def small_image(compress: bool = False) -> bytes:
    out = io.BytesIO()
    w = ImageWriter(out, compress=compress)
    w.add_json(Kind.PROCESS, {"pid": 1234, "command": "python3 loop.py", "options": {"nmigs": 0}})
    w.add(Kind.REGISTERS, bytes(range(216 % 256)) + bytes(216 - 216 % 256))
    w.add_pages(0x400000, b"\x90" * 300 + os.urandom(100))
    w.close()
    return out.getvalue()


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(compress):
    data = small_image(compress)
    records = read_all(io.BytesIO(data))
    assert [r.kind for r in records] == [Kind.PROCESS, Kind.REGISTERS, Kind.PAGES]
    assert records[0].json()["command"] == "python3 loop.py"
    address, pages = records[2].pages()
    assert address == 0x400000 and bytes(pages[:300]) == b"\x90" * 300 and len(pages) == 400


def test_compression_shrinks_what_compresses_and_keeps_the_rest_raw():
    plain, packed = io.BytesIO(), io.BytesIO()
    noise = os.urandom(1 << 20)
    for out, compress in ((plain, False), (packed, True)):
        w = ImageWriter(out, compress=compress)
        w.add_pages(0x10000, bytes(1 << 20))  # zero pages: compress to nothing
        w.add_pages(0x200000, noise)  # random: stored raw even in a compressed image
        w.close()
    assert len(packed.getvalue()) < len(plain.getvalue()) - (1 << 20) + (64 << 10)
    records = read_all(io.BytesIO(packed.getvalue()))
    assert bytes(records[0].pages()[1]) == bytes(1 << 20)
    assert bytes(records[1].pages()[1]) == noise


def test_page_data_is_chunked_and_streamed_back_in_order():
    out = io.BytesIO()
    w = ImageWriter(out)
    data = os.urandom(CHUNK * 2 + 12345)
    w.add_pages(0x7F0000000000, data)
    w.close()
    reader = ImageReader(io.BytesIO(out.getvalue()))
    chunks = [r.pages() for r in reader]
    assert reader.complete
    assert [a for a, _ in chunks] == [0x7F0000000000, 0x7F0000000000 + CHUNK, 0x7F0000000000 + 2 * CHUNK]
    assert b"".join(bytes(c) for _, c in chunks) == data


@pytest.mark.parametrize("compress", [False, True])
def test_a_streamed_record_stays_whole_while_held_records_more_are_read(compress):
    """A restorer writes HELD_RECORDS chunks of pages at once, each from the reader's
    own buffer: none may be read over while it is held."""
    out = io.BytesIO()
    writer = ImageWriter(out, compress=compress)
    chunks = [os.urandom(1000 + 37 * i) for i in range(12)]
    for i, chunk in enumerate(chunks):
        writer.add_pages(0x10000 * i, chunk)
    writer.close()
    held: list = []
    seen = 0
    for record in ImageReader(io.BytesIO(out.getvalue()), streaming=True):
        held.append((seen, record.pages()[1]))
        time.sleep(0.005)  # the reader reads ahead as far as it may
        if len(held) > HELD_RECORDS + 1:  # the one in hand and the ones still written
            held.pop(0)
        for index, payload in held:
            assert bytes(payload) == chunks[index]
        seen += 1
    assert seen == len(chunks)


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_is_refused(compress):
    data = small_image(compress)
    for cut in range(len(data)):
        with pytest.raises(CorruptImage) as caught:
            read_all(io.BytesIO(data[:cut]))
        assert str(caught.value) == CORRUPT


@pytest.mark.parametrize("compress", [False, True])
def test_every_flipped_bit_is_refused(compress):
    data = small_image(compress)
    for position in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= bit
            with pytest.raises(CorruptImage):
                read_all(io.BytesIO(bytes(damaged)))


def record_spans(data: bytes) -> list[tuple[int, int]]:
    spans, at = [], 16
    while at < len(data):
        end = at + 20 + int.from_bytes(data[at + 8 : at + 12], "little")  # 20-byte record headers
        spans.append((at, end))
        at = end
    return spans


def test_spliced_records_are_refused():
    a, b = small_image(), small_image()  # same shape, different page noise
    (pages_a, pages_b) = (record_spans(a)[2], record_spans(b)[2])
    assert a[slice(*pages_a)] != b[slice(*pages_b)]
    # every record sound, but one comes from another image: the END record knows
    spliced = a[: pages_a[0]] + b[slice(*pages_b)] + a[pages_a[1] :]
    with pytest.raises(CorruptImage, match=CORRUPT) as caught:
        read_all(io.BytesIO(spliced))
    assert "do not add up" in caught.value.detail
    # a record dropped, or one image's END on the other's records: likewise
    dropped = a[: pages_a[0]] + a[pages_a[1] :]
    with pytest.raises(CorruptImage, match=CORRUPT):
        read_all(io.BytesIO(dropped))


def test_a_foreign_file_is_refused_with_a_reason():
    with open("/bin/true", "rb") as f, pytest.raises(CorruptImage) as caught:
        read_all(f)
    assert caught.value.detail == "not a MOSIX process image"


def test_an_impossible_length_allocates_nothing():
    data = bytearray(small_image())
    data[16 + 8 : 16 + 12] = (0xFFFFFFF0).to_bytes(4, "little")  # stored_len of the first record
    with pytest.raises(CorruptImage, match=CORRUPT) as caught:
        read_all(io.BytesIO(bytes(data)))
    assert "impossible header" in caught.value.detail


@pytest.mark.parametrize("version", [1, 3])  # 1: CRC-32 images of an earlier mosix-py
def test_another_version_is_refused(version):
    data = bytearray(small_image())
    data[8] = version
    with pytest.raises(CorruptImage) as caught:
        read_all(io.BytesIO(bytes(data)))
    assert f"version {version};" in caught.value.detail


def test_a_failed_checkpoint_records_only_its_reason():
    out = io.BytesIO()
    w = ImageWriter(out)
    w.add(Kind.FAILURE, b"open pipe (fd 3): pipes and sockets cannot be checkpointed")
    w.close()
    (record,) = read_all(io.BytesIO(out.getvalue()))
    assert record.name == "failure" and bytes(record.payload).startswith(b"open pipe")


def test_nothing_is_written_after_close_and_bad_kinds_are_refused():
    w = ImageWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.add(Kind.END, b"")
    with pytest.raises(ValueError):
        w.add(Kind.PAGES, bytes(CHUNK + 8192))
    w.close()
    with pytest.raises(Exception, match="already complete"):
        w.add(Kind.PROCESS, b"{}")


def test_a_mapped_file_is_the_same_by_inode_here_and_by_size_and_time_elsewhere(tmp_path):
    from mosix_core.image.restore_memory import same_file

    path = tmp_path / "lib.so"
    path.write_bytes(b"x" * 100)
    info = os.stat(path)
    entry = {"inode": info.st_ino, "size": 100, "mtime_ns": info.st_mtime_ns}
    other_inode = {**entry, "inode": info.st_ino + 1}
    assert same_file(info, entry, shared=False, elsewhere=False)
    assert not same_file(info, other_inode, shared=False, elsewhere=False)  # here: replaced
    assert same_file(info, other_inode, shared=False, elsewhere=True)  # another node's copy
    assert not same_file(info, {**other_inode, "size": 99}, shared=False, elsewhere=True)
    assert not same_file(info, {**other_inode, "mtime_ns": 1}, shared=False, elsewhere=True)
    assert not same_file(info, other_inode, shared=True, elsewhere=True)  # shared: the file itself


def relayed(data: bytes, send) -> tuple[int, BaseException | None, int]:
    source = io.BytesIO(data + b"after")  # what follows the image stays unread
    result = relay(source.readinto, send)
    return (*result, source.tell())


@pytest.mark.parametrize("compress", [False, True])
def test_an_image_is_relayed_verbatim_up_to_its_end(compress):
    out = io.BytesIO()
    w = ImageWriter(out, compress=compress)
    w.add_pages(0x10000, os.urandom(CHUNK + 999))
    w.add_json(Kind.SIGNALS, {"mask": 0})
    w.close()
    data, sink = out.getvalue(), io.BytesIO()
    assert relayed(data, sink.write) == (len(data), None, len(data))
    assert sink.getvalue() == data


def test_a_failing_receiver_does_not_stop_the_image_being_read_to_its_end():
    data, sent = small_image(), []

    def send(view):
        if sent:
            raise BrokenPipeError(32, "Broken pipe")
        sent.append(bytes(view))

    total, failed, read = relayed(data, send)
    assert (total, read) == (len(data), len(data)) and isinstance(failed, BrokenPipeError)
    assert sent == [data[:16]]


def test_a_relay_refuses_what_is_not_a_whole_image():
    data = small_image()
    for bad in (data[:15], data[:40], data[:-1], b"NOTANIMG" + data[8:]):
        with pytest.raises(CorruptImage):
            relay(io.BytesIO(bad).readinto, lambda view: None)
    impossible = bytearray(data)
    impossible[16 + 8 : 16 + 12] = (1 << 31).to_bytes(4, "little")  # the first record's stored length
    with pytest.raises(CorruptImage) as refused:
        relay(io.BytesIO(bytes(impossible)).readinto, lambda view: None)
    assert "impossible header" in refused.value.detail
