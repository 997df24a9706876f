#!/usr/bin/env python3
"""Writes the FarMem wire-protocol test vectors from SPEC.md, independently of
the Swift codec: the Swift tests decode these bytes and re-encode them, so the
two implementations must agree byte for byte. Run from this directory:
    python3 generate.py
"""
import json
import struct

MAGIC = b"FM"
VERSION = 1           # the frame format (header version byte)
PROTOCOL_VERSION = 3  # what HELLO negotiates


def frame(opcode, request_id, payload, status=0, version=VERSION, magic=MAGIC, length=None):
    length = len(payload) if length is None else length
    return magic + struct.pack("<BBIIHH", version, opcode, request_id, length, status, 0) + payload


def page_list(region, pages):
    return struct.pack("<QII", region, len(pages), 0) + b"".join(struct.pack("<Q", p) for p in pages)


KEY = bytes(range(1, 17))
vectors = []


def add(name, data, description, valid=True, error=None):
    with open(f"{name}.bin", "wb") as f:
        f.write(data)
    entry = {"name": name, "file": f"{name}.bin", "bytes": len(data), "description": description, "valid": valid}
    if error:
        entry["error"] = error
    vectors.append(entry)


add("hello_request",
    frame(0x01, 1, struct.pack("<HHI", 1, 3, 4096) + KEY + struct.pack("<H", 6) + b"secret"),
    "HELLO, versions 1..3, page size 4096, session key 01..10, token 'secret'")
add("hello_reply",
    frame(0x81, 1, struct.pack("<HHIIIQQ", 3, 0, 4096, 256, 16 + 256 * 8 + 256 * 4096, 262144, 262000)),
    "HELLO reply: version 3, 256-page batches, 1 GiB capacity, 262000 pages unreserved")
add("fence_request", frame(0x0B, 18, struct.pack("<II", 5, 2)), "FENCE link 5, generation 2 (version 3)")
add("fence_reply", frame(0x8B, 18, b""), "FENCE accepted")
add("error_fenced",
    frame(0x85, 19, b"link 5 reconnected", status=15),
    "WRITE_PAGES on a replaced connection refused with FENCED (status 15); the server closes the connection")
add("create_region_request", frame(0x02, 2, struct.pack("<QQ", 7, 65536)),
    "CREATE_REGION 7 of 65536 pages, all reserved (the version-1 form)")
add("create_region_request_v2", frame(0x02, 16, struct.pack("<QQQ", 8, 65536, 21504)),
    "CREATE_REGION 8 of 65536 pages, 21504 of them reserved (version 2)")
add("reserve_request", frame(0x0A, 17, struct.pack("<QQ", 8, 22016)), "RESERVE region 8: 22016 pages (version 2)")
add("reserve_reply", frame(0x8A, 17, struct.pack("<Q", 22016)), "RESERVE reply: region 8 has 22016 pages reserved")
add("create_region_reply", frame(0x82, 2, b""), "CREATE_REGION succeeded")
add("drop_region_request", frame(0x03, 3, struct.pack("<Q", 7)), "DROP_REGION 7")
add("read_pages_request", frame(0x04, 4, page_list(7, [0, 5, 1000])), "READ_PAGES region 7, pages 0, 5, 1000")
add("read_pages_reply", frame(0x84, 4, bytes([0xAB]) * 4096), "READ_PAGES reply with one page of 0xAB")
add("write_pages_request",
    frame(0x05, 5, page_list(7, [3]) + bytes(i % 251 for i in range(4096))),
    "WRITE_PAGES region 7, page 3, data byte i = i mod 251")
add("discard_request", frame(0x06, 6, struct.pack("<QQQ", 7, 10, 20)), "DISCARD region 7, pages 10..29")
add("stats_request", frame(0x07, 8, b""), "STATS")
add("stats_reply", frame(0x87, 8, struct.pack("<10Q", 262144, 65536, 1000, 2, 6, 1, 65536, 1000, 5000, 4000)),
    "STATS reply (versions 1 and 2)")
add("stats_reply_v3",
    frame(0x87, 20, struct.pack("<10Q", 262144, 65536, 1000, 2, 6, 1, 65536, 1000, 5000, 4000)
          + struct.pack("<H", 5) + b"alpha" + struct.pack("<3Q", 131072, 65536, 1000)),
    "STATS reply (version 3, a server with tenants): tenant 'alpha', quota 131072 pages, 65536 reserved, 1000 stored")
add("error_out_of_capacity",
    frame(0x82, 9, b"server out of capacity", status=9),
    "CREATE_REGION refused with OUT_OF_CAPACITY (status 9) and a message")
add("rdma_attach_request", frame(0x08, 14, b""), "RDMA_ATTACH")
add("rdma_attach_reply", frame(0x88, 14, struct.pack("<HH", 7071, 0) + bytes(range(0xA0, 0xB0))),
    "RDMA_ATTACH reply: RDMA-CM port 7071, ticket a0..af")
add("rdma_expose_request", frame(0x09, 15, struct.pack("<Q", 7)), "RDMA_EXPOSE region 7")
add("rdma_expose_reply", frame(0x89, 15, struct.pack("<QIIQ", 0x7F0000000000, 0x1234, 0, 65536 * 4096)),
    "RDMA_EXPOSE reply: address 0x7f0000000000, rkey 0x1234, 256 MiB")
add("bad_magic", frame(0x07, 10, b"", magic=b"XX"), "wrong magic: MALFORMED_FRAME, connection closed",
    valid=False, error="MALFORMED_FRAME")
add("bad_version", frame(0x07, 11, b"", version=9), "frame version 9: UNSUPPORTED_VERSION, connection closed",
    valid=False, error="UNSUPPORTED_VERSION")
add("oversized", frame(0x05, 12, b"", length=0x7FFFFFFF), "payload length over the limit: TOO_LARGE, connection closed",
    valid=False, error="TOO_LARGE")
add("truncated_page_list", frame(0x04, 13, struct.pack("<QII", 7, 3, 0) + struct.pack("<Q", 1)),
    "READ_PAGES announcing 3 pages but listing 1: MALFORMED_FRAME, connection stays open",
    valid=False, error="MALFORMED_FRAME")

with open("vectors.json", "w") as f:
    json.dump({"protocol_version": PROTOCOL_VERSION, "frame_version": VERSION, "vectors": vectors}, f, indent=2)
    f.write("\n")
