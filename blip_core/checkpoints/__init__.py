"""Reading and writing checkpoints, one concern a module:

- ``sources``: lazy tensor sources (safetensors, .pth via ``torch.load(weights_only=True)``), JSON;
- ``keymaps``: the BLIP family's foreign key names -> ours, and the keys an inference model ignores;
- ``configs``: our config inferred from tensor shapes or read from a transformers ``config.json``;
- ``vocab``: a checkpoint's vocabulary file;
- ``opening``: format detection, ``open_checkpoint`` (config + lazy tensors, nothing loaded);
- ``fill``: the one fill-from-tensors loop, ``materialize``, ``load_model``;
- ``saving``: ``save`` (our format) and ``export_hf``;
- ``atomic``: the atomic-folder and atomic-file writers everything (training too) writes through;
- ``report``: ``LoadReport``, the account of every foreign key.

torch is imported where tensors are made, not with this package: the int8 runtime opens converted
graphs without torch.
"""

from blip_core.checkpoints.fill import load_model, materialize
from blip_core.checkpoints.opening import INT8_FORMAT, Checkpoint, open_checkpoint, restrict_tasks
from blip_core.checkpoints.report import LoadReport
from blip_core.checkpoints.saving import export_hf, save
from blip_core.checkpoints.sources import read_json

__all__ = ["INT8_FORMAT", "Checkpoint", "LoadReport", "export_hf", "load_model", "materialize", "open_checkpoint",
           "read_json", "restrict_tasks", "save"]
