"""Check a `vpae export --format native` folder with ComfyUI's own loaders (ComfyUI's code, not vpae's):

    python scripts/check_comfy_native.py EXPORT_DIR [--base BASE.safetensors] [--comfyui /path/to/ComfyUI]

Run it with the Python that runs ComfyUI (its `comfy` package importable, or --comfyui naming a ComfyUI
checkout); it does not need vpae. No PyPI package ships a current ComfyUI (docs/REAL_MODELS.md), so this is
for a machine that has ComfyUI. It checks:

1. EXPORT_DIR/generator.safetensors: `comfy.sd.load_diffusion_model` (what the UNETLoader / "Load Diffusion
   Model" node calls) detects a Wan 2.1 model, and every weight of ComfyUI's model equals the file's: no key
   missing, none left over.
2. EXPORT_DIR/generator_lora.safetensors (a LoRA run): `comfy.lora.model_lora_keys_unet` + `comfy.lora.load_lora`
   (what LoraLoaderModelOnly calls) map every key of the file onto a weight of that model: ComfyUI logs no
   "lora key not loaded".
3. With --base, the model the LoRA was trained on in Wan's names (ComfyUI's repackaged Wan 2.1 file of that
   model, or the teacher exported with --format native): the base with the LoRA applied by
   `comfy.sd.load_lora_for_models` at strength 1 and `ModelPatcher.patch_model` equals generator.safetensors
   to MAX_ULPS units in the last place (0 in float32 here; a bf16 merge rounds differently from ComfyUI's).

Exits 0 when every check passes, 1 otherwise. Memory: ComfyUI holds a whole model in memory (two with --base:
~56 GiB for the 14B in bf16).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

MODEL_FILE = "generator.safetensors"
LORA_FILE = "generator_lora.safetensors"
MAX_ULPS = 4


def setup(comfyui: str | None = None):
    """Import ComfyUI (from `comfyui`, a checkout, when given); on a machine without CUDA, in ComfyUI's --cpu
    mode (without it, importing comfy.model_management asks torch for CUDA and fails)."""
    if comfyui:
        sys.path.insert(0, str(Path(comfyui).resolve()))
    import torch
    if not torch.cuda.is_available():
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.model_base
    import comfy.sd
    import comfy.utils
    return comfy


class _Warnings(logging.Handler):
    """The warnings ComfyUI logs while a block runs (it reports unloaded keys only through logging)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


