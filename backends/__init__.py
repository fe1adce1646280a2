"""Model runtimes behind one protocol (``backends.base.Backend``).

The UI process imports only ``base``, ``manager`` and ``worker_client``; the runtimes themselves
(llama_cpp, transformers) are imported inside the worker process.
"""
