"""The `vna` command line: one module per subcommand, each of the same shape.

Each module has NAME, HELP, `configure(parser)` and `main(args, settings) -> int`.
"""
