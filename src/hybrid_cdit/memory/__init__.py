"""Long-term memory: per-sample buffers, pose-based retrieval, pose utilities and the
``MemoryContext`` a model attends to.

This package knows nothing of models, blocks or attention: it works on plain tensors.
"""

from .buffer import MemoryBuffer
from .context import MemoryContext
from .fov import FovParams, fov_scores, fov_select
from .fusion import fuse_odometry
from .headings import heading_offsets, refine_headings
from .loops import close_loops, measure_loops
from .policies import (
    WRITE_POLICIES,
    CoveragePolicy,
    WritePolicy,
    check_write_policy,
    view_distance,
)
from .posegraph import pose_graph
from .poses import (
    POSE_DIMS,
    check_pose,
    compose_pose,
    heading_vector,
    minecraft_to_pose5,
    pose_positions,
    poses_from_actions,
    relative_pose,
    to_pose5,
    wrap_angle,
)
from .rays import (
    alignment_softening,
    camera_rotation,
    patch_directions,
    plucker_rays,
    ray_angle_std,
)
from .refiner import SlotPoseRefiner, refine_poses, relative_pose_loss
from .retrieval import build_context, gather_slots, retrieve, select_memory
from .scores import STRATEGIES, Strategy, check_strategy, distance_scores, pose_scores
from .selection import Selection, select_top_k

__all__ = [
    "POSE_DIMS",
    "STRATEGIES",
    "WRITE_POLICIES",
    "CoveragePolicy",
    "FovParams",
    "MemoryBuffer",
    "MemoryContext",
    "Selection",
    "SlotPoseRefiner",
    "Strategy",
    "WritePolicy",
    "alignment_softening",
    "build_context",
    "camera_rotation",
    "check_pose",
    "check_strategy",
    "check_write_policy",
    "close_loops",
    "compose_pose",
    "distance_scores",
    "fov_scores",
    "fov_select",
    "fuse_odometry",
    "gather_slots",
    "heading_offsets",
    "heading_vector",
    "measure_loops",
    "minecraft_to_pose5",
    "patch_directions",
    "plucker_rays",
    "pose_graph",
    "pose_positions",
    "pose_scores",
    "poses_from_actions",
    "ray_angle_std",
    "refine_headings",
    "refine_poses",
    "relative_pose",
    "relative_pose_loss",
    "retrieve",
    "select_memory",
    "select_top_k",
    "to_pose5",
    "view_distance",
    "wrap_angle",
]
