"""The `allspark` subcommands, one module each: `register(sub)` adds its arguments, `run(args)` parses what is left
and calls into the library, returning the exit status.

COMMANDS names every subcommand with its module and one-line help, so the parser imports only the module of the
command that runs: `allspark --help` and the light commands never load torch."""

COMMANDS = {  # name: (module under allspark.commands, help in `allspark --help`), in the help's order
    "check-data": ("check_data", "read every listed file and report each problem"),
    "splits": ("splits", "make labeled/unlabeled lists from a training list"),
    "train": ("train", "train (or resume) a run"),
    "pretrain": ("pretrain", "pretrain an encoder on your own images (masked image modelling or distillation)"),
    "eval": ("evaluate", "evaluate a checkpoint: mIoU and per-class IoU"),
    "presets": ("presets", "list the shipped config presets"),
    "demo": ("demo", "synthetic data, SupBaseline vs AllSpark on CPU in a few minutes"),
    "predict": ("predict", "segment images with a trained model"),
    "suggest": ("suggest", "rank the unlabeled images: which to label next"),
    "import-labels": ("import_labels", "masks drawn in Label Studio or CVAT into the dataset and its splits"),
    "viz": ("viz", "figures: features, grouping, memory, curves, confusion"),
    "export": ("export", "export a trained model to ONNX (dynamic height/width)"),
    "convert-official": ("convert", "convert a checkpoint of the authors' release into our weights format"),
}
