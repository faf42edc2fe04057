"""The Python models' code, one module per model: each ``model_repository/<name>/.../model.py`` is a
shim that imports its ``TritonPythonModel`` from here, so the code is a module like any other
(imported by tests, checked for import circles) and ships with the package."""
