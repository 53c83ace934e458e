"""The built-in world: the addition task's tokenizer, a teacher and students.

Small, committed and reproducible, so the demo, the tests and the quality benchmark need no
model hub; all are ordinary `save_pretrained` folders (worlds/README.md lists them).

    builtin_world_dir()            the committed world (worlds/builtin), or $TROPD_WORLD_DIR
    load_manifest(world_dir)       its world.json: task, tokenizer, models, eval accuracies
    world_task(world_dir)          the AdditionTask the world was built and measured on
    build_world(out_dir, seed)     rebuild it from scratch (python -m tropd.trainer.world)
"""

from tropd.trainer.world.build import build_world, default_spec, main
from tropd.trainer.world.manifest import (
    WorldManifest,
    builtin_world_dir,
    load_manifest,
    world_task,
)
from tropd.trainer.world.tokenizer import build_tokenizer

__all__ = [
    "WorldManifest",
    "build_tokenizer",
    "build_world",
    "builtin_world_dir",
    "default_spec",
    "load_manifest",
    "main",
    "world_task",
]
