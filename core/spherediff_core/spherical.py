"""360° video metadata in MP4: Spherical Video V1 (XMP) and V2 (``st3d`` + ``sv3d`` boxes).

An equirectangular MP4 plays as a flat 2:1 strip unless its video track says it is
spherical. Players read one of two Google specifications
(https://github.com/google/spatial-media/tree/master/docs):

* **V1** (``spherical-video-rfc.md``): an XMP document (``GSpherical:Spherical``,
  ``ProjectionType equirectangular``) in a ``uuid`` box
  ``ffcc8263-f855-4a93-8814-587a02521fdd`` inside the video ``trak``. YouTube, Facebook 360,
  VLC and most web players read it.
* **V2** (``spherical-video-v2-rfc.md``): a ``st3d`` box (stereo mode: mono) and a ``sv3d``
  box (``svhd`` + ``proj`` (``prhd`` pose, ``equi`` bounds)) inside the video sample entry
  (``avc1``). FFmpeg/libavformat (and so mpv and ffprobe), ExoPlayer, YouTube and
  headsets' players read it.

:func:`inject_spherical_metadata` writes both (so the widest set of players sees a 360°
video), rewriting ``moov`` and shifting the chunk offsets (``stco``/``co64``) when ``moov``
comes before ``mdat`` (a ``+faststart`` file). :func:`read_spherical_metadata` parses a
file back box by box. Standard library only.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SphericalInfo", "inject_spherical_metadata", "read_spherical_metadata"]

V1_UUID = bytes.fromhex("ffcc8263f8554a938814587a02521fdd")
V1_XMP = (
    '<?xml version="1.0"?>'
    '<rdf:SphericalVideo xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    'xmlns:GSpherical="http://ns.google.com/videos/1.0/spherical/">'
    "<GSpherical:Spherical>true</GSpherical:Spherical>"
    "<GSpherical:Stitched>true</GSpherical:Stitched>"
    "<GSpherical:StitchingSoftware>SphereDiff</GSpherical:StitchingSoftware>"
    "<GSpherical:ProjectionType>equirectangular</GSpherical:ProjectionType>"
    "</rdf:SphericalVideo>"
)
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"sv3d", b"proj"}
VISUAL_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1", b"mp4v", b"av01", b"vp09"}
VISUAL_ENTRY_FIELDS = 78  # bytes of a VisualSampleEntry before its child boxes
OFFSET_BOXES = (b"stco", b"co64")


@dataclass
class _Box:
    """An MP4 box: ``kind``; ``prefix`` (fields before the children: a FullBox's version
    and flags, a sample entry's fixed fields) and ``children``, or the raw ``payload``."""

    kind: bytes
    payload: bytes = b""
    prefix: bytes = b""
    children: list[_Box] | None = None

    def to_bytes(self) -> bytes:
        if self.children is None:
            body = self.payload
        else:
            body = self.prefix + b"".join(child.to_bytes() for child in self.children)
        size = 8 + len(body)
        if size > 0xFFFFFFFF:
            return struct.pack(">I4sQ", 1, self.kind, size + 8) + body
        return struct.pack(">I4s", size, self.kind) + body


def _read_boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(kind, box start, body start, box end) of the boxes in data[start:end]."""
    boxes = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"corrupt MP4: box {kind!r} at {pos} has size {size}")
        boxes.append((kind, pos, pos + header, pos + size))
        pos += size
    return boxes


def _parse(data: bytes, kind: bytes, body: int, end: int) -> _Box:
    """A box, with the children of the containers on the way to the video sample entry."""
    if kind in CONTAINERS:
        children = [_parse(data, k, b, e) for k, _s, b, e in _read_boxes(data, body, end)]
        return _Box(kind, children=children)
    if kind == b"stsd":  # FullBox + entry_count, then the sample entries
        prefix = data[body : body + 8]
        children = [_parse(data, k, b, e) for k, _s, b, e in _read_boxes(data, body + 8, end)]
        return _Box(kind, prefix=prefix, children=children)
    if kind in VISUAL_ENTRIES:
        prefix = data[body : body + VISUAL_ENTRY_FIELDS]
        boxes = _read_boxes(data, body + VISUAL_ENTRY_FIELDS, end)
        children = [_parse(data, k, b, e) for k, _s, b, e in boxes]
        return _Box(kind, prefix=prefix, children=children)
    return _Box(kind, payload=data[body:end])


def _full_box(kind: bytes, body: bytes, version: int = 0, flags: int = 0) -> _Box:
    return _Box(kind, payload=struct.pack(">I", (version << 24) | flags) + body)


def _v2_boxes() -> list[_Box]:
    st3d = _full_box(b"st3d", struct.pack(">B", 0))  # stereo mode 0: monoscopic
    svhd = _full_box(b"svhd", b"SphereDiff\x00")
    prhd = _full_box(b"prhd", struct.pack(">iii", 0, 0, 0))  # pose yaw, pitch, roll (16.16)
    equi = _full_box(b"equi", struct.pack(">IIII", 0, 0, 0, 0))  # full sphere
    proj = _Box(b"proj", children=[prhd, equi])
    return [st3d, _Box(b"sv3d", children=[svhd, proj])]


def _video_trak(moov: _Box) -> _Box | None:
    for trak in moov.children or []:
        if trak.kind != b"trak":
            continue
        for entry in _walk(trak, (b"mdia", b"minf", b"stbl", b"stsd")):
            if entry.kind in VISUAL_ENTRIES:
                return trak
    return None


def _walk(box: _Box, path: tuple[bytes, ...]) -> list[_Box]:
    """The children of the box found by following ``path`` from ``box``."""
    nodes = [box]
    for kind in path:
        nodes = [c for n in nodes for c in (n.children or []) if c.kind == kind]
    return [c for n in nodes for c in (n.children or [])]


def _shift_offsets(box: _Box, delta: int) -> None:
    """Add ``delta`` to every chunk offset under ``box`` (stco: 32-bit, co64: 64-bit)."""
    for child in box.children or []:
        _shift_offsets(child, delta)
    if box.kind in OFFSET_BOXES:
        fmt = ">I" if box.kind == b"stco" else ">Q"
        (count,) = struct.unpack_from(">I", box.payload, 4)
        width = struct.calcsize(fmt)
        values = [
            struct.unpack_from(fmt, box.payload, 8 + i * width)[0] + delta for i in range(count)
        ]
        if box.kind == b"stco" and values and max(values) > 0xFFFFFFFF:
            raise ValueError("chunk offsets no longer fit stco after adding the metadata")
        box.payload = box.payload[:8] + b"".join(struct.pack(fmt, v) for v in values)


def inject_spherical_metadata(source: str | os.PathLike[str], target: str | os.PathLike[str]):
    """Write ``source`` (an equirectangular MP4) to ``target`` with V1 and V2 spherical
    metadata on its video track (replacing any already there). ``target`` may equal
    ``source`` only through a temporary name: the caller writes atomically."""
    data = Path(source).read_bytes()
    top = _read_boxes(data, 0, len(data))
    kinds = [k for k, *_ in top]
    if b"moov" not in kinds:
        raise ValueError(f"{os.fspath(source)!r} is not an MP4 (no moov box)")
    moov_i = kinds.index(b"moov")
    _k, moov_start, moov_body, moov_end = top[moov_i]
    moov = _parse(data, b"moov", moov_body, moov_end)
    trak = _video_trak(moov)
    if trak is None:
        raise ValueError(f"{os.fspath(source)!r} has no video track")
    for entry in _walk(trak, (b"mdia", b"minf", b"stbl", b"stsd")):
        if entry.kind in VISUAL_ENTRIES:
            kept = [c for c in entry.children or [] if c.kind not in (b"st3d", b"sv3d")]
            entry.children = kept + _v2_boxes()
    trak.children = [
        c for c in trak.children or [] if not (c.kind == b"uuid" and c.payload[:16] == V1_UUID)
    ] + [_Box(b"uuid", payload=V1_UUID + V1_XMP.encode("utf-8"))]
    new_moov = moov.to_bytes()
    delta = len(new_moov) - (moov_end - moov_start)
    mdat_starts = [s for k, s, *_ in top if k == b"mdat"]
    if delta and any(s > moov_start for s in mdat_starts):  # moov first: media moves on
        _shift_offsets(moov, delta)
        new_moov = moov.to_bytes()
    with open(target, "wb") as fh:
        fh.write(data[:moov_start])
        fh.write(new_moov)
        fh.write(data[moov_end:])
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class SphericalInfo:
    """What :func:`read_spherical_metadata` found on the video track."""

    v1_xmp: str | None = None
    stereo_mode: int | None = None
    projection: str | None = None
    pose_deg: tuple[float, float, float] | None = None
    bounds: tuple[int, int, int, int] | None = None
    boxes: list[str] = field(default_factory=list)

    @property
    def v1(self) -> bool:
        return self.v1_xmp is not None and "equirectangular" in self.v1_xmp

    @property
    def v2(self) -> bool:
        return self.projection == "equirectangular" and self.stereo_mode == 0


def read_spherical_metadata(path: str | os.PathLike[str]) -> SphericalInfo:
    """Parse an MP4 box by box and report the spherical metadata of its video track."""
    data = Path(path).read_bytes()
    top = _read_boxes(data, 0, len(data))
    moovs = [(b, e) for k, _s, b, e in top if k == b"moov"]
    if not moovs:
        raise ValueError(f"{os.fspath(path)!r} is not an MP4 (no moov box)")
    moov = _parse(data, b"moov", *moovs[0])
    trak = _video_trak(moov)
    if trak is None:
        return SphericalInfo()
    xmp = next(
        (
            c.payload[16:].decode("utf-8", "replace")
            for c in trak.children or []
            if c.kind == b"uuid" and c.payload[:16] == V1_UUID
        ),
        None,
    )
    stereo = projection = pose = bounds = None
    names: list[str] = []
    for entry in _walk(trak, (b"mdia", b"minf", b"stbl", b"stsd")):
        for child in entry.children or []:
            names.append(child.kind.decode("latin-1"))
            if child.kind == b"st3d":
                stereo = child.payload[4]
            if child.kind == b"sv3d":
                for part in _walk(child, (b"proj",)):
                    names.append(part.kind.decode("latin-1"))
                    if part.kind == b"prhd":
                        pose = tuple(
                            v / 65536.0 for v in struct.unpack_from(">iii", part.payload, 4)
                        )
                    if part.kind == b"equi":
                        projection = "equirectangular"
                        bounds = struct.unpack_from(">IIII", part.payload, 4)
    return SphericalInfo(xmp, stereo, projection, pose, bounds, names)
