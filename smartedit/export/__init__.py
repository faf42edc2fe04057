"""Export a diffusers inpainting pipeline into a Triton model repository (``smartedit.export``).

``python -m smartedit.export --help`` is the command; the modules each do one job:
``pipeline_loader`` (folder or hub id), ``onnx_export`` (graphs), ``verify`` (ONNX vs PyTorch),
``tensorrt`` (FP16 engines), ``repository`` (the model repository for a runtime profile).
"""
