"""`python -m pgolf ...` (and `torchrun -m pgolf train ...`) run the CLI."""

from pgolf.cli import main

if __name__ == "__main__":
    main()
