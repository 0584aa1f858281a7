"""Bounds of a GLB's declared arrays, from the file's real size, before anything is allocated.

A glTF accessor declares ``count`` elements; a reader allocates about that
many (and more: trimesh makes several arrays per vertex) before it looks at
the bytes. So a 700-byte file whose accessor claims 30 million vertices costs
gigabytes. This module checks, from the JSON and the binary chunk's length
only, that every declared array fits in bytes the file really has:

* a buffer's ``byteLength`` <= the bytes behind it (the BIN chunk for the
  GLB's own buffer, the decoded size of a ``data:`` URI); a buffer that names
  an outside file is refused (a GLB read by the service carries its data);
* a buffer view's ``byteOffset + byteLength`` <= its buffer;
* an accessor's ``byteOffset + stride * (count - 1) + element size`` <= its
  buffer view (``stride``: the view's ``byteStride`` or the element size); an
  accessor with no buffer view (all zeros by the spec) may declare no more
  bytes than the binary chunk holds; a sparse accessor's indices and values
  are checked the same way.

Standard library and numpy only. :func:`check_glb_bounds` is called at the
top of the GLB path of :mod:`mpod123.export.reader`, so every command that
reads a user's GLB (``texture``, ``eval``, the service's texture worker) is
guarded.
"""

from __future__ import annotations

import struct

import numpy as np

COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
BIN_CHUNK = 0x004E4942
MAX_JSON_ITEMS = 1_000_000
"""Accessors, buffer views or buffers in one file; more is refused (a JSON of millions of them)."""


class GLBBoundsError(ValueError):
    """A GLB that declares more data than it holds."""


