class ListConfig(list):
    """Never instantiated here: configs reach UNetModel as plain lists."""
