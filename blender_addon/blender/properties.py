"""The add-on's state on the WindowManager: the input, the job settings, the server status and the job list.

WindowManager properties are never written into the .blend file, so a job's
progress never ends up in a saved scene. They are also emptied when another
file is loaded; the job list is therefore only a view of the add-on's job
file (``jobfile``), which the bridge rebuilds it from on file load, on
Connect and at start-up.
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
    ("IMAGE_EDITOR", "Image Editor", "The image shown in the open Image Editor (when several show different "
                                     "images, use Image, or Generate from the Image Editor's own sidebar)"),
    ("FILE", "File", "An image file on disk"),
    ("DATABLOCK", "Image", "Any image datablock of this .blend (loaded, packed, generated or the Render Result)"),
    ("RENDER", "Render", "The last render (Render Result)"),
)

SHADING = (
    ("KEEP", "As Exported", "Keep the exported normals"),
    ("SMOOTH", "Smooth", "Shade smooth"),
    ("FLAT", "Flat", "Shade flat"),
)

ACTIVE_STATES = ("sending", "queued", "running", "cancelling", "downloading")
"""States in which a job still needs the network (its row shows Cancel, not Import)."""
FINISHED_STATES = ("done", "imported", "failed", "cancelled", "unsent")


class MPOD123_StageProgress(bpy.types.PropertyGroup):
    stage: StringProperty(name="Stage")
    step: IntProperty(name="Step", min=0)
    total: IntProperty(name="Total", min=0)
    eta_s: FloatProperty(name="ETA", description="Estimated seconds left in this stage", default=-1.0)
    done: BoolProperty(name="Done")


class MPOD123_ImportOptions:
    """The import options, shared by the preferences (defaults), the panel (per-job override) and each job."""

    rest_on_ground: BoolProperty(
        name="Rest on the Ground", default=True,
        description="Put the origin at the bottom of the object and the bottom at the target location")
    target_height: FloatProperty(
        name="Height", default=0.0, min=0.0, soft_max=100.0, unit="LENGTH", subtype="DISTANCE",
        description="Scale the result to this height in scene units (0: keep the exported size, about 1)")
    target_faces: IntProperty(
        name="Face Budget", default=0, min=0, max=10_000_000,
        description="Have the backend simplify the mesh to at most this many faces (0: the preset's own budget, "
                    "Draft 5,000, Fast 20,000, Paper 50,000)")
    shading: EnumProperty(name="Shading", items=SHADING, default="SMOOTH",
                          description="Shade the result smooth or flat, or keep the exported normals")
    clear_custom_normals: BoolProperty(
        name="Clear Custom Normals", default=True,
        description="Remove the exported custom split normals so that Blender computes them (smaller, editable)")


IMPORT_OPTION_NAMES = ("rest_on_ground", "target_height", "target_faces", "shading", "clear_custom_normals")


class MPOD123_Job(MPOD123_ImportOptions, bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job ID")
    name: StringProperty(name="Name", description="The object name, from the input image")
    state: StringProperty(name="State", default="queued")
    message: StringProperty(name="Message", description="The last error or notice for this job")
    activity: StringProperty(name="Activity", description="What the network is doing for this job now")
    last_seq: IntProperty(name="Last event", min=0)
    stages: CollectionProperty(type=MPOD123_StageProgress)
    preview_matte: StringProperty(name="Matte", description="Blender image with the cut-out the model was given")
    preview_outline: StringProperty(name="Stage-1 preview", description="Blender image with the latest outline preview")
    preview_detail: StringProperty(name="Stage-2 preview", description="Blender image with the latest detail preview")
    result_path: StringProperty(name="Result", subtype="FILE_PATH")
    result_size: IntProperty(name="Result size", min=0)
    object_name: StringProperty(name="Object")
    texture_target: StringProperty(name="Textured object", description="Texture Selected Mesh: the object it paints")
    location: FloatVectorProperty(name="Location", size=3, subtype="TRANSLATION",
                                  description="Where the result is placed (the 3D cursor at Generate)")
    collection: StringProperty(name="Collection", default="Generated", description="Where the result goes")
    preset: StringProperty(name="Preset")
    seed: IntProperty(name="Seed", min=0)
    steps: IntProperty(name="Max Steps", min=0)
    input_label: StringProperty(name="Input", description="Where the input image came from")
    input_path: StringProperty(name="Input copy", subtype="FILE_PATH",
                               description="The add-on's copy of the input image (to send again or recall)")
    prompt: StringProperty(name="Prompt", description="Text to 3D: the prompt (text_input.py)")
    kind: StringProperty(name="Kind", description="'candidates' for a job that draws candidate images; '' for a mesh")
    candidates: IntProperty(name="Candidates", min=0, description="Candidate images a candidates job draws")


class MPOD123_State(MPOD123_ImportOptions, bpy.types.PropertyGroup):
    # input
    source: EnumProperty(name="Source", items=SOURCES, default="IMAGE_EDITOR",
                         description="Where the input image comes from")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="The input image file")
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The input image datablock")
    # job
    preset: EnumProperty(name="Preset", items=PRESETS, default="fast", description="Quality and speed of the job")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed: the same image and seed give the same result")
    random_seed: BoolProperty(name="Random Seed", default=False,
                              description="Pick a new seed for every job (the job remembers it, so a result can be recalled)")
    steps: IntProperty(name="Max Steps", default=0, min=0,
                       description="Cap every stage at this many steps for a quick look (0: the preset's own)")
    collection: StringProperty(name="Collection", default="Generated", description="The collection results go into")
    override_import: BoolProperty(name="Override Import Options", default=False,
                                  description="Use the options below for the next jobs instead of the preferences")
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
    """The row of a job (a scan: indexing a collection by number is itself a scan, so never loop over
    indices). To look up many, build :func:`rows` once."""
    for job in state(context).jobs:
        if job.job_id == job_id:
            return job
    return None


def rows(context) -> dict[str, MPOD123_Job]:
    """Every row by job id, in one scan; valid until a row is added or removed."""
    return {job.job_id: job for job in state(context).jobs}


def row_for(collection, key: str, value):
    """The item of a collection property whose ``key`` is ``value``; a new one with it set when there is none."""
    for row in collection:
        if getattr(row, key) == value:
            return row
    row = collection.add()
    setattr(row, key, value)
    return row


def active_job(context) -> MPOD123_Job | None:
    st = state(context)
    if not st.jobs:
        return None
    return st.jobs[min(st.active_job, len(st.jobs) - 1)]
