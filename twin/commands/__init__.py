"""The ``twin`` command line: one module per command, ``cli`` assembles them."""
