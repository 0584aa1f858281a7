"""Draw every MPOD123 panel and the preferences into a real UILayout, in a subprocess.

Background bpy has a window but never redraws, so panels are not drawn by
themselves. ``WindowManager.popover`` calls its draw function at once with a
real UILayout; we draw each panel into a column of it. Blender then tries to
show the popover, which crashes without a GPU, so this script exits from
inside the draw callback after writing its findings as JSON. Run as
``python tests/addon_draw_panels.py REPO_ROOT``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
from types import SimpleNamespace

sys.path.insert(0, sys.argv[1])

import bpy


def _png(w: int, h: int, rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, "PNG")
    return buf.getvalue()


class _NoListLayout:
    """A real UILayout, except that ``template_list`` (which crashes in a popover without a region in background
    mode) is checked instead of drawn: the UIList class must be registered and both properties must exist."""

    def __init__(self, layout, checked: list) -> None:
        self._layout, self._checked = layout, checked

    def __getattr__(self, name):
        attr = getattr(self._layout, name)
        if name in ("row", "column", "box", "split", "column_flow", "grid_flow"):
            return lambda *a, **k: _NoListLayout(attr(*a, **k), self._checked)
        return attr

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._layout, name, value)

    def template_list(self, listtype, list_id, data, propname, active_data, active_propname, **kw):
        assert hasattr(bpy.types, listtype), f"{listtype} is not registered"
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties
        self._checked.append(listtype)


def main() -> None:
    import addon_utils  # importable only once bpy is imported

    addon_utils.enable("blender_addon", default_set=True, handle_error=lambda exc: (_ for _ in ()).throw(exc))
    from blender_addon import session
    from blender_addon.ui import panels
    from blender_addon.blender.preferences import prefs as prefs_of
    from blender_addon.ui import preferences
    from blender_addon.core.client import Message

    st = bpy.context.window_manager.mpod123
    st.connection, st.server_name, st.server_version, st.server_gpu = "connected", "mpod123-backend", "1.0", "none"
    st.last_error = "a long error message that has to be wrapped over several lines of the sidebar panel"
    for job_id, name in (("a" * 32, "teapot"), ("b" * 32, "vase")):
        job = st.jobs.add()
        job.job_id, job.name, job.state = job_id, name, "queued"
        events = [
            Message("event", {"kind": "progress", "stage": "outline", "step": 3, "total": 10, "eta_s": 12.0}, job_id=job_id, seq=1),
            Message("event", {"kind": "preview", "stage": "outline", "step": 3, "width": 16, "height": 8}, [_png(16, 8, (200, 80, 40))], job_id=job_id, seq=2),
            Message("event", {"kind": "stage_done", "stage": "outline", "steps": 10}, job_id=job_id, seq=3),
            Message("event", {"kind": "progress", "stage": "detail", "step": 1, "total": 10, "eta_s": 300.0}, job_id=job_id, seq=4),
            Message("event", {"kind": "preview", "stage": "detail", "step": 1, "width": 16, "height": 8}, [_png(16, 8, (40, 80, 200))], job_id=job_id, seq=5),
        ]
        for msg in events:
            session.apply_event(bpy.context, msg)
    st.jobs[1].state = "failed"
    if "--text" in sys.argv:  # a candidates job whose first candidate arrived, with its verdict
        from blender_addon.blender import candidates as text_input

        job = st.jobs.add()
        job.job_id, job.name, job.state, job.kind, job.prompt = "c" * 32, "kettle", "done", "candidates", "a kettle"
        text_input.text_state().job_id, text_input.text_state().job_prompt = job.job_id, "a kettle"
        session.apply_event(bpy.context, Message("event", {"kind": "preview", "stage": "candidate_0", "step": 0, "width": 16,
                                                          "height": 16}, [_png(16, 16, (250, 250, 250))], job_id=job.job_id, seq=1))
        session.apply_event(bpy.context, Message("event", {"kind": "log", "text": "1 drawn", "verdicts": [
            {"index": 0, "usable": False, "reason": "no object found"}]}, job_id=job.job_id, seq=2))
    results: dict = {"drawn": [], "errors": []}

    def draw(menu, context):
        try:
            for cls in panels.PANELS:
                sources = ("IMAGE_EDITOR", "FILE", "DATABLOCK", "RENDER") if cls is panels.MPOD123_PT_input else (st.source,)
                for source in sources:
                    st.source = source
                    box = menu.layout.column()
                    for header in ("draw_header", "draw_header_preset"):
                        if hasattr(cls, header):
                            getattr(cls, header)(SimpleNamespace(layout=box.row()), context)
                    cls.draw(SimpleNamespace(layout=_NoListLayout(box, results.setdefault("lists", []))), context)
                    results["drawn"].append(cls.bl_idname)
            for i, job in enumerate(st.jobs):  # the job list's rows
                panels.MPOD123_UL_jobs.draw_item(None, context, menu.layout.row(), st, job, 0, st, "active_job", i)
            results["drawn"].append("MPOD123_UL_jobs")
            st.override_import = True
            panels.MPOD123_PT_import.draw(SimpleNamespace(layout=menu.layout.column()), context)
            prefs = prefs_of(context)
            preferences.draw_preferences(menu.layout.column(), prefs)
            results["drawn"].append("preferences")
            if "--text" in sys.argv:  # the Text input mode, with a candidate in its pick list
                from blender_addon.blender import candidates as text_input
                from blender_addon.ui import text_ops

                ts = text_input.text_state(context)
                ts.mode, ts.prompt = "TEXT", "a red vintage kettle"
                panels.MPOD123_PT_input.draw(SimpleNamespace(layout=_NoListLayout(menu.layout.column(), results["lists"])),
                                             context)
                text_ops.MPOD123_UL_candidates.draw_item(None, context, menu.layout.row(), ts, ts.candidates[0], 0, ts,
                                                           "picked", 0)
                results["text"] = {"candidates": [(r.index, r.image_name, r.usable, r.verdict) for r in ts.candidates],
                                   "polls": {op.bl_idname: bool(getattr(bpy.ops.mpod123, op.bl_idname[8:]).poll())
                                             for op in text_ops.CLASSES if hasattr(op, "bl_idname")
                                             and op.bl_idname.startswith("mpod123.")}}
                results["drawn"].append("text_input")
            from blender_addon.blender import extra_views  # the Extra Views sub-panel: a slot with an image, an empty one
            from blender_addon.ui import views as views_ui

            views = context.window_manager.mpod123_views
            views.add().image = bpy.data.images.new("side", 4, 4)
            views.add()
            views_ui.MPOD123_PT_extra_views.draw(SimpleNamespace(layout=menu.layout.column()), context)
            results["extra_views"] = [extra_views.problem(context), len(views)]
            views.clear()
            if "--canary" in sys.argv:  # proves the test notices a bad property and a bad operator
                menu.layout.prop(st, "no_such_property")
                menu.layout.operator("mpod123.no_such_operator")
        except Exception:  # noqa: BLE001  reported in the JSON
            results["errors"].append(traceback.format_exc())
        results["registered"] = {cls.bl_idname: hasattr(bpy.types, cls.bl_idname) for cls in panels.CLASSES}
        results["category"] = sorted({cls.bl_category for cls in panels.PANELS})
        results["previews"] = [st.jobs[0].preview_outline, st.jobs[0].preview_detail]
        from blender_addon.ui import backend_ops, operators, text_ops, texture_ops, views

        results["polls"] = {}
        for op in (*operators.CLASSES, *backend_ops.CLASSES, *text_ops.CLASSES, *texture_ops.CLASSES, *views.CLASSES):
            if not hasattr(op, "bl_idname") or "." not in op.bl_idname or op.bl_idname.startswith("MPOD123_"):
                continue
            module, name = op.bl_idname.split(".")
            try:
                getattr(getattr(bpy.ops, module), name).poll()
            except Exception as exc:  # noqa: BLE001  reported in the JSON
                results["polls"][op.bl_idname] = repr(exc)
        results["preview_icon"] = bpy.data.images[st.jobs[0].preview_outline].preview.icon_id
        print("RESULT " + json.dumps(results), flush=True)
        sys.stderr.flush()
        os._exit(0)

    bpy.context.window_manager.popover(draw)
    print("RESULT " + json.dumps({"drawn": [], "errors": ["the popover did not call its draw function"]}), flush=True)


if __name__ == "__main__":
    main()
