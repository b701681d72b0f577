"""Memory-mapped safetensors: tensors that live in the file until they are used.

`map_safetensors(path)` returns every tensor of a safetensors file as a view of a private
(copy-on-write) memory map of it: nothing is read when the file is opened, the pages of a
tensor are read from disk (into the page cache, which the kernel can drop again) the first time
they are touched, and writing to a tensor copies only the pages written, never the file. Loading
a dictionary with `load_state_dict(..., assign=True)` from these tensors makes them its
parameters, so a transcoder set is never held twice (file bytes and parameters) and the decoder
rows of features that never fire are never read.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError

# safetensors dtype codes (the format's header spelling)
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def map_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Return `{name: tensor}` of the safetensors file `path`, each a view of a copy-on-write
    memory map (see module docstring); raise `SparseCircuitsError` for a corrupt file."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        (header_len,) = struct.unpack("<Q", mapped[:8])
        header = json.loads(mapped[8 : 8 + header_len])
    except (OSError, ValueError, struct.error) as exc:
        raise SparseCircuitsError(
            f"cannot read {path} ({exc}); the file is corrupt, re-save the dictionary"
        ) from None
    start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        begin, end = info["data_offsets"]
        if dtype is None or start + end > len(mapped):
            raise SparseCircuitsError(
                f"cannot read {path}: tensor {name} has dtype {info.get('dtype')} or runs past "
                "the end of the file; re-save the dictionary"
            )
        count = (end - begin) // dtype.itemsize
        flat = (
            torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin)
            if count
            else torch.zeros(0, dtype=dtype)
        )
        tensors[name] = flat.view(info["shape"])
    return tensors
