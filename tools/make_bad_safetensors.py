#!/usr/bin/env python3
"""Generates the corrupt safetensors fixtures in tests/data/bad_safetensors/ (tests/io).

Pure Python (no safetensors package): every file is hand-assembled so that exactly one thing is
wrong. Each fixture is < 2 KB. Re-run after editing; the outputs are committed.

    python3 tools/make_bad_safetensors.py [out_dir]
"""
import json
import os
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "bad_safetensors")


def st_bytes(header: str, data: bytes = b"", pad: bool = True) -> bytes:
    """u64 little-endian header length + header (space padded to 8) + data."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def write(name: str, content: bytes) -> None:
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    assert len(content) < 2048, name


def entry(dtype, shape, b, e):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


def hdr(d) -> str:
    return json.dumps(d, separators=(",", ":"))


F32_2x2 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)


def main() -> None:
    # A valid reference file (used by the tests as the "good" control).
    good = hdr({"__metadata__": {"format": "pt"}, "w": entry("F32", [2, 2], 0, 16)})
    write("good.safetensors", st_bytes(good, F32_2x2))

    # 5 bytes: shorter than the 8-byte length prefix.
    write("truncated.safetensors", st_bytes(good, F32_2x2)[:5])
    # Data section cut short: "w" needs [0,16) but only 8 data bytes remain.
    write("truncated_data.safetensors", st_bytes(good, F32_2x2)[:-8])
    # Header length prefix says 1000 bytes, file is much shorter.
    write("header_too_large.safetensors", struct.pack("<Q", 1000) + b'{"w":{}}' + b"\0" * 8)
    # Absurd header length (> 100 MB).
    write("header_huge.safetensors", struct.pack("<Q", 1 << 62) + b"{}      ")
    # Invalid JSON (unterminated object).
    write("bad_json.safetensors", st_bytes('{"w":{"dtype":"F32","shape":[2,2],'))
    # Invalid UTF-8 inside the tensor name.
    write("bad_utf8.safetensors",
          st_bytes(b'{"w\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x01"))
    # Header is JSON but not an object.
    write("not_object.safetensors", st_bytes("[1,2,3]"))
    # Unknown dtype tag.
    write("unknown_dtype.safetensors",
          st_bytes(hdr({"w": entry("F33", [2, 2], 0, 16)}), F32_2x2))
    # dtype x shape (F32 [2,2] = 16 bytes) disagrees with data_offsets (12 bytes).
    write("shape_mismatch.safetensors",
          st_bytes(hdr({"w": entry("F32", [2, 2], 0, 12)}), F32_2x2[:12]))
    # Negative dimension.
    write("negative_shape.safetensors",
          st_bytes(hdr({"w": entry("F32", [-1, 4], 0, 16)}), F32_2x2))
    # begin > end.
    write("begin_after_end.safetensors",
          st_bytes(hdr({"w": entry("F32", [0], 16, 0)}), F32_2x2))
    # Missing field (no data_offsets).
    write("missing_field.safetensors",
          st_bytes(hdr({"w": {"dtype": "F32", "shape": [2, 2]}}), F32_2x2))
    # Range outside the file: [0,32) of an 8-byte data section.
    write("out_of_range.safetensors",
          st_bytes(hdr({"w": entry("F32", [8], 0, 32)}), F32_2x2[:8]))
    # Overlapping ranges: a [0,8) and b [4,12).
    write("overlap.safetensors",
          st_bytes(hdr({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}),
                   F32_2x2[:12]))
    # Duplicate tensor name: hand-written JSON with key "w" twice.
    write("duplicate_name.safetensors",
          st_bytes('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                   '"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', F32_2x2))
    # __metadata__ must be string -> string.
    write("bad_metadata.safetensors",
          st_bytes(hdr({"__metadata__": {"format": 1}, "w": entry("F32", [2, 2], 0, 16)}),
                   F32_2x2))

    # Sharded index fixtures (directories).
    a = st_bytes(hdr({"a": entry("F32", [2], 0, 8)}), F32_2x2[:8])
    ab = st_bytes(hdr({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 8, 16)}), F32_2x2)

    def index(wm):
        return (json.dumps({"metadata": {"total_size": 8 * len(wm)}, "weight_map": wm},
                           indent=2, sort_keys=True) + "\n").encode()

    # index points to a shard that does not exist.
    write("index_missing_shard/model-00001-of-00002.safetensors", a)
    write("index_missing_shard/model.safetensors.index.json",
          index({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}))
    # index lists tensor "b" in a shard that only has "a".
    write("index_missing_tensor/model-00001-of-00001.safetensors", a)
    write("index_missing_tensor/model.safetensors.index.json",
          index({"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}))
    # shard has "a" and "b"; the index lists only "a".
    write("index_unlisted_tensor/model-00001-of-00001.safetensors", ab)
    write("index_unlisted_tensor/model.safetensors.index.json",
          index({"a": "model-00001-of-00001.safetensors"}))
    # A valid 2-shard model (control for the above).
    b = st_bytes(hdr({"b": entry("F32", [2], 0, 8)}), F32_2x2[8:])
    write("index_good/model-00001-of-00002.safetensors", a)
    write("index_good/model-00002-of-00002.safetensors", b)
    write("index_good/model.safetensors.index.json",
          index({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}))


if __name__ == "__main__":
    main()
