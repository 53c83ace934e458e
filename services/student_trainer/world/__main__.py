"""`python -m tropd.trainer.world --help`: build the built-in world (see build.py)."""

from tropd.trainer.world.build import main

raise SystemExit(main())
