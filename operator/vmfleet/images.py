"""Small template images for the demo, the tests and the benchmarks.

The first sector is a boot sector that prints a marker on the first serial port and halts, so a test
can prove from the console log that a VM booted from its disk without shipping a guest OS.
"""

from __future__ import annotations

import os
import struct

SECTOR = 512
_MIB = 1 << 20


def boot_sector(marker: str) -> bytes:
    text = marker.encode("ascii") + b"\r\n\x00"
    msg_offset = 22
    code = bytes(
        [
            0xFA,  # cli
            0x31,
            0xC0,  # xor ax, ax
            0x8E,
            0xD8,  # mov ds, ax
            0xBE,
            *struct.pack("<H", 0x7C00 + msg_offset),  # mov si, msg
            0xBA,
            0xF8,
            0x03,  # mov dx, 0x3f8 (COM1)
            0xAC,  # next: lodsb
            0x84,
            0xC0,  # test al, al
            0x74,
            0x03,  # jz done
            0xEE,  # out dx, al
            0xEB,
            0xF8,  # jmp next
            0xF4,  # done: hlt
            0xEB,
            0xFD,  # jmp done
        ]
    )
    assert len(code) == msg_offset
    body = code + text
    if len(body) > 510:
        raise ValueError("marker too long for a boot sector")
    return body.ljust(510, b"\x00") + b"\x55\xaa"


def make_template_image(
    path: str, size: int, data: int = 0, marker: str = "VMFLEET-BOOT-OK", contiguous: bool = False
) -> None:
    """A sparse raw image of `size` bytes: the boot sector, then `data` bytes of incompressible data
    written 1 MiB at a time and spread across the image, like a real OS image with holes
    (or in one run after the first MiB, with `contiguous`)."""
    if size < _MIB or data > size // 2:
        raise ValueError("size must be at least 1 MiB and data at most half of it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.truncate(size)
        f.write(boot_sector(marker))
        chunks = data // _MIB
        if chunks:
            stride = _MIB if contiguous else (size - _MIB) // chunks  # >= 1 MiB since data <= size / 2
            for i in range(chunks):
                f.seek(_MIB + i * stride)
                f.write(os.urandom(_MIB))
    os.replace(tmp, path)
