"""``python -m backprop_gpu`` is the ``backprop-gpu`` command."""

from .cli import main

raise SystemExit(main())
