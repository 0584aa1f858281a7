"""Batch conversion, the parts that need no backend: scanning, naming, the manifest, catalogs, arguments."""

from __future__ import annotations

import io
import os
import uuid

import pytest
from PIL import Image, ImageDraw

from blender_batch import catalog, manifest, scan


def _png(colour, size=48, fmt="PNG") -> bytes:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((8, 8, size - 8, size - 8), fill=colour)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_scan_skips_bad_files_and_duplicates_and_renames_collisions(tmp_path):
    (tmp_path / "mug.png").write_bytes(_png((200, 0, 0)))
    (tmp_path / "mug.jpg").write_bytes(_png((0, 200, 0), fmt="JPEG"))
    (tmp_path / "MUG.webp").write_bytes(_png((0, 0, 200), fmt="WEBP"))
    (tmp_path / "zz copy.png").write_bytes(_png((200, 0, 0)))  # same bytes as mug.png
    good = _png((9, 9, 9))
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "sub").mkdir()

    photos, skipped = scan.scan(tmp_path)

    assert [(p.source, p.name) for p in photos] == [("MUG.webp", "MUG"), ("mug.jpg", "mug_jpg"), ("mug.png", "mug_png")]
    assert photos[0].note == "" and "renamed to mug_jpg" in photos[1].note
    assert [p.format for p in photos] == ["WEBP", "JPEG", "PNG"]
    reasons = {s.source: s.reason for s in skipped}
    assert set(reasons) == {"zz copy.png", "truncated.png", "garbage.png", "notes.txt", "gone.png"}
    assert reasons["zz copy.png"] == "duplicate of mug.png (same content)"
    assert reasons["truncated.png"].startswith("damaged image")
    assert reasons["garbage.png"].startswith(("damaged image", "not an image"))
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["gone.png"].startswith("unreadable")

    # a rerun keeps the names an earlier run gave, even when a new file would now sort first
    known = {p.sha256: p.name for p in photos}
    (tmp_path / "Mug.bmp").write_bytes(_png((50, 50, 50), fmt="BMP"))
    again, _ = scan.scan(tmp_path, known, reserved=("mpod123-library",))
    names = {p.source: p.name for p in again}
    assert names == {"MUG.webp": "MUG", "mug.jpg": "mug_jpg", "mug.png": "mug_png", "Mug.bmp": "Mug_bmp"}


def test_names_and_tags_from_file_names():
    assert scan.sanitize("Red Shoe (v2)") == "Red_Shoe_v2"
    assert scan.sanitize("***") == "photo"
    assert scan.sanitize("é" * 3 + "x") == "x"
    assert scan.tags_for("RedShoe_02-side view") == ["red", "shoe", "side", "view"]
    assert scan.tags_for("IMG_0001") == ["img"]
    photos = [scan.Photo(scan.Path(n), h, "PNG", (1, 1)) for n, h in (("a.png", "1"), ("a.jpg", "2"), ("a_jpg.png", "3"))]
    scan.assign_names(photos, {}, reserved=("mpod123-library",))
    assert [p.name for p in photos] == ["a", "a_jpg", "a_jpg_png"]


def test_job_ids_are_deterministic_and_change_with_settings_and_attempt():
    key = manifest.settings_key({"preset": "fast", "seed": 0})
    assert key == manifest.settings_key({"seed": 0, "preset": "fast"})
    assert key != manifest.settings_key({"preset": "fast", "seed": 1})
    a1 = manifest.job_id_for("ab" * 32, key, 1)
    assert a1 == manifest.job_id_for("ab" * 32, key, 1)
    assert len({a1, manifest.job_id_for("ab" * 32, key, 2), manifest.job_id_for("cd" * 32, key, 1)}) == 3
    assert a1.startswith("batch-") and all(c.isalnum() or c == "-" for c in a1) and len(a1) <= 128


