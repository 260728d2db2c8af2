"""The native export (`vpae export --format native`) against ComfyUI's loaders.

No package registry ships a ComfyUI that loads Wan and runs offline (docs/REAL_MODELS.md says what was tried), so:

* `test_native_lora_follows_comfyui_key_rule` ALWAYS runs and RE-IMPLEMENTS ComfyUI's rule; it does not run
  ComfyUI. The rule, as read from ComfyUI's source (ComfyUI v0.3.75, the copy this was checked against, with
  its line numbers; the same code in Comfy-Org/ComfyUI master of 2026):
  - comfy/lora.py `model_lora_keys_unet` (v0.3.75 lines 175-186): for each key k of the model's state dict
    ("diffusion_model." + Wan's native name), k ending in ".weight" is the target of the LoRA names
    `k[:-len(".weight")]` (e.g. "diffusion_model.blocks.0.self_attn.q") and
    `"lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")`; any other k of itself.
    Its other branches add nothing for Wan: `comfy.utils.unet_to_diffusers` returns {} for a config without
    "num_res_blocks" (comfy/utils.py lines 269-271), and WAN21 has no isinstance branch of its own.
  - comfy/lora.py `load_lora` (lines 37-93): for each such name x, `x.alpha` is read, then
    comfy/weight_adapter/lora.py `LoRAAdapter.load` (lines 93, 104) reads `x.lora_up.weight` with
    `x.lora_down.weight` (among other namings vpae does not write); every key of the file read by none of
    these is logged as "lora key not loaded".
  - comfy/weight_adapter/lora.py `LoRAAdapter.calculate_weight` (lines 175, 209): in float32,
    `W += strength * (alpha / lora_down.shape[0]) * lora_up @ lora_down`.
* `test_comfyui_loads_the_native_export` runs ComfyUI's own code through scripts/check_comfy_native.py, and is
  skipped unless ComfyUI (with Wan) imports here, e.g. `PYTHONPATH=/path/to/ComfyUI pytest tests/test_comfy_loader.py`
  in an environment that has ComfyUI's requirements.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import make_wan
from safetensors.torch import load_file

from vpae.backbones.wan import WanBackbone, tiny_wan_config
from vpae.export import export_backbone
from vpae.export_native import NATIVE_LORA_FILE, NATIVE_MODEL_FILE, export_native, native_names
from vpae.training.model import add_lora

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def _lora_generator(teacher: WanBackbone, i2v: bool) -> WanBackbone:
    """The teacher with a trained-looking adapter (B != 0, alpha != rank so the scaling matters)."""
    add_lora(teacher, "generator", rank=4, alpha=8, targets=TARGETS + (["add_k_proj", "add_v_proj"] if i2v else []))
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for n, p in teacher.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return teacher


def _export(gen: WanBackbone, root: Path) -> Path:
    export_backbone(gen, root / "run" / "generator", {"role": "generator"}, lora_dir=root / "run" / "generator_lora")
    return export_native(root / "run" / "generator", root / "native")


# ---- ComfyUI's rule, re-implemented (see the module docstring for the source lines) ----

def comfy_unet_key_map(native_keys) -> dict[str, str]:
    """comfy/lora.py model_lora_keys_unet, the part that applies to a Wan 2.1 model: LoRA name -> model key."""
    key_map = {}
    for k in ("diffusion_model." + n for n in native_keys):
        if k.endswith(".weight"):
            key_map["lora_unet_{}".format(k[len("diffusion_model."):-len(".weight")].replace(".", "_"))] = k
            key_map[k[:-len(".weight")]] = k
        else:
            key_map[k] = k
    return key_map


def comfy_load_lora(lora_keys, key_map) -> tuple[dict[str, str], set[str]]:
    """comfy/lora.py load_lora with LoRAAdapter.load's regular naming: (model key -> LoRA name x, the keys
    ComfyUI would log as "lora key not loaded")."""
    patches, loaded = {}, set()
    for x, target in key_map.items():
        if f"{x}.alpha" in lora_keys:
            loaded.add(f"{x}.alpha")
        if f"{x}.lora_up.weight" in lora_keys:
            patches[target] = x
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight"}
    return patches, set(lora_keys) - loaded


def comfy_apply(weight: torch.Tensor, lora: dict, x: str, strength: float = 1.0) -> torch.Tensor:
    """LoRAAdapter.calculate_weight for a regular LoRA without DoRA / mid / reshape."""
    up, down = lora[f"{x}.lora_up.weight"].float(), lora[f"{x}.lora_down.weight"].float()
    alpha = lora[f"{x}.alpha"].item() / down.shape[0]
    diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape)
    return weight + ((strength * alpha) * diff).type(weight.dtype)


@pytest.mark.parametrize("i2v", [True, False], ids=["i2v", "t2v"])
def test_native_lora_follows_comfyui_key_rule(tmp_path, i2v):
    out = _export(_lora_generator(make_wan(i2v=i2v, seed=3), i2v), tmp_path)
    merged = load_file(str(out / NATIVE_MODEL_FILE))
    lora = load_file(str(out / NATIVE_LORA_FILE))
    teacher = make_wan(i2v=i2v, seed=3).model.state_dict()
    base = {n: teacher[k] for k, n in native_names(teacher).items()}
    assert base.keys() == merged.keys()

    patches, not_loaded = comfy_load_lora(set(lora), comfy_unet_key_map(merged))
    assert not not_loaded, f"ComfyUI would log 'lora key not loaded' for {sorted(not_loaded)[:5]}"
    modules = {k[:-len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    assert len(modules) == (12 if i2v else 10) * 2 and set(patches.values()) == modules
    # ComfyUI's patch on the teacher's native weights gives the merged generator; nothing else changes
    for k in merged:
        target = "diffusion_model." + k
        if target in patches:
            got = comfy_apply(base[k].clone(), lora, patches[target])
            assert (merged[k] - base[k]).abs().max() > 1e-4, k  # the adapter really changes this weight
            torch.testing.assert_close(got, merged[k], rtol=0, atol=1e-6)
        else:
            assert torch.equal(base[k], merged[k]), k

    # the rule is not vacuous: a module under another name (diffusers' attn1.to_q) is what ComfyUI skips
    bad = {k.replace(".self_attn.q.", ".attn1.to_q."): v for k, v in lora.items()}
    _, not_loaded = comfy_load_lora(set(bad), comfy_unet_key_map(merged))
    assert {k for k in bad if ".attn1.to_q." in k} == not_loaded and len(not_loaded) == 2 * 3


# ---- ComfyUI's own code, where it is installed ----

def _comfyui_check():
    """scripts/check_comfy_native.py with ComfyUI imported, or a skip that says why."""
    comfy = pytest.importorskip("comfy", reason="ComfyUI is not importable: no registry package ships it; "
                                                "PYTHONPATH=/path/to/ComfyUI runs this test")
    if not any((Path(p) / "ldm" / "wan" / "model.py").is_file() for p in getattr(comfy, "__path__", [])):
        pytest.skip(f"the importable `comfy` ({getattr(comfy, '__file__', None)}) is not a ComfyUI with Wan")
    spec = importlib.util.spec_from_file_location("check_comfy_native", ROOT / "scripts" / "check_comfy_native.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    try:
        check.setup()
    except ImportError as e:
        pytest.skip(f"ComfyUI is on the path but does not import here: {e}")
    return check


def _comfy_sized_wan(i2v: bool, dtype=torch.float32) -> WanBackbone:
    """A small Wan that ComfyUI's detection reads right: it takes heads = dim // 128 and hard-codes the text
    (4096) and CLIP image (1280) widths (comfy/model_detection.py, comfy/ldm/wan/model.py)."""
    torch.manual_seed(3)
    bb = WanBackbone.from_config(tiny_wan_config(i2v=i2v, heads=2, head_dim=128, text_dim=4096, image_dim=1280,
                                                 ffn_dim=64, num_layers=2))
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    bb.model.to(dtype)
    return bb.eval()


@pytest.mark.parametrize("i2v,dtype", [(True, torch.float32), (False, torch.float32), (True, torch.bfloat16)],
                         ids=["i2v", "t2v", "i2v-bf16"])
def test_comfyui_loads_the_native_export(tmp_path, i2v, dtype):
    check = _comfyui_check()
    base = export_native(export_backbone(_comfy_sized_wan(i2v, dtype), tmp_path / "teacher" / "generator"),
                         tmp_path / "teacher_native") / NATIVE_MODEL_FILE
    out = _export(_lora_generator(_comfy_sized_wan(i2v, dtype), i2v), tmp_path)
    assert check.check(out, base=base) == []
