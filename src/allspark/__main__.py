"""`python -m allspark` (and `torchrun -m allspark train ...`) run the CLI."""
from allspark.cli import main

if __name__ == "__main__":
    main()
