"""Read an offline wandb run file (``run-*.wandb``) without a server, for the tests.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB
blocks of chunks ``crc32 (4) | length (2) | type (1) | data``, where type 1 is a whole record
and 2/3/4 are its first/middle/last pieces. Each record is a ``wandb_internal_pb2.Record``.
"""

import json
import struct

BLOCK = 32 * 1024
HEADER = 7


def records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B", "not a wandb run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            pending = data
        else:
            pending = data if kind == 2 else pending + data
            if kind != 4:
                continue
        record = pb.Record()
        record.ParseFromString(pending)
        yield record
        pending = b""


def history(path):
    """Every logged row as a dict of key -> value."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_info(path):
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    return None
