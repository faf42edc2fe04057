"""The Python models' code, one module per model: each ``model_repository/<name>/.../model.py`` is a
shim that imports its ``TritonPythonModel`` from here, so the code is a module like any other
(imported by tests, checked for import circles) and ships with the package."""

import atexit
import faulthandler
import signal

# A model process that crashes while serving (SIGSEGV, SIGABRT) writes every thread's Python stack to
# its stderr, which is tritonserver's log: without it a stub's death leaves only "Stub process is not
# healthy". Disabled as the process exits: a fault in the stub's own teardown, after the model has been
# unloaded, harms no request (each model releases what would fault there in its finalize).
faulthandler.enable(all_threads=True)
atexit.register(faulthandler.disable)
# `kill -USR1 <pid>` writes a model process's Python stacks to the log too, and it goes on: what a
# stuck edit waits on, without stopping the server.
faulthandler.register(signal.SIGUSR1, all_threads=True)
