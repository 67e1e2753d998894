"""``python -m circuitsteer.cli``: the command line."""

from circuitsteer.cli import main

if __name__ == "__main__":
    main()
