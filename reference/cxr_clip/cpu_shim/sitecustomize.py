"""The one runtime patch the CPU run needs (put on PYTHONPATH for ``train.py`` only; CXR-CLIP's files are unchanged).

``cxrclip/trainer.py`` shows GPU telemetry in its progress bars, unconditionally::

    "CUDA-Mem": f"{torch.cuda.memory_usage(device)}%", "CUDA-Util": f"{torch.cuda.utilization(device)}%"

(``train()`` at every 30th step, starting with the first; ``validate()`` at every 10th and the last batch). Without
an NVIDIA driver these raise ``ModuleNotFoundError: nvidia-ml-py does not seem to be installed or it can't be
imported.`` (and with ``pynvml`` installed, an NVML error), so a CPU run stops at its first step. No Hydra override
reaches them. Here, only when CUDA is unavailable, both report 0; they feed nothing but the progress-bar text.
"""

import torch

if not torch.cuda.is_available():

    def _no_gpu_percent(device=None) -> int:
        return 0

    torch.cuda.memory_usage = _no_gpu_percent
    torch.cuda.utilization = _no_gpu_percent
