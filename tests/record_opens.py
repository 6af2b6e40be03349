"""Runs a module as ``__main__`` and records every file it opens (a test helper, not a test).

    python -m disco_jax.launch --nodes 2 -- record_opens OUT experiments.infer --bundles B

Python's audit hook sees every ``open`` made from Python (numpy's ``np.load``
included); each process writes the absolute paths, one per line, to
``OUT-node{i}.txt`` when the module ends.
"""

import os
import runpy
import sys


def main() -> None:
    out, module, *argv = sys.argv[1:]
    opened = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            opened.append(os.path.abspath(os.fsdecode(args[0])))

    sys.addaudithook(hook)
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        import jax

        with open(f"{out}-node{jax.process_index()}.txt", "w") as record:
            record.write("\n".join(opened) + "\n")


if __name__ == "__main__":
    main()
