"""The argus command line: parses arguments and calls the parts."""
