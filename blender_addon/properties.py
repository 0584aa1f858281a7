"""The add-on's state on the WindowManager: the input, the job settings, the server status and every job.

WindowManager properties live as long as the Blender session and are never
written into the .blend file, so a job's progress never ends up in a saved
scene. (Jobs outlive the session on the backend; "Import result" finds them
again.)
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

PRESETS = (
    ("paper", "Paper", "The paper's settings: 5000 + 5000 steps, best quality, slowest"),
    ("fast", "Fast", "Fewer steps and smaller renders: a usable mesh in a fraction of the time"),
    ("draft", "Draft", "A quick look at the shape: low resolution, few steps"),
)

SOURCES = (
    ("IMAGE_EDITOR", "Image Editor", "The image shown in an open Image Editor"),
    ("FILE", "File", "An image file on disk"),
    ("DATABLOCK", "Image", "An image already loaded in this .blend"),
)


class MPOD123_StageProgress(bpy.types.PropertyGroup):
    stage: StringProperty(name="Stage")
    step: IntProperty(name="Step", min=0)
    total: IntProperty(name="Total", min=0)
    eta_s: FloatProperty(name="ETA", description="Estimated seconds left in this stage", default=-1.0)
    done: BoolProperty(name="Done")


class MPOD123_Job(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job ID")
    name: StringProperty(name="Name", description="The object name, from the input image")
    state: StringProperty(name="State", default="queued")
    message: StringProperty(name="Message", description="The last error or notice for this job")
    last_seq: IntProperty(name="Last event", min=0)
    stages: CollectionProperty(type=MPOD123_StageProgress)
    preview_outline: StringProperty(name="Stage-1 preview", description="Blender image with the latest outline preview")
    preview_detail: StringProperty(name="Stage-2 preview", description="Blender image with the latest detail preview")
    result_path: StringProperty(name="Result", subtype="FILE_PATH")
    object_name: StringProperty(name="Object")
    location: FloatVectorProperty(name="Location", size=3, subtype="TRANSLATION",
                                  description="Where the result is placed (the 3D cursor at Generate)")


class MPOD123_State(bpy.types.PropertyGroup):
    # input
    source: EnumProperty(name="Source", items=SOURCES, default="IMAGE_EDITOR",
                         description="Where the input image comes from")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="The input image file")
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The input image datablock")
    # job
    preset: EnumProperty(name="Preset", items=PRESETS, default="fast", description="Quality and speed of the job")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed: the same image and seed give the same result")
    steps: IntProperty(name="Max Steps", default=0, min=0,
                       description="Cap every stage at this many steps for a quick look (0: the preset's own)")
    # server
    connection: StringProperty(name="Connection", default="not connected")
    server_name: StringProperty(name="Server")
    server_version: StringProperty(name="Version")
    server_gpu: StringProperty(name="GPU")
    server_message: StringProperty(name="Server message", description="The last connection error, in words")
    local_pid: IntProperty(name="Local backend PID", default=0)
    # jobs
    jobs: CollectionProperty(type=MPOD123_Job)
    active_job: IntProperty(name="Active job", default=0, min=0)
    last_error: StringProperty(name="Last error")


CLASSES = (MPOD123_StageProgress, MPOD123_Job, MPOD123_State)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.mpod123 = PointerProperty(type=MPOD123_State)


def unregister() -> None:
    del bpy.types.WindowManager.mpod123
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)


def state(context=None) -> MPOD123_State:
    return (context or bpy.context).window_manager.mpod123


def find_job(context, job_id: str) -> MPOD123_Job | None:
    for job in state(context).jobs:
        if job.job_id == job_id:
            return job
    return None


def active_job(context) -> MPOD123_Job | None:
    st = state(context)
    if not st.jobs:
        return None
    return st.jobs[min(st.active_job, len(st.jobs) - 1)]
