"""`python -m capfan ...`: the same as the `capfan` command."""
from capfan.cli import main

main(prog_name="capfan")
