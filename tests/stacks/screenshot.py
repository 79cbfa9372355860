#!/usr/bin/env python3
"""Renders an SVG in Debian's headless Chromium and says whether the picture is blank.

usage: screenshot.py IN.svg OUT.png

Writes OUT.png (the SVG's own width and height when its root element says them, within
4000x4000; else 1200x700), decodes it here (zlib only, no imaging library) and prints one
JSON line: {"width", "height", "non_background_fraction", "distinct_colours"}, where the
background is the most common colour. Exit status: 0 for a picture, 1 when it is blank
(non_background_fraction < 0.02 or fewer than 4 distinct colours), 2 on any error.
"""

import collections
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

WINDOW = (1200, 700)
TIMEOUT_SECONDS = 120


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no chromium or chromium-browser on PATH: run scripts/install-deps.sh")


def window(svg):
    """The SVG's width and height (its root element's attributes), bounded; else WINDOW."""
    with open(svg, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")
    root = re.search(r"<svg\b[^>]*>", head)
    if not root:
        return WINDOW
    size = [re.search(r'\b%s="(\d+)"' % name, root.group(0)) for name in ("width", "height")]
    if not all(size):
        return WINDOW
    return tuple(min(max(int(m.group(1)), 100), 4000) for m in size)


def render(svg, png):
    if not os.path.isfile(svg):
        raise RuntimeError("no such SVG file: %s" % svg)
    with tempfile.TemporaryDirectory(prefix="screenshot-profile-") as profile:
        command = [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=%d,%d" % window(svg), "--screenshot=" + png,
            "--user-data-dir=" + profile, "file://" + os.path.abspath(svg),
        ]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=TIMEOUT_SECONDS)
    if not os.path.isfile(png) or os.path.getsize(png) == 0:
        raise RuntimeError("chromium wrote no screenshot (exit %d): %s"
                           % (done.returncode, done.stderr.decode(errors="replace")[-2000:]))


def chunks(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if len(body) != length:
            raise ValueError("truncated %r chunk" % kind)
        if zlib.crc32(kind + body) != struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0]:
            raise ValueError("bad CRC in %r chunk" % kind)
        yield kind, body
        at += 12 + length
        if kind == b"IEND":
            return
    raise ValueError("no IEND chunk")


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def unfilter(raw, width, height, bpp):
    """The image's rows with the per-row filters (None, Sub, Up, Average, Paeth) undone."""
    stride = width * bpp
    if len(raw) < height * (stride + 1):
        raise ValueError("image data shorter than %dx%d" % (width, height))
    previous = bytearray(stride)
    rows = []
    at = 0
    for _ in range(height):
        kind = raw[at]
        line = bytearray(raw[at + 1:at + 1 + stride])
        at += stride + 1
        if kind == 0:
            pass
        elif kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + previous[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                corner = previous[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + paeth(left, previous[i], corner)) & 0xFF
        else:
            raise ValueError("unknown PNG filter type %d" % kind)
        rows.append(line)
        previous = line
    return rows


def decode(path):
    with open(path, "rb") as f:
        data = f.read()
    header = None
    idat = []
    for kind, body in chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or colour_type not in (2, 6):
        raise ValueError("unsupported PNG: bit depth %d, colour type %d (need 8 and 2 or 6)"
                         % (depth, colour_type))
    if interlace != 0:
        raise ValueError("interlaced PNGs are not supported")
    bpp = 3 if colour_type == 2 else 4
    return width, height, bpp, unfilter(zlib.decompress(b"".join(idat)), width, height, bpp)


def measure(path):
    width, height, bpp, rows = decode(path)
    colours = collections.Counter()
    for row in rows:
        colours.update(zip(*(row[i::bpp] for i in range(bpp))))
    pixels = width * height
    background = colours.most_common(1)[0][1] if colours else 0
    return {
        "width": width,
        "height": height,
        "non_background_fraction": round(1 - background / pixels, 4) if pixels else 0.0,
        "distinct_colours": len(colours),
    }


def main(argv):
    if len(argv) != 3:
        print("usage: screenshot.py IN.svg OUT.png", file=sys.stderr)
        return 2
    try:
        if os.path.exists(argv[2]):
            os.remove(argv[2])
        render(argv[1], argv[2])
        report = measure(argv[2])
    except Exception as error:  # every failure is exit status 2, with its reason
        print("screenshot.py: %s" % error, file=sys.stderr)
        return 2
    print(json.dumps(report))
    blank = report["non_background_fraction"] < 0.02 or report["distinct_colours"] < 4
    return 1 if blank else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
