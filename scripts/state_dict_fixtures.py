"""Small PyTorch state-dict files in each form `torch.save` writes, for the reader tests
(tests/state_dicts.rs): the zip format (PyTorch >= 1.6) and the legacy stream format
(`_use_new_zipfile_serialization=False`, the format of torchvision's oldest weight URLs), with
float32, float64, float16 and int64 tensors, a tensor that is a view at an offset into a larger
storage, two tensors sharing one storage, and a scalar. The expected values go to
expected.json.

Run: python scripts/state_dict_fixtures.py  (needs torch; writes tests/fixtures/state_dicts/).
"""
import collections
import json
import os

import torch


def state_dict():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7.0
    sd = collections.OrderedDict()
    sd["features.0.weight"] = base
    sd["features.0.bias"] = base[1]  # a view at offset 4 of the same storage
    sd["head.weight"] = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    sd["head.half"] = torch.tensor([0.5, -2.0, 1024.0], dtype=torch.float16)
    sd["bn.num_batches_tracked"] = torch.tensor(17, dtype=torch.int64)
    sd["module.deep.denselayer3.norm.1.weight"] = torch.tensor([1.5, 2.5])
    return sd


def main():
    out = os.path.join(os.path.dirname(__file__), "../tests/fixtures/state_dicts")
    os.makedirs(out, exist_ok=True)
    sd = state_dict()
    torch.save(sd, os.path.join(out, "tiny_zip.pth"))
    torch.save(sd, os.path.join(out, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
    expected = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
            "values": v.double().flatten().tolist()}
        for k, v in sd.items()
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"torch": torch.__version__, "tensors": expected}, f, indent=1)
    for name in ["tiny_zip.pth", "tiny_legacy.pth"]:
        back = torch.load(os.path.join(out, name))
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    print("wrote", out)


if __name__ == "__main__":
    main()
