"""``python -m MedAutoencoderLib``: the command line (see :mod:`MedAutoencoderLib.cli`), in a process of its own,
so the allocator is set for it (:mod:`MedAutoencoderLib.allocator`)."""
from MedAutoencoderLib.allocator import keep_freed_memory_for_reuse
from MedAutoencoderLib.cli import main

keep_freed_memory_for_reuse()
raise SystemExit(main())
