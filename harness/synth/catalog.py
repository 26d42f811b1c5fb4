"""What `fp4check synth` offers, by name (kept free of torch so the CLI starts fast)."""

FORMATS = ("modelopt", "compressed-tensors", "deepseek", "bf16")
NAMINGS = ("deepseek", "transformers")

DEFECTS = {
    "bad-input-scale": "activation input scale 3977.6x too small, as the checkpoint input_scale that turned "
    "activations into NaN in the seeds (NVFP4 families)",
    "nan-weight": "a NaN in weight[0, 0] (NVFP4/MXFP4: before quantization, stored as that block's NaN scale; "
    "FP8: the 0x7F byte)",
    "inf-scale": "the stored global weight scale is +inf (NVFP4: weight_scale_2 or weight_global_scale)",
    "e4m3-nan-code": "an e4m3 NaN byte 0x7F in block scale [0, 0] (NVFP4) or weight byte [0, 0] (FP8)",
    "w1-w3-scale-mismatch": "w3 encoded with a global scale 16x away from w1's: valid, but wrong for a "
    "runner that shares one scale between w1 and w3 (NVFP4 experts)",
    "zero-global-scale": "the stored global weight scale is 0 (NVFP4)",
}