def _file_dtype(path: Path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    import torch
    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    return names.get(dtypes.pop()) if len(dtypes) == 1 else None


def load_model(path: Path):
    """ComfyUI's UNETLoader path: comfy.sd.load_diffusion_model, in the file's own dtype (so that equal means
    equal), returning the ModelPatcher and what ComfyUI warned."""
    import comfy.sd
    dtype = _file_dtype(path)
    with _Warnings() as w:
        patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": dtype} if dtype else {})
    return patcher, w.messages


def _ulps(a, b, base):
    """|a - b| in units in the last place of the dtype of `a`, at the magnitude of the operands (the larger of
    |a|, |b| and the base weight |base|: near a cancellation the rounding error is that of the operands)."""
    import torch
    fi = torch.finfo(a.dtype)
    m = torch.maximum(torch.maximum(a.float().abs(), b.float().abs()), base.float().abs()).clamp_min(fi.tiny)
    return ((a.float() - b.float()).abs() / (fi.eps * torch.exp2(torch.floor(torch.log2(m))))).max().item()


def _compare(model_sd: dict, path: Path, base: Path | None = None) -> tuple[list[str], float]:
    """Every tensor of ComfyUI's diffusion model against the file's tensor of the same name: equal, or, with
    `base` (check 3), within MAX_ULPS of the weights' dtype (two merges of W + s * up @ down that round
    differently: ComfyUI adds in float32 and rounds, a bf16 training run's merge rounds in bf16)."""
    import torch
    from safetensors import safe_open
    fails, worst = [], 0.0
    with safe_open(str(path), "pt") as f, (safe_open(str(base), "pt") if base else _Null()) as fb:
        keys = set(f.keys())
        missing = sorted(set(model_sd) - keys)
        extra = sorted(keys - set(model_sd))
        if missing:
            fails.append(f"ComfyUI's model has {len(missing)} weight(s) the file lacks, e.g. {missing[:3]}")
        if extra:
            fails.append(f"{len(extra)} key(s) of the file are not weights of ComfyUI's model, e.g. {extra[:3]}")
        # a base file may carry a prefix (a checkpoint's "model.diffusion_model."), as ComfyUI's loader allows
        pre = next((b[:-len("head.modulation")] for b in fb.keys() if b.endswith("head.modulation")), "") if fb else ""
        bad = []
        for k in sorted(set(model_sd) & keys):
            a, b = model_sd[k].detach().cpu(), f.get_tensor(k)
            if a.shape != b.shape:
                bad.append(f"{k}: shape {tuple(a.shape)} != {tuple(b.shape)}")
                continue
            if base is None:
                if not torch.equal(a, b.to(a.dtype)):
                    bad.append(f"{k}: differs by {(a.float() - b.float()).abs().max().item():.3g}")
                continue
            u = _ulps(a, b.to(a.dtype), fb.get_tensor(pre + k)) if a.numel() else 0.0
            worst = max(worst, u)
            if u > MAX_ULPS:
                bad.append(f"{k}: differs by {u:.0f} ulps")
        if bad:
            fails.append(f"{len(bad)} weight(s) differ, e.g. {bad[:3]}")
    return fails, worst


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def check_model(export_dir: Path):
    """Check 1: returns (failures, the ModelPatcher)."""
    import comfy.model_base
    path = export_dir / MODEL_FILE
    patcher, warned = load_model(path)
    model = patcher.model
    fails = []
    kind = getattr(model.model_config, "unet_config", {})
    if not isinstance(model, comfy.model_base.WAN21) or kind.get("image_model") != "wan2.1":
        fails.append(f"ComfyUI detected {type(model).__name__} ({kind.get('image_model')}), not Wan 2.1")
    f, _ = _compare(model.diffusion_model.state_dict(), path)
    fails += f
    fails += [f"ComfyUI warned: {m[:200]}" for m in warned if "unet missing" in m or "unet unexpected" in m]
    print(f"{MODEL_FILE}: ComfyUI loads it as {type(model).__name__} (model_type {kind.get('model_type')}, "
          f"dim {kind.get('dim')}, {kind.get('num_layers')} blocks, {model.get_dtype()}); "
          + ("every weight equal to the file's" if not fails else "FAILED"))
    return fails, patcher


def check_lora(export_dir: Path, patcher):
    """Check 2: returns (failures, the LoRA state dict as ComfyUI reads it)."""
    import comfy.lora
    import comfy.utils
    lora = comfy.utils.load_torch_file(str(export_dir / LORA_FILE))
    try:
        import comfy.lora_convert
        lora = comfy.lora_convert.convert_lora(lora)
    except ImportError:  # older ComfyUI: no converter pass
        pass
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    with _Warnings() as w:
        patches = comfy.lora.load_lora(lora, key_map)
    not_loaded = [m.split(": ", 1)[1] for m in w.messages if m.startswith("lora key not loaded")]
    modules = [k[:-len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")]
    fails = []
    if not_loaded:
        fails.append(f"ComfyUI: lora key not loaded: {len(not_loaded)} of {len(lora)}, e.g. {not_loaded[:3]}")
    if len(patches) != len(modules):
        fails.append(f"{len(modules)} LoRA modules but ComfyUI patches {len(patches)} weights")
    print(f"{LORA_FILE}: {len(lora)} keys, {len(modules)} modules; ComfyUI maps them onto {len(patches)} weights"
          + (f", {len(not_loaded)} key(s) not loaded" if not_loaded else ", every key loaded"))
    return fails, lora


def check_applied(export_dir: Path, base: Path, lora: dict):
    """Check 3: the base + the LoRA through ComfyUI's patcher equals the merged generator."""
    import comfy.sd
    base_patcher, _ = load_model(base)
    patched, _ = comfy.sd.load_lora_for_models(base_patcher, None, lora, 1.0, 1.0)  # keys: check 2's business
    patched.patch_model()
    fails, worst = _compare(patched.model.diffusion_model.state_dict(), export_dir / MODEL_FILE, base)
    print(f"{base} + {LORA_FILE} applied by ComfyUI vs {MODEL_FILE}: at most {worst:.0f} ulp(s) apart"
          + (f" (allowed: {MAX_ULPS})" if not fails else " FAILED"))
    patched.unpatch_model()
    return fails


def check(export_dir: str | Path, base: str | Path | None = None) -> list[str]:
    """All the checks that apply to `export_dir`; returns the failures (empty: all passed)."""
    export_dir = Path(export_dir)
    fails, patcher = check_model(export_dir)
    if (export_dir / LORA_FILE).is_file():
        f, lora = check_lora(export_dir, patcher)
        fails += f
        if base is not None:
            fails += check_applied(export_dir, Path(base), lora)
    elif base is not None:
        fails.append(f"--base given but {export_dir} has no {LORA_FILE}")
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", help="the folder `vpae export --format native` wrote")
    ap.add_argument("--base", help="the base model in Wan's names, to check the LoRA applied by ComfyUI")
    ap.add_argument("--comfyui", help="a ComfyUI checkout to import `comfy` from")
    a = ap.parse_args(argv)
    if not (Path(a.export_dir) / MODEL_FILE).is_file():
        print(f"error: {a.export_dir} has no {MODEL_FILE} (write one with `vpae export --format native`)")
        return 2
    try:
        setup(a.comfyui)
    except ImportError as e:
        print(f"error: ComfyUI is not importable here ({e}); run with ComfyUI's Python or pass --comfyui")
        return 2
    fails = check(a.export_dir, a.base)
    for f in fails:
        print("FAIL:", f)
    print("ComfyUI check: " + ("passed" if not fails else f"{len(fails)} failure(s)"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