def _int(value: object, what: str, error: type[Exception], default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise error(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _list(gltf: dict, key: str, error: type[Exception]) -> list:
    items = gltf.get(key, [])
    if not isinstance(items, list) or len(items) > MAX_JSON_ITEMS:
        raise error(f"the glTF's {key!r} must be a list of at most {MAX_JSON_ITEMS} entries")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise error(f"{key}[{i}] must be an object")
    return items


def _data_uri_bytes(uri: str) -> int:
    """Decoded size of a ``data:`` URI (base64), without decoding it."""
    head, _, payload = uri.partition(",")
    if ";base64" not in head:
        return len(payload)
    return len(payload) * 3 // 4


def _buffer_sizes(gltf: dict, bin_bytes: int, error: type[Exception]) -> list[int]:
    sizes = []
    for i, buf in enumerate(_list(gltf, "buffers", error)):
        declared = _int(buf.get("byteLength"), f"buffers[{i}].byteLength", error)
        uri = buf.get("uri")
        if uri is None:
            real = bin_bytes if i == 0 else 0
        elif isinstance(uri, str) and uri.startswith("data:"):
            real = _data_uri_bytes(uri)
        else:
            raise error(f"buffers[{i}] names an outside file ({str(uri)[:60]!r}); send a GLB that carries its data "
                        "(glTF Binary export)")
        if declared > real:
            raise error(f"buffers[{i}] declares {declared} bytes but the file holds {real}")
        sizes.append(declared)
    return sizes


def _view_sizes(gltf: dict, buffers: list[int], error: type[Exception]) -> list[tuple[int, int]]:
    """(byteLength, byteStride or 0) of each buffer view, checked against its buffer."""
    views = []
    for i, view in enumerate(_list(gltf, "bufferViews", error)):
        b = _int(view.get("buffer"), f"bufferViews[{i}].buffer", error)
        if b >= len(buffers):
            raise error(f"bufferViews[{i}] names buffer {b}, which does not exist")
        offset = _int(view.get("byteOffset"), f"bufferViews[{i}].byteOffset", error, 0)
        length = _int(view.get("byteLength"), f"bufferViews[{i}].byteLength", error)
        if offset + length > buffers[b]:
            raise error(f"bufferViews[{i}] ends at byte {offset + length}, past its buffer's {buffers[b]}")
        stride = _int(view.get("byteStride"), f"bufferViews[{i}].byteStride", error, 0)
        views.append((length, stride))
    return views


def _check_span(count: int, element: int, offset: int, view: int | None, views: list[tuple[int, int]],
                what: str, error: type[Exception], loose_bytes: int) -> None:
    if view is None:  # zeros by the spec: allocated all the same, so bounded by the real data
        if count * element > loose_bytes:
            raise error(f"{what} declares {count} elements ({count * element} bytes) with no data behind them; "
                        f"the file holds {loose_bytes} bytes")
        return
    if view >= len(views):
        raise error(f"{what} names buffer view {view}, which does not exist")
    length, stride = views[view]
    stride = stride or element
    need = 0 if count == 0 else offset + stride * (count - 1) + element
    if need > length:
        raise error(f"{what} declares {count} elements ({need} bytes) but its buffer view holds {length}")


def check_glb_bounds(gltf: dict, bin_chunk: bytes | int, error: type[Exception] = GLBBoundsError) -> None:
    """Raise ``error`` when any buffer, buffer view or accessor of ``gltf`` declares more bytes
    than ``bin_chunk`` (the GLB's binary chunk, or its length) really holds."""
    if not isinstance(gltf, dict):
        raise error("the glTF JSON is not an object")
    bin_bytes = bin_chunk if isinstance(bin_chunk, int) else len(bin_chunk)
    buffers = _buffer_sizes(gltf, bin_bytes, error)
    views = _view_sizes(gltf, buffers, error)
    loose = sum(buffers)
    for i, acc in enumerate(_list(gltf, "accessors", error)):
        what = f"accessors[{i}]"
        count = _int(acc.get("count"), f"{what}.count", error)
        size = COMPONENT_BYTES.get(acc.get("componentType"))
        comps = TYPE_COMPONENTS.get(acc.get("type"))
        if size is None or comps is None:
            raise error(f"{what} has an unknown componentType or type")
        view = acc.get("bufferView")
        view = None if view is None else _int(view, f"{what}.bufferView", error)
        offset = _int(acc.get("byteOffset"), f"{what}.byteOffset", error, 0)
        _check_span(count, size * comps, offset, view, views, what, error, loose)
        sparse = acc.get("sparse")
        if sparse is not None:
            if not isinstance(sparse, dict) or not isinstance(sparse.get("indices"), dict) \
                    or not isinstance(sparse.get("values"), dict):
                raise error(f"{what}.sparse must hold 'indices' and 'values' objects")
            n = _int(sparse.get("count"), f"{what}.sparse.count", error)
            if n > count:
                raise error(f"{what}.sparse.count {n} is over the accessor's count {count}")
            idx, val = sparse["indices"], sparse["values"]
            isize = COMPONENT_BYTES.get(idx.get("componentType"))
            if isize is None:
                raise error(f"{what}.sparse.indices has an unknown componentType")
            for part, element in ((idx, isize), (val, size * comps)):
                pv = _int(part.get("bufferView"), f"{what}.sparse bufferView", error)
                po = _int(part.get("byteOffset"), f"{what}.sparse byteOffset", error, 0)
                _check_span(n, element, po, pv, [(ln, 0) for ln, _ in views], f"{what}.sparse", error, loose)


def bin_chunk_bytes(after_json: bytes) -> int:
    """Bytes of the BIN chunk's data that really follow the JSON chunk (0 without a BIN chunk;
    a chunk that claims more than the file holds counts what is there)."""
    if len(after_json) < 8:
        return 0
    length, kind = struct.unpack_from("<II", after_json, 0)
    return min(length, len(after_json) - 8) if kind == BIN_CHUNK else 0


def check_glb_file_bounds(gltf: dict, after_json: bytes, error: type[Exception] = GLBBoundsError) -> None:
    """:func:`check_glb_bounds` for a GLB given the bytes after its JSON chunk."""
    check_glb_bounds(gltf, bin_chunk_bytes(after_json), error)
