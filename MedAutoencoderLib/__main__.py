"""``python -m MedAutoencoderLib``: the command line (see :mod:`MedAutoencoderLib.cli.commands`), in a process of its own,
so the allocator is set for it (:mod:`MedAutoencoderLib.runtime.allocator`)."""
import sys

from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse

keep_freed_memory_for_reuse()
try:
    from MedAutoencoderLib.cli.commands import main
    from MedAutoencoderLib.training.distributed import end_launched_process
except KeyboardInterrupt:  # Ctrl-C while torch, MONAI and SimpleITK load: nothing was done, nothing to show
    print("cancelled: interrupted (Ctrl-C)", file=sys.stderr)
    raise SystemExit(130) from None  # the command line's exit status when cancelled (cli.exit_codes.EXIT_CANCELLED)
code = main()
end_launched_process(code)  # under torchrun: ends here
raise SystemExit(code)
