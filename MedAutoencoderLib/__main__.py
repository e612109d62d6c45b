"""``python -m MedAutoencoderLib``: the command line (see :mod:`MedAutoencoderLib.cli.commands`), in a process of its own,
so the allocator is set for it (:mod:`MedAutoencoderLib.runtime.allocator`); under ``torchrun`` it ends without
Python's finalization (:func:`MedAutoencoderLib.runtime.launch.end_launched_process`)."""
import sys
import traceback

from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse
from MedAutoencoderLib.runtime.launch import end_launched_process, launched_by_torchrun

keep_freed_memory_for_reuse()
try:
    from MedAutoencoderLib.cli.commands import main
except KeyboardInterrupt:  # Ctrl-C while torch, MONAI and SimpleITK load: nothing was done, nothing to show
    print("cancelled: interrupted (Ctrl-C)", file=sys.stderr)
    raise SystemExit(130) from None  # the command line's exit status when cancelled (cli.exit_codes.EXIT_CANCELLED)
try:
    code = main()
except Exception:  # a defect: its traceback, as Python would print it, and under torchrun the same ending
    if not launched_by_torchrun():
        raise
    traceback.print_exc()
    code = 1
end_launched_process(code)
raise SystemExit(code)
