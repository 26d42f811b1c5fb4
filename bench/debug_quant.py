import torch, sys
sys.path.insert(0, "tests")
from test_triton import _adversarial, BACKEND
from fp4check.kernels.emulated.moe import quantize_activation
from fp4check.references.nvfp4 import global_encode_scale
from fp4check.references.swizzle import unswizzle_128x4
from fp4check.references.e2m1 import unpack_e2m1
x = _adversarial(384, 1024)
g = global_encode_scale(x.float().nan_to_num(posinf=0).abs().amax())
want = quantize_activation(x, g); got = BACKEND.nvfp4_quantize(x, g)
ws = unswizzle_128x4(want.scales, 384, 64).view(torch.uint8); gs = unswizzle_128x4(got.scales, 384, 64).view(torch.uint8)
bad = (ws != gs).nonzero()
print("scale mismatches", len(bad), bad[:5].tolist(), [(int(ws[r, c]), int(gs[r, c])) for r, c in bad[:5].tolist()])
wc, gc = unpack_e2m1(want.packed), unpack_e2m1(got.packed)
badc = (wc != gc).nonzero()
print("code mismatches", len(badc), "g", float(g.value))
for r, c in badc[:8].tolist():
    print(r, c, float(x[r, c]), int(wc[r, c]), int(gc[r, c]), "scale", int(ws[r, c // 16]), int(gs[r, c // 16]))
