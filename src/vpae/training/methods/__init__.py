"""Training methods, one file each, registered by name (vpae.registry): V-PAE (vpae.py) and the paper's comparison
methods (Table 1): dmd2.py, md.py, lcm.py, pcm.py, dcm.py, add.py, apt.py, and the public anchors ladd.py, rcm.py.
base.py holds what a method and a phase are; pretrain.py the toy teacher's flow-matching phase. Importing this
package registers them all.
"""

from vpae.training.methods import add, apt, dcm, dmd2, ladd, lcm, md, pcm, rcm, vpae  # noqa: F401  (registration)
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update

__all__ = ["Method", "OptimizerSpec", "Phase", "Update"]
