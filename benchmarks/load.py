"""Cold (GGUF → safetensors conversion) vs warm (cache) load of the embedded model.

Prints both times and the ratio. Target: warm ≥ 10× faster than cold. Uses a throwaway cache
folder so the cold load is really cold.
"""

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LABKIT_CACHE"] = cache
        from labkit.models import load_model

        t0 = time.perf_counter()
        load_model()
        cold = time.perf_counter() - t0
        warm_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            load_model()
            warm_times.append(time.perf_counter() - t0)
        warm = min(warm_times)
    print(f"cold load (GGUF, converts once): {cold:6.1f} s")
    print(f"warm load (safetensors cache):   {warm:6.2f} s  (best of 3)")
    print(f"ratio cold/warm: {cold / warm:.0f}x  (target >= 10x: {'met' if cold / warm >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
