"""The ``smartedit`` command: export, serve, demo, loadtest, drain."""
