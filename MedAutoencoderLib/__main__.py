"""``python -m MedAutoencoderLib``: the command line (see :mod:`MedAutoencoderLib.cli`)."""
from MedAutoencoderLib.cli import main

raise SystemExit(main())