def test_manifest_round_trips_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / manifest.MANIFEST_NAME
    m = manifest.Manifest(path)
    e = m.ensure("ab" * 32, "a.png", "a", "k1")
    m.log(e, "submitted x")
    m.save()
    before = path.read_bytes()
    m2 = manifest.Manifest(path)
    assert m2.run == 2 and m2.session == m.session and m2.entry("ab" * 32)["history"][0][:2] == [1, "submitted x"]
    assert m2.ensure("ab" * 32, "a.png", "a", "k1") is m2.entry("ab" * 32)
    # other settings: the entry starts again, its history says why
    fresh = m2.ensure("ab" * 32, "a.png", "a", "k2")
    assert fresh["state"] == "pending" and "settings changed" in fresh["history"][-1][1]
    m2.data["bad"] = object()  # not JSON: the write fails half way
    with pytest.raises(TypeError):
        m2.save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [manifest.MANIFEST_NAME], "no temporary file left behind"
    path.write_text("{ not json")
    with pytest.raises(manifest.ManifestError, match="move it away"):
        manifest.Manifest(path)


def test_catalog_uuids_are_stable_and_existing_catalogs_are_kept(tmp_path):
    first = catalog.ensure_catalog(tmp_path, "Products/Shoes")
    assert first == str(uuid.uuid5(catalog.NAMESPACE, "Products/Shoes"))
    assert catalog.ensure_catalog(tmp_path, "/Products//Shoes/") == first
    cats = catalog.read_catalogs(tmp_path)
    assert set(cats) == {"Products", "Products/Shoes"}
    text = (tmp_path / catalog.CATS_FILE).read_text()
    assert "VERSION 1" in text and f"{first}:Products/Shoes:Products-Shoes" in text
    # a catalog the user made in Blender keeps its own UUID and its line
    mine = "0a1b2c3d-0000-4000-8000-000000000001"
    (tmp_path / catalog.CATS_FILE).write_text(text + f"{mine}:Props:Props\n")
    assert catalog.ensure_catalog(tmp_path, "Props") == mine
    assert catalog.ensure_catalog(tmp_path, "Products/Hats") != first
    assert (tmp_path / catalog.CATS_FILE).read_text().count("Props") == 2
    with pytest.raises(ValueError):
        catalog.normalize(" / ")


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0"], "--jobs"),
    (["--server-key", "k"], "--client-key"),
    (["--retries", "-1"], "--retries"),
    (["--catalog", "/"], "--catalog"),
    (["--server", "tcp://127.0.0.1:1", "--tiny"], "--tiny"),
])
def test_bad_arguments_exit_with_2_before_anything_starts(tmp_path, capsys, extra, message):
    from mpod123.cli.main import main

    (tmp_path / "photos").mkdir()
    code = main(["batch", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / manifest.MANIFEST_NAME).exists()


def test_a_missing_photo_folder_or_out_argument_exits_with_2(tmp_path, capsys):
    from mpod123.cli.main import main

    assert main(["batch", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path)])
    assert exc.value.code == 2


def test_summary_table_lists_every_file_with_its_reason():
    from blender_batch.runner import Outcome, summary_table

    table = summary_table([
        Outcome("b.png", "b", "skipped", "duplicate of a.png (same content)"),
        Outcome("a.png", "a", "done", "a.blend"),
        Outcome("c.png", "c", "failed", "RuntimeError: boom"),
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["status", "photo", "asset", "detail"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["done", "failed", "skipped"]
    assert "RuntimeError: boom" in lines[3] and lines[-1] == "1 done, 1 failed, 1 skipped"


def test_the_batch_package_loads_bpy_but_never_torch_or_the_method():
    """Its working modules load nothing of the method; its command module joins the `mpod123` command
    line, so it shares the exit codes and the error mapping of mpod123.cli.common (still no torch)."""
    import subprocess
    import sys

    code = ("import sys, blender_batch.runner, blender_batch.service, blender_batch.assets; "
            "print(sorted(m for m in ('torch', 'mpod123', 'bpy') if m in sys.modules)); "
            "import blender_batch.commands; "
            "print(sorted(m for m in ('torch', 'mpod123.cli.common', 'bpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-2:] == ["['bpy']", "['bpy', 'mpod123.cli.common']"]
