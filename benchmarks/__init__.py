"""Benchmarks: run as python -m benchmarks.NAME from the repository root."""


def add_xla_defaults_option(parser) -> None:
    """``--xla-defaults``: the benchmark's one switch for XLA:CPU's flags."""
    parser.add_argument("--xla-defaults", action="store_true",
                        help="keep XLA:CPU's default fusions (without it a float32 run "
                             "adds disco_jax.mesh.FAST_CPU_FLAGS to XLA_FLAGS; a bfloat16 "
                             "run keeps the defaults either way)")


def apply_xla_flags(args) -> None:
    """Adds :data:`disco_jax.mesh.FAST_CPU_FLAGS` unless ``--xla-defaults`` or the
    run computes in bfloat16 (:func:`disco_jax.mesh.use_fast_cpu_flags`); call it
    before jax computes anything (processes started later inherit it)."""
    if not args.xla_defaults:
        from disco_jax.mesh import use_fast_cpu_flags

        use_fast_cpu_flags(getattr(args, "compute_dtype", None))
