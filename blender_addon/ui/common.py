"""What the operators share: poll() with a reason, the address check, a new job's import options, and the
base classes that turn an AddonError into the operator's report."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from .. import session
from ..blender.preferences import prefs
from ..blender.properties import IMPORT_OPTION_NAMES, active_job, find_job, state
from ..core.errors import AddonError


def poll_reason(cls, reason: str) -> bool:
    """poll(): False with ``reason`` shown in the button's tooltip, or True when ``reason`` is empty."""
    if reason:
        cls.poll_message_set(reason)
        return False
    return True


def has_jobs(context) -> str:
    return "" if state(context).jobs else "no jobs in the list"


def address_problem(context) -> str:
    return session.online_blocker(prefs(context).address)


def job_import_options(context) -> dict:
    """The import options for a new job: the panel's override, else the preferences."""
    src = state(context) if state(context).override_import else prefs(context)
    return {k: getattr(src, k) for k in IMPORT_OPTION_NAMES}


def run_options(context, **extra) -> dict:
    """A new job's preset, seed and steps from the panel (steps 0: the preset's), plus ``extra``."""
    st = state(context)
    options = {"preset": st.preset, "seed": int(st.seed), **extra}
    if st.steps > 0:
        options["steps"] = int(st.steps)
    return options


def submit_at_cursor(context, data: bytes, name: str, options: dict, label: str, views: tuple | None = None) -> str:
    """Queue a job placed at the 3D cursor, into the panel's collection, with the import options for a new job;
    the panel's last error is cleared. Returns the job id."""
    st = state(context)
    job_id = session.submit(context, data, name, options, tuple(context.scene.cursor.location), collection=st.collection,
                            import_options=job_import_options(context), input_label=label, views=views)
    st.last_error = ""
    return job_id


def max_image_bytes() -> int | None:
    """The connected backend's limit for one image (None: its default, until a backend said hello)."""
    return session.current().max_image_bytes


class AddonOperator(bpy.types.Operator):
    """An operator whose ``run`` may raise AddonError: reported as an error, on the panel and in the status bar."""

    def run(self, context):  # pragma: no cover - overridden
        raise NotImplementedError

    def execute(self, context):
        try:
            return self.run(context) or {"FINISHED"}
        except AddonError as exc:
            state(context).last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}


class JobOperator(AddonOperator):
    job_id: StringProperty(name="Job ID", description="The job (empty: the selected job in the list)")

    def job(self, context):
        job = find_job(context, self.job_id) if self.job_id else active_job(context)
        if job is None:
            raise AddonError("no such job in the list")
        return job
