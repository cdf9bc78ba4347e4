"""The `allspark` subcommands, one module each: `register(sub)` adds its arguments, `run(args)` makes a thin call
into the library and returns the exit status."""
from allspark.commands import check_data, convert, demo, evaluate, export, predict, presets, splits, train, viz

SUBCOMMANDS = (check_data, splits, train, evaluate, presets, demo, predict, viz, export, convert)  # the help's order
