"""FitChat's pure core: plain functions over dataclasses. No Gradio, torch, llama_cpp, NVML,
environment reads or globals; adapters in ``services`` and ``backends`` feed it data."""
