"""Issue 10, on the CPU: a PyTorch stand-in for transformers + fp_quant (a Llama forward in torch
whose FPQuantLinear is verify_consumers.fpq_rule(x) @ dqweight^T, weights from the case's fpq/
checkpoint), compared with fp4q's logits and dumped activation transforms by
verify_consumers.dumps_check. It shares fp4q's GEMM order (torch's CPU SGEMM is one fma chain
over k here) and has its own RMSNorm/RoPE/softmax; --f64 accumulates every Linear in float64
instead (another valid summation order). docs/issue10-notes.md (b) has the results.

  python3 tools/issue10_cpu_standin.py [--f64] [--root .device/consumers-h10/stories260K] CASE...

Needs torch and numpy (Debian's python3-torch 1.13 is enough: MXFP4 cases only, it has no
float8 for NVFP4's E4M3 scales) and the dumps of tools/make_consumer_dumps.sh."""
import sys, os, json, math, struct, types, importlib.util
import numpy as np
import torch
spec = importlib.util.spec_from_file_location('vc', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'verify_consumers.py'))
vc = importlib.util.module_from_spec(spec); spec.loader.exec_module(vc)

def load_st(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); base = 8 + n
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']; raw = b[base + s:base + e]
        if v['dtype'] == 'F32': a = np.frombuffer(raw, '<f4').reshape(v['shape']).copy(); t = torch.from_numpy(a)
        elif v['dtype'] == 'BF16': a = np.frombuffer(raw, '<u2').astype(np.uint32) << 16; t = torch.from_numpy(a.view('<f4').reshape(v['shape']).copy())
        else: continue
        out[k] = t
    return out

class Dtype:
    def __init__(s, v): s.value = v
class Cfg:
    def __init__(s, fmt): s.forward_dtype = Dtype(fmt); s.forward_method = 'abs_max'

class FPQuantLinear(torch.nn.Module):
    def __init__(s, W, H, gs, fmt):
        super().__init__(); s.dqweight = W; s.forward_hadamard_matrix = H; s.act_global_scale = gs; s.config = Cfg(fmt)
    def forward(s, x):
        xq = fwd_pq(x.reshape(-1, x.shape[-1]), s.forward_hadamard_matrix, s.act_global_scale, s.config.forward_dtype, 'abs_max')[0]
        return torch.nn.functional.linear(xq, s.dqweight).reshape(*x.shape[:-1], -1)

def fwd_pq(x, H, gs, dtype, method):
    return vc.fpq_rule(x, H, gs, dtype.value), None

fq = types.ModuleType('fp_quant'); fq.FPQuantLinear = FPQuantLinear
m1 = types.ModuleType('fp_quant.module'); m2 = types.ModuleType('fp_quant.module.pseudoquant_linear_fns')
m2.forward_pseudoquantize = fwd_pq
sys.modules.update({'fp_quant': fq, 'fp_quant.module': m1, 'fp_quant.module.pseudoquant_linear_fns': m2})

class Out: pass
class Llama(torch.nn.Module):
    def __init__(s, sd, cfg, fmt):
        super().__init__(); s.sd = sd; s.c = cfg; s.lin = torch.nn.ModuleDict()
        for k in sd:
            if k.endswith('.dqweight'):
                p = k[:-len('.dqweight')]
                s.lin[p.replace('.', '_')] = FPQuantLinear(sd[k], sd[p + '.forward_hadamard_matrix'], sd[p + '.act_global_scale'], fmt)
    def L(s, name, x):
        key = name.replace('.', '_')
        if key in s.lin: return s.lin[key](x)
        return torch.nn.functional.linear(x, s.sd[name + '.weight'])
    def norm(s, x, w):
        v = x.pow(2).mean(-1, keepdim=True); return w * (x * torch.rsqrt(v + s.c['rms_norm_eps']))
    def forward(s, input_ids=None, use_cache=False):
        c = s.c; B, T = input_ids.shape; H, nh, nkv = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads']; hd = H // nh
        h = s.sd['model.embed_tokens.weight'][input_ids]
        inv = 1.0 / (c['rope_theta'] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        fr = torch.arange(T).float()[:, None] * inv[None, :]; emb = torch.cat([fr, fr], -1); cos, sin = emb.cos(), emb.sin()
        rot = lambda x: torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
        for l in range(c['num_hidden_layers']):
            p = f'model.layers.{l}.'
            x = s.norm(h, s.sd[p + 'input_layernorm.weight'])
            q = s.L(p + 'self_attn.q_proj', x).view(B, T, nh, hd).transpose(1, 2)
            k = s.L(p + 'self_attn.k_proj', x).view(B, T, nkv, hd).transpose(1, 2)
            v = s.L(p + 'self_attn.v_proj', x).view(B, T, nkv, hd).transpose(1, 2)
            q = q * cos + rot(q) * sin; k = k * cos + rot(k) * sin
            k = k.repeat_interleave(nh // nkv, 1); v = v.repeat_interleave(nh // nkv, 1)
            a = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5 + mask
            a = torch.softmax(a, -1, dtype=torch.float32)
            o = torch.matmul(a, v).transpose(1, 2).reshape(B, T, H)
            h = h + s.L(p + 'self_attn.o_proj', o)
            x = s.norm(h, s.sd[p + 'post_attention_layernorm.weight'])
            g = s.L(p + 'mlp.gate_proj', x); u = s.L(p + 'mlp.up_proj', x)
            h = h + s.L(p + 'mlp.down_proj', torch.nn.functional.silu(g) * u)
        h = s.norm(h, s.sd['model.norm.weight'])
        o = Out(); o.logits = torch.nn.functional.linear(h, s.sd['model.embed_tokens.weight']); return o


def main():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=".device/consumers-h10/stories260K")
    p.add_argument("--f64", action="store_true", help="float64-accumulated Linears")
    p.add_argument("cases", nargs="*", default=["mxfp4_rtn_h0", "mxfp4_rtn_h32", "mxfp4_mr-gptq_h0", "mxfp4_mr-gptq_h32"])
    a = p.parse_args()
    root = a.root
    man = json.load(open(f'{root}/manifest.json'))
    lg_ids = json.load(open(f'{root}/logits_ids.json'))
    for name in a.cases:
        case = next(c for c in man['cases'] if c['name'] == name)
        cfg = json.load(open(f"{root}/{case['fpq']}/config.json"))
        model = Llama(load_st(f"{root}/{case['fpq']}/model.safetensors"), cfg, case['format'])
        ref = vc.read_logits(f"{root}/{case['fp4q']['fp-quant']['f32']['logits']}", cfg['vocab_size'])
        print('==', name, '(float64 Linears)' if a.f64 else '')
        if a.f64:
            with vc.patched_linear(vc.linear_f64):
                lg = vc.model_logits(model, lg_ids, 'cpu')
        else:
            lg = vc.model_logits(model, lg_ids, 'cpu')
        d = (lg - ref).abs().max(-1).values > 1e-4 * float(ref.abs().max())
        print(f"  stand-in vs fp4q logits rel_l2 {vc.rel_l2(lg, ref):.3e}, first token off by > 1e-4: "
              f"{int(d.nonzero()[0]) if d.any() else None}")
        if not a.f64:
            vc.dumps_check(print, case, root, model, lg_ids, 'cpu', 'f32')


if __name__ == "__main__":
    main()
