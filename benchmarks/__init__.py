"""Benchmarks: run as python -m benchmarks.NAME from the repository root."""


def add_xla_defaults_option(parser) -> None:
    """``--xla-defaults``: the benchmark's one switch for XLA:CPU's flags."""
    parser.add_argument("--xla-defaults", action="store_true",
                        help="keep XLA:CPU's default fusions (without it the run adds "
                             "disco_jax.mesh.FAST_CPU_FLAGS to XLA_FLAGS)")


def apply_xla_flags(args) -> None:
    """Adds :data:`disco_jax.mesh.FAST_CPU_FLAGS` unless ``--xla-defaults``; call it
    before jax computes anything (processes started later inherit it)."""
    if not args.xla_defaults:
        from disco_jax.mesh import use_fast_cpu_flags

        use_fast_cpu_flags()
