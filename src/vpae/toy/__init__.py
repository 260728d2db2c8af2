"""Everything toy: the procedural world and its oracle, the MiniLM and patch encoders, the toy data source with
its config section data.toy (data.py, world.py), the toy model family (family.py), toy evaluation, the CPU demo,
the ablation runner and the shipped teacher (teacher/). Both parts register themselves (vpae.registry), so the
core (config, models, generate, losses, backbones, sampling, training) never imports this package."""
