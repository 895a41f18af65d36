"""Application services: the commands' work, with no argument parsing and no rendering."""
