"""Small, valid media files for the file-sharing tests, made here (nothing
binary is committed): a PNG photo and an Ogg/Opus voice message that
``file``/libmagic, Go's mimetype sniffing and shared-mime-info recognise,
and an HTTPS download that trusts only the test server's certificate.
"""

from __future__ import annotations

import ssl
import struct
import urllib.request
import zlib
from pathlib import Path


def png(width: int = 32, height: int = 24) -> bytes:
    """An RGB gradient PNG (PNG spec §11: IHDR, one IDAT, IEND)."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width)
                                    for v in ((x * 8) % 256, (y * 10) % 256, 128))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _ogg_crc_table()


def _ogg_page(packet: bytes, sequence: int, granule: int, flags: int,
              serial: int = 0x43484258) -> bytes:
    """One Ogg page holding one packet (RFC 3533 §6), CRC filled in."""
    lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
    header = (b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, serial, sequence, 0)
              + bytes([len(lacing)]) + bytes(lacing))
    crc = 0
    for byte in header + packet:
        crc = ((crc << 8) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]) & 0xFFFFFFFF
    return header[:22] + struct.pack("<I", crc) + header[26:] + packet


def ogg_opus(frames: int = 100) -> bytes:
    """A mono Ogg/Opus stream (RFC 7845): OpusHead, OpusTags, then 20 ms
    silence packets (``frames`` of them: 2 s by default)."""
    pre_skip = 312
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", pre_skip, 48000, 0, 0)
    vendor = b"chatbx tests"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    out = [_ogg_page(head, 0, 0, 0x02), _ogg_page(tags, 1, 0, 0)]
    for i in range(frames):
        # TOC 0xf8: CELT fullband 20 ms, mono, one frame; 0xff 0xfe: silence.
        out.append(_ogg_page(b"\xf8\xff\xfe", 2 + i, 960 * (i + 1) - pre_skip,
                             0x04 if i == frames - 1 else 0))
    return b"".join(out)


def download(url: str, certificate: Path, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` over HTTPS trusting only ``certificate`` (hostname checked):
    (status, lower-cased headers, body)."""
    context = ssl.create_default_context(cafile=str(certificate))
    with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
