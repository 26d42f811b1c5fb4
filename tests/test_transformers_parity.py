"""Parity with an implementation we did not write: transformers' deepseek_v4 (an eager port).

A tiny random DeepseekV4ForCausalLM with a schedule covering all three layer types (SWA + hash routing,
CSA, HCA, CSA), saved in transformers' own module naming, run by `fp4check chain --backend reference
--ref-mode exact`; every layer's residual streams and the logits are compared with transformers' forward.

Deliberate differences, and how the test stands with them:
- DeepSeek's reference keeps the residual streams in bf16 between layers; transformers keeps the model
  dtype. transformers runs here in float32 on the bf16-stored weights, with the streams rounded to bf16
  at each layer's entry (a pre-hook), so both sides carry the same storage precision.
- DeepSeek's reference stores q, kv and the pooled compressor entries in bf16 (fp4check follows it);
  transformers in float32 does not. This rounding is the residual difference (cosine ~1 - 1e-5 per layer).
- DeepSeek rotates the indexer's q and keys by a Hadamard matrix (cancels in q.k) and FP4-simulates the
  indexer keys; neither side does here. The FP8 KV simulation is off in exact mode; transformers has none.
- Top-k ties: fp4check breaks exact ties to the lower index; transformers' torch.topk has no documented
  order. With 16 indexer heads exact ties (all heads' ReLU at 0) do not occur at the top-k boundary here.
- Router weights: DeepSeek applies the routing weight before w2, transformers after; equal in exact math.
The model is random, so discrete decisions (routing, top-k) amplify bf16-level differences along depth;
the weights are scaled like a trained model's (moderate attention logits, small per-layer updates) so
that the chain stays comparable over four layers.
"""

import json

import pytest
import torch
from conftest import run_cli

pytest.importorskip("transformers.models.deepseek_v4")

SEQ = 300  # > 128: two C128 entries, 75 C4 entries


def _model():
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4ForCausalLM

    yarn = {
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 65536,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    cfg = DeepseekV4Config(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        head_dim=512,
        q_lora_rank=64,
        vocab_size=512,
        n_routed_experts=16,
        num_experts_per_tok=6,
        moe_intermediate_size=64,
        intermediate_size=64,
        o_groups=2,
        o_lora_rank=32,
        compress_ratios=[0, 4, 128, 4, 0],
        num_hash_layers=1,
        qk_rope_head_dim=64,
        rope_parameters=yarn,
        rope_theta=10000.0,
        compress_rope_theta=160000.0,
        index_n_heads=16,
        index_head_dim=128,
        index_topk=48,
        num_nextn_predict_layers=0,
        sliding_window=128,
    )
    torch.manual_seed(0)
    m = DeepseekV4ForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("kv_norm.weight"):  # moderate attention logits
                p.copy_(0.3 * (1 + 0.1 * torch.randn(p.shape, generator=g)))
            elif n.endswith("norm.weight") or "layernorm" in n:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:  # output projections small: a layer updates the streams, it does not replace them
                small = 0.1 if "experts.down_proj" in n else 0.25 if ("o_b_proj" in n or "down_proj" in n) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5 * small)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for n, b in m.named_buffers():
            if n.endswith("tid2eid"):
                b.copy_(torch.stack([torch.randperm(16, generator=g)[:6] for _ in range(b.shape[0])]))
            elif n.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return cfg, m.to(torch.bfloat16), g


def _cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def test_chain_matches_transformers_layer_by_layer(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg, model, g = _model()
    ck = tmp_path / "hf"
    ck.mkdir()
    cfg.save_pretrained(ck)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    assert "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight" in tensors
    assert "model.layers.0.mlp.experts.gate_up_proj" in tensors  # fused experts, transformers' naming
    save_file(tensors, str(ck / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((ck / "config.json").read_text())["layer_types"][1] == "compressed_sparse_attention"

    model = model.float().eval()
    ids = torch.randint(0, cfg.vocab_size, (SEQ,), generator=g)
    streams = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(
            lambda mod, a, kw: ((a[0].to(torch.bfloat16).float(),) + a[1:], kw), with_kwargs=True
        )
        layer.register_forward_hook(lambda mod, i, o: streams.append(o.detach()[0]))
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0]

    dump = tmp_path / "dump"
    r = run_cli(
        "chain",
        "--checkpoint",
        str(ck),
        "--backend",
        "reference",
        "--ref-mode",
        "exact",
        "--tokens",
        ",".join(map(str, ids.tolist())),
        "--dump",
        str(dump),
        "--out",
        str(tmp_path / "run"),
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    ours = load_file(str(dump / "reference.safetensors"))
    for n, theirs in enumerate(streams):
        assert _cos(ours[f"layers.{n}.streams"], theirs) >= 0.999, n
    assert _cos(ours["logits"], logits) >= 0.999
    assert float((ours["logits"].argmax(-1) == logits.argmax(-1)).float().mean()) >= 0.95
    # and the comparison bites: a layer's streams are not interchangeable with the next one's
    assert _cos(ours["layers.2.streams"], streams[3]) < 0.999
